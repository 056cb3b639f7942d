r"""Diffusion proposals with exact path-space weights (DM-MC without a likelihood integral).

A sampler that draws the whole reverse path x_0 → x_1 → … → x_N (x_0 from the prior π at the
largest noise level, x_N the field) with Gaussian transition kernels Q has a known density on
paths, Π(x) = π(x_0) Π_k Q(x_{k+1} | x_k). The target on paths is the forward noising process
started from the theory, P(x) = p(x_N) Π_k F(x_k | x_{k+1}), whose φ-marginal is p ∝ e^{−S}
whatever the kernels F. The importance weight

.. math:: \log W = \log p(x_N) + \sum_k \log F(x_k \mid x_{k+1}) - \log π(x_0)
                   - \sum_k \log Q(x_{k+1} \mid x_k)

therefore makes an independence Metropolis chain on paths (accept with min(1, W'/W)) exact for
the field, for any number of steps and any network (stochastic normalising flows, Wu, Köhler
& Noé arXiv:2002.06707; non-equilibrium sampling, Caselle et al. arXiv:2201.08862). It costs
no network evaluation beyond generation. The quality of the network and of the kernels only
sets the spread of log W, hence the acceptance.

The kernels here, for the VE SDE, between noise variances Ξ_k > Ξ_{k+1} (Δ = Ξ_k − Ξ_{k+1}):

* F(x_k | x_{k+1}) = N(x_{k+1}, Δ) — the forward SDE's own transition;
* Q(x_{k+1} | x_k) = N(x_k + Δ s_θ(x_k, t_k), v_k): the mean is Tweedie's posterior mean, exact
  with the exact score; the variance is the Gaussian posterior's, per momentum mode,
  v_k(p) = Δ (C(p) + Ξ_{k+1}) / (C(p) + Ξ_k), with C(p) the data's power spectrum
  (``variance="propagator"``) or its average, the site variance (``"isotropic"``). For a Gaussian
  field with the exact score, Q is the exact posterior and W = p_T(x_0)/π(x_0). With
  ``variance="forward"``, v_k = Δ (C → ∞; for angles, :mod:`.gauge`).

The last step goes to Ξ = 0, with noise (a deterministic denoise has no density).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..rng import normal
from ..runtime import progress
from ..settings import bounded_float, Settings, choice, positive_float, positive_int, setting
from .samplers import noise_levels
from .sde import VPSDE


#: The reverse kernels' variances: per momentum mode from the data's spectrum, per site from its
#: mean, or the forward kernel's own Δ (the limit of an infinitely wide spectrum: the right choice for
#: angles, whose lift to the covering space is flat on the scale of the noise).
VARIANCES = ("propagator", "isotropic", "forward")


@dataclass(frozen=True)
class PathSettings(Settings):
    """Settings of path-space proposals: ``n_steps`` reverse steps (= network evaluations) on
    EDM's noise grid with exponent ``rho`` from σ(T) down to σ(``eps``), then one step to the clean
    field; the kernels' variances per momentum mode (``"propagator"``) or per site
    (``"isotropic"``); EMA weights when the model has them."""

    stage = "dm-path"
    n_steps: int = 100
    eps: float = 1e-3
    rho: float = 7.0
    variance: str = "propagator"
    ema: bool = setting(True, omit_at_default=True)

    def __post_init__(self):
        positive_int("n_steps", self.n_steps)
        if self.n_steps < 2:
            raise ValueError(f"n_steps must be >= 2, got {self.n_steps}")
        eps = positive_float("eps", self.eps)
        if eps >= 1:
            raise ValueError(f"eps (the smallest positive diffusion time) must lie in (0, 1), got {self.eps!r}")
        self._set("eps", eps)
        self._set("rho", bounded_float("rho", self.rho, 1.0, 100.0,
                                       "the exponent of the noise-level grid; Karras et al. use 7"))
        choice("variance", self.variance, VARIANCES)
        self._set("ema", bool(self.ema))


@dataclass
class PathResult:
    """Fields at the end of the reverse paths (network units, float64), the path part of their log
    weight (Σ log F − log π − Σ log Q, float64; add log p of the field for log W), the number of
    network evaluations and the prior draws x_0 where the paths started."""

    x: torch.Tensor
    log_path: torch.Tensor
    nfe: int
    x_T: torch.Tensor | None = None


def path_levels(sde, settings: PathSettings) -> torch.Tensor:
    """The noise variances Ξ_0 = Ξ(T) > … > Ξ_{N−1} = Ξ(ε) > Ξ_N = 0 of the path (float64)."""
    levels = noise_levels(sde, settings.n_steps, settings.eps, settings.rho)
    return torch.cat([levels ** 2, torch.zeros(1, dtype=torch.float64)])


def _modes(x: torch.Tensor, dims):
    return torch.fft.fftn(x, dim=dims)


def _gauss_logp(r: torch.Tensor, var: torch.Tensor, dims) -> torch.Tensor:
    """log N(r; 0, C) for C diagonal in momentum space with per-site mode variances ``var``."""
    v = math.prod(r.shape[1:])
    rf = _modes(r, dims)
    return -0.5 * (rf.abs() ** 2 / var).sum(dim=dims) / v - 0.5 * torch.log(2 * math.pi * var).sum()


def _gauss_draw(z: torch.Tensor, var: torch.Tensor, dims) -> torch.Tensor:
    return torch.fft.ifftn(_modes(z, dims) * torch.sqrt(var), dim=dims).real


def _kernel_variance(c, delta: float, lo: float, hi: float, shape, device=None) -> torch.Tensor:
    """Per-mode variance of the reverse kernel Q: Δ (C + Ξ_{k+1})/(C + Ξ_k), or Δ where C is None."""
    if c is None:
        return torch.full(tuple(shape[1:]), delta, dtype=torch.float64, device=device)
    return delta * (c + lo) / (c + hi)


def _kernels(sde, settings: PathSettings, shape, spectrum, device):
    """The lattice dimensions, the kernels' per-mode scale C(p) and the noise variances Ξ_k of a
    path of ``settings`` for a batch of ``shape``; the SDE and the spectrum are checked."""
    if isinstance(sde, VPSDE):
        raise ValueError("path-space proposals are implemented for the VE SDE only")
    if settings.variance == "forward":  # C = ∞: every mode's variance is Δ, no spectrum needed
        return tuple(range(1, len(shape))), None, path_levels(sde, settings).to(device)
    c = torch.as_tensor(spectrum, dtype=torch.float64, device=device)
    if tuple(c.shape) != tuple(shape[1:]) or not bool((c > 0).all()):
        raise ValueError(f"spectrum must be positive with the lattice shape {tuple(shape[1:])}, got {tuple(c.shape)}")
    if settings.variance == "isotropic":
        c = torch.full_like(c, float(c.mean()))
    return tuple(range(1, len(shape))), c, path_levels(sde, settings).to(device)


@torch.no_grad()
def path_sample(score_fn, sde, shape, settings: PathSettings | None = None, *, spectrum, noise=None, device=None,
                dtype=torch.float32, progress_bar: bool = False) -> PathResult:
    r"""Draw reverse paths of the VE SDE with the kernels of this module and return the fields and
    the path part of their log weights (module docstring). ``shape`` = (batch, *lattice);
    ``spectrum``: the data's power spectrum C(p) in network units, shape ``lattice`` (e.g.
    :meth:`lib.theories.GaussianField.fit` of the normalised training set); ``noise``: a
    ``torch.Generator`` or per-sample :class:`lib.rng.SampleStreams` (N + 1 draws per sample).
    The network runs in ``dtype``; the path and its weights are kept in float64."""
    settings = PathSettings.build(settings)
    shape = tuple(shape)
    dims, c, xi = _kernels(sde, settings, shape, spectrum, device)
    x = math.sqrt(float(xi[0])) * normal(noise, shape, device=device, dtype=torch.float64)
    x_T = x
    log_path = -sde.prior_logp(x)
    for k in progress(range(len(xi) - 1), desc="reverse paths", disable=not progress_bar):
        hi, lo = float(xi[k]), float(xi[k + 1])
        delta = hi - lo
        t = sde.time_of_noise_level(torch.tensor(math.sqrt(hi), dtype=torch.float64))
        tb = torch.full((shape[0],), float(t), dtype=dtype, device=x.device)
        mean = x + delta * score_fn(x.to(dtype), tb).to(torch.float64)
        var = _kernel_variance(c, delta, lo, hi, shape, x.device)
        x_new = mean + _gauss_draw(normal(noise, shape, device=device, dtype=torch.float64), var, dims)
        log_path -= _gauss_logp(x_new - mean, var, dims)                      # − log Q(x_{k+1} | x_k)
        log_path += _gauss_logp(x - x_new, torch.full_like(var, delta), dims)  # + log F(x_k | x_{k+1})
        x = x_new
    return PathResult(x, log_path, len(xi) - 1, x_T)


@torch.no_grad()
def path_refresh(score_fn, sde, x_end: torch.Tensor, settings: PathSettings | None = None, *, spectrum,
                 noise=None, dtype=torch.float32, chunk: int = 256) -> PathResult:
    r"""Draw a path that ends in given fields from the forward kernels, x_k = x_{k+1} + √Δ_k z_k
    (k = N − 1, …, 0), and return the path part of its log weight, exactly as :func:`path_sample`
    would for that path:

    .. math:: \log W - \log p(x_N) = \sum_k \log F(x_k \mid x_{k+1}) - \log π(x_0)
              - \sum_k \log Q(x_{k+1} \mid x_k).

    This is the Gibbs step of the path given the field under the target on paths p(x_N) Π F,
    which a chain needs after a move of the field alone (an HMC trajectory) before it can weigh
    the current state against a new DM proposal. The N network evaluations along a known path are
    independent, so they run in batches of ``chunk`` (path, step) pairs. ``x_end``: fields in
    network units (float64); ``noise``: a generator or per-sample streams (N draws per sample)."""
    settings = PathSettings.build(settings)
    x_end = torch.as_tensor(x_end, dtype=torch.float64)
    shape, device = tuple(x_end.shape), x_end.device
    dims, c, xi = _kernels(sde, settings, shape, spectrum, device)
    n = len(xi) - 1
    xs = [None] * (n + 1)
    xs[n] = x_end
    for k in range(n - 1, -1, -1):
        xs[k] = xs[k + 1] + math.sqrt(float(xi[k] - xi[k + 1])) * normal(noise, shape, device=device,
                                                                           dtype=torch.float64)
    times = [float(sde.time_of_noise_level(torch.tensor(math.sqrt(float(xi[k])), dtype=torch.float64)))
             for k in range(n)]
    flat = torch.cat(xs[:n])                                          # (n · batch, *lattice), step-major
    tt = torch.tensor(times, dtype=dtype, device=device).repeat_interleave(shape[0])
    scores = torch.cat([score_fn(flat[i:i + chunk].to(dtype), tt[i:i + chunk]).to(torch.float64)
                        for i in range(0, len(flat), chunk)])
    log_path = -sde.prior_logp(xs[0])
    for k in range(n):
        hi, lo = float(xi[k]), float(xi[k + 1])
        delta = hi - lo
        mean = xs[k] + delta * scores[k * shape[0]:(k + 1) * shape[0]]
        var = _kernel_variance(c, delta, lo, hi, shape, device)
        log_path -= _gauss_logp(xs[k + 1] - mean, var, dims)
        log_path += _gauss_logp(xs[k] - xs[k + 1], torch.full_like(var, delta), dims)
    return PathResult(x_end, log_path, n, xs[0])


__all__ = ["PathSettings", "PathResult", "path_levels", "path_refresh", "path_sample"]
