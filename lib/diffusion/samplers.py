r"""Generating with a diffusion model: samplers of the reverse process, in a registry.

* ``"em"`` — Euler–Maruyama on the reverse SDE (paper eqs. 3.2, 3.5, 3.9), the paper's sampler;
* ``"pc"`` — predictor–corrector (Song et al. 2021): EM steps followed by Langevin corrector steps;
* ``"ode"`` — the probability-flow ODE (eq. 3.14), integrated adaptively with torchdiffeq;
* few-step samplers on EDM's noise levels (Karras et al. 2022): ``"heun"`` (second order,
  deterministic), ``"churn"`` (its stochastic counterpart), ``"ddim"`` and ``"dpm2"`` (exponential
  integrators of first and second order, Lu et al. 2022).

Every sampler shares one reverse step (:meth:`lib.diffusion.sde.VESDE.reverse_step`), takes a
score ``score_fn(x, t) -> ∇ log p_t(x)`` (a trained network or an exact score such as
:meth:`lib.theories.GaussianMixture.score_fn`), an SDE, batched tensors on any device and a
source of noise: a ``torch.Generator`` for the batch, or per-sample streams
(:class:`lib.rng.SampleStreams`) so that sample i does not depend on the batch. The registry
:data:`SAMPLERS` maps a name to a function ``(score_fn, sde, x_T, settings, noise, ...) ->
SampleResult``; the command line takes its choices from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..rng import normal
from ..runtime import per_sample, progress
from ..settings import bounded_float, Settings, choice, positive_float, positive_int, setting


@dataclass(frozen=True)
class SampleSettings(Settings):
    """Settings of the generation stage (defaults: the paper's Euler–Maruyama with 500 steps down
    to ε = 10⁻³, EMA weights when the model has them).

    ``snr``, ``n_corrector``: the predictor–corrector's Langevin steps; ``rtol``, ``atol``,
    ``method``: the ODE solver (the authors: RK45 with 10⁻⁵); ``rho``: the noise-level grid of
    the few-step samplers (Karras et al.: 7); ``churn``, ``s_noise``: the noise injected per step
    by the ``churn`` sampler (EDM's S_churn, S_noise). For the few-step samplers ``n_steps`` is
    the number of noise levels, so they make ``n_steps − 1`` steps; ``sigma_max`` caps their first
    noise level (needed for VP, see :func:`noise_levels`). ``precision``: ``"float32"`` (the
    paper's) or ``"bf16"``, the network's evaluations under bfloat16 autocast (convolutions and
    matrix products in bf16, with float32 accumulation) while the state and every step of the
    sampler stay in the network's dtype: about 2× faster on a CPU with AVX-512 BF16 and on recent
    GPUs (``benchmarks/samplers.py``); what it costs in accuracy is measured in
    ``benchmarks/samplers_trained.py``. Part of the cache key when not float32.
    """

    stage = "sample"
    sampler: str = setting("em", doc="the sampler")
    n_steps: int = setting(500, doc="time steps of em and pc, noise levels of the others (paper: 500)")
    eps: float = setting(1e-3, doc="last diffusion time (paper: 1e-3)")
    ema: bool = setting(True, doc="sample with the EMA weights when the model has them")
    snr: float = setting(0.16, doc="pc: signal-to-noise ratio of the corrector")
    n_corrector: int = setting(1, doc="pc: corrector steps per predictor step")
    rtol: float = setting(1e-5, doc="relative tolerance of the ode sampler")
    atol: float = setting(1e-5, doc="absolute tolerance of the ode sampler")
    method: str = setting("dopri5", doc="the ode sampler's solver")
    rho: float = setting(7.0, omit_at_default=True, doc="noise-level grid of heun, churn, ddim, dpm2 (EDM: 7)")
    churn: float = setting(0.0, omit_at_default=True,
                           doc="noise added per step by the churn sampler (EDM's S_churn, e.g. 10; needed with "
                               "--sampler churn)")
    s_noise: float = setting(1.0, omit_at_default=True, doc="churn: EDM's S_noise")
    sigma_max: float | None = setting(None, omit_at_default=True,
                                      doc="cap on the first noise level of heun, churn, ddim, dpm2 (e.g. 80 for VP "
                                          "models)")
    precision: str = setting("float32", omit_at_default=True,
                             doc="bf16: the network under bfloat16 autocast, about 2x faster on CPUs with native "
                                 "bf16 and on recent GPUs (the paper's: float32)", choices=("float32", "bf16"))

    def __post_init__(self):
        choice("sampler", self.sampler, tuple(SAMPLERS))
        choice("precision", self.precision, PRECISIONS)
        positive_int("n_steps", self.n_steps)
        if self.n_steps < 2:
            raise ValueError(f"n_steps must be >= 2, got {self.n_steps}")
        eps = positive_float("eps", self.eps)
        if eps >= 1:
            raise ValueError(f"eps (the last diffusion time) must lie in (0, 1), got {self.eps!r}")
        self._set("eps", eps)
        self._set("ema", bool(self.ema))
        self._set("snr", bounded_float("snr", self.snr, 1e-6, 10.0, "the corrector's signal-to-noise ratio; Song et "
                                                                     "al. use 0.16"))
        positive_int("n_corrector", self.n_corrector)
        self._set("rtol", bounded_float("rtol", self.rtol, 1e-14, 1.0, "a relative tolerance"))
        self._set("atol", bounded_float("atol", self.atol, 1e-14, 1.0, "an absolute tolerance in the network's units"))
        self._set("rho", bounded_float("rho", self.rho, 1.0, 100.0,
                                       "the exponent of the noise-level grid; Karras et al. use 7"))
        churn = float(self.churn)
        if not (math.isfinite(churn) and churn >= 0):
            raise ValueError(f"churn must be a non-negative number, got {self.churn!r}")
        if self.sampler == "churn" and churn == 0:
            raise ValueError("the churn sampler needs churn > 0 (EDM's S_churn, e.g. 10)")
        self._set("churn", churn)
        self._set("s_noise", bounded_float("s_noise", self.s_noise, 1e-6, 10.0, "EDM's S_noise, about 1"))
        if self.sigma_max is not None:
            self._set("sigma_max", positive_float("sigma_max", self.sigma_max))


@dataclass
class SampleResult:
    """A sampler's output: the samples x (at t = ε), the number of network evaluations, and the
    batch at requested diffusion times (``records``: {t: tensor}, where the sampler keeps them)."""

    x: torch.Tensor
    nfe: int
    records: dict = field(default_factory=dict)

    def __iter__(self):  # ``x, records = euler_maruyama(...)``
        return iter((self.x, self.records))


class SamplerFailed(ValueError):
    """A sampler gave up (e.g. the adaptive ODE solver's step underflowed)."""


PRECISIONS = ("float32", "bf16")


class _Autocast:
    """Evaluate a score function under bfloat16 autocast on the device of its input, and return
    the score in the input's dtype: the sampler's arithmetic is untouched, only the network's
    convolutions and matrix products run in bf16."""

    def __init__(self, score_fn):
        self.score_fn = score_fn

    def __call__(self, x, t):
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            s = self.score_fn(x, t)
        return s.to(x.dtype)


class _Counted:
    """Wrap a score function and count its evaluations (the NFE)."""

    def __init__(self, score_fn):
        self.score_fn, self.nfe = score_fn, 0

    def __call__(self, x, t):
        self.nfe += 1
        return self.score_fn(x, t)


def _bt(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def _first_step(method, t0, t1):
    """A sane first step for adaptive solvers: torchdiffeq's heuristic divides by |f(t0)|, which
    vanishes at t = T for a VP model, and would jump far outside [ε, T]."""
    if method in ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"):
        return {"first_step": 1e-2 * abs(float(t1) - float(t0))}
    return None


def _record_indices(grid, times):
    """Indices of the grid points nearest to the requested times."""
    if times is None:
        return {}
    return {float(t): int(torch.argmin(torch.abs(grid - float(t)))) for t in times}


def time_grid(sde, n_steps: int, eps: float) -> torch.Tensor:
    """The uniform grid of N times from T down to ε (float64) of the paper's sampler."""
    if n_steps < 2:
        raise ValueError("n_steps must be >= 2")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T), got {eps}")
    return torch.linspace(sde.T, eps, n_steps, dtype=torch.float64)


def prior_sample(sde, shape, noise=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """x_T ~ N(0, Ξ(T)) from a generator or per-sample streams."""
    return sde.prior_std() * normal(noise, shape, device=device, dtype=dtype)


@torch.no_grad()
def euler_maruyama(score_fn, sde, shape, n_steps: int = 500, eps: float = 1e-3, generator=None, device=None,
                   dtype=torch.float32, x_init: torch.Tensor | None = None, record_times=None,
                   denoise_last: bool = True, progress_bar: bool = True) -> SampleResult:
    r"""Euler–Maruyama integration of the reverse SDE from t = T to t = ε (paper eq. 3.9), with
    Δt = (T − ε)/(N − 1) on a uniform grid of N times and z_i ~ N(0, 1) from ``generator`` (a
    ``torch.Generator`` or per-sample streams):

    .. math:: x_{i+1} = x_i - \big[f(x_i, t_i) - g^2(t_i)\, s(x_i, t_i)\big] Δt + g(t_i)\sqrt{Δt}\, z_i .

    With ``denoise_last`` the last step adds no noise (as in the authors' code). Returns a
    :class:`SampleResult` (unpacks as ``x, records``; records map each requested time to the
    batch at the nearest grid time, the prior sample being at t = T).
    """
    grid = time_grid(sde, n_steps, eps)
    score = _Counted(score_fn)
    x = prior_sample(sde, shape, generator, device, dtype) if x_init is None else x_init.clone()
    rec_idx = _record_indices(grid, record_times)
    records = {t: x.clone() for t, i in rec_idx.items() if i == 0}
    dt = float(grid[0] - grid[1])
    for i in progress(range(n_steps - 1), desc="reverse SDE", disable=not progress_bar):
        t = _bt(grid[i], x)
        last = i == n_steps - 2
        z = None if (last and denoise_last) else normal(generator, x.shape, device=x.device, dtype=x.dtype)
        x = sde.reverse_step(x, t, dt, score(x, t), z)
        for tr, j in rec_idx.items():
            if j == i + 1:
                records[tr] = x.clone()
    return SampleResult(x, score.nfe, records)


@torch.no_grad()
def predictor_corrector(score_fn, sde, shape, n_steps: int = 500, eps: float = 1e-3, snr: float = 0.16,
                        n_corrector: int = 1, generator=None, device=None, dtype=torch.float32,
                        x_init: torch.Tensor | None = None, progress_bar: bool = True) -> SampleResult:
    r"""Predictor–corrector sampler (Song et al. 2021): each Euler–Maruyama predictor step is
    preceded by ``n_corrector`` Langevin corrector steps at fixed t,

    .. math:: x ← x + δ\, s(x, t) + \sqrt{2δ}\, z,\qquad δ = 2\,\big(\mathrm{snr}\,‖z‖/‖s‖\big)^2

    — stochastic quantisation at frozen time with the learned drift. Song et al. average the
    norms over the batch; here they are averaged over fixed groups of samples — the stream blocks
    of per-sample streams (one sample for a lattice field, 1024 for tiny samples), or the whole
    batch for a ``torch.Generator`` — so that a sample does not depend on its batch. Returns a
    :class:`SampleResult`.
    """
    grid = time_grid(sde, n_steps, eps)
    score = _Counted(score_fn)
    x = prior_sample(sde, shape, generator, device, dtype) if x_init is None else x_init.clone()
    dt = float(grid[0] - grid[1])
    for i in progress(range(n_steps - 1), desc="PC sampler", disable=not progress_bar):
        t = _bt(grid[i], x)
        for _ in range(n_corrector):
            s = score(x, t)
            z = normal(generator, x.shape, device=x.device, dtype=x.dtype)
            delta = per_sample(_corrector_step(z, s, snr, _group(generator, x)), x)
            x = x + delta * s + torch.sqrt(2 * delta) * z
        last = i == n_steps - 2
        z = None if last else normal(generator, x.shape, device=x.device, dtype=x.dtype)
        x = sde.reverse_step(x, t, dt, score(x, t), z)
    return SampleResult(x, score.nfe)


def _group(noise, x) -> int:
    """Samples over which the corrector averages its norms (see :func:`predictor_corrector`)."""
    return getattr(noise, "block", None) or x.shape[0]


def _corrector_step(z, s, snr: float, group: int) -> torch.Tensor:
    """δ = 2 (snr ⟨‖z‖⟩/⟨‖s‖⟩)² per sample, the averages taken over consecutive groups of samples."""
    n = z.shape[0]
    zn, sn = z.flatten(1).norm(dim=1), s.flatten(1).norm(dim=1)
    pad = (-n) % group
    zn = torch.nn.functional.pad(zn, (0, pad), value=float("nan")).reshape(-1, group).nanmean(1)
    sn = torch.nn.functional.pad(sn, (0, pad), value=float("nan")).reshape(-1, group).nanmean(1)
    delta = 2 * (snr * zn / sn.clamp_min(1e-30)) ** 2
    return delta.repeat_interleave(group)[:n]


def probability_flow(score_fn, sde, x: torch.Tensor, t_start: float, t_end: float, rtol: float = 1e-5,
                     atol: float = 1e-5, method: str = "dopri5", record_times=None):
    r"""Integrate the probability-flow ODE (paper eq. 3.14, α = ½ convention)

    .. math:: \frac{dx}{dt} = f(x, t) - \tfrac12 g^2(t)\, s(x, t)

    from ``t_start`` to ``t_end`` with torchdiffeq (adaptive Dormand–Prince, the RK45 of the
    authors). From T to ε it is a deterministic sampler; from ε to T it encodes data.
    Returns the end state, or ``(end, {t: state})`` if ``record_times`` is given. A solver that
    gives up raises :class:`SamplerFailed` with what to try.
    """
    from torchdiffeq import odeint

    times = [float(t_start)] + [float(t) for t in (record_times or [])] + [float(t_end)]
    order = sorted(set(times[1:-1]), reverse=t_end < t_start)
    ts = torch.tensor([times[0], *order, times[-1]], dtype=torch.float64)

    def rhs(t, y):
        tb = torch.full((y.shape[0],), float(t), dtype=y.dtype, device=y.device)
        with torch.no_grad():
            return sde.ode_drift(y, tb, score_fn(y, tb))

    try:
        ys = odeint(rhs, x, ts.to(x.device), rtol=rtol, atol=atol, method=method,
                    options=_first_step(method, t_start, t_end))
    except AssertionError as exc:  # torchdiffeq: "underflow in dt ..."
        raise SamplerFailed(f"the adaptive ODE solver gave up ({str(exc).strip()[:80]}): the score is too rough "
                            f"for rtol={rtol:g}, atol={atol:g}; try a looser tolerance or a fixed-step sampler "
                            "(sampler 'em')") from None
    if not bool(torch.isfinite(ys[-1]).all()):
        raise SamplerFailed("the probability-flow ODE produced NaN or inf; try a fixed-step sampler (sampler 'em')")
    if record_times is None:
        return ys[-1]
    return ys[-1], {float(t): ys[i] for i, t in enumerate(ts.tolist())}


# ---------------------------------------------------------------------------------- few-step samplers
# The probability-flow ODE (eq. 3.14) written in the scaled field x̃ = x/f(t,0) and the noise level
# σ̃(t) = √Ξ(t)/f(t,0) (Karras et al. 2022, "EDM") is
#
#     dx̃/dσ̃ = (x̃ − D(x̃; σ̃))/σ̃,     D(x̃; σ̃) = x̃ + σ̃² f s(f x̃, t(σ̃)) = E[x₀ | x_t]  (Tweedie),
#
# for VE and VP alike. Its solution is nearly a straight line in σ̃, which is why few steps on a grid
# dense at small σ̃ suffice. Every sampler below ends at σ̃(ε), the distribution p_ε that the
# Euler–Maruyama sampler targets, so their outputs are comparable.
def noise_levels(sde, n: int, eps: float, rho: float = 7.0, sigma_max: float | None = None) -> torch.Tensor:
    r"""n noise levels from σ̃_max = min(σ̃(T), ``sigma_max``) down to σ̃(ε) (float64), EDM's grid
    σ̃_i = (σ̃_max^{1/ρ} + \tfrac{i}{n-1}(σ̃_min^{1/ρ} − σ̃_max^{1/ρ}))^ρ.

    A cap matters for VP: with the paper's g = 25^t, σ̃(T) = e^{48}, and an uncapped grid spends
    almost every level where nothing happens (EDM caps at 80)."""
    if n < 2:
        raise ValueError("need at least two noise levels")
    hi, lo = float(sde.noise_level(sde.T)), float(sde.noise_level(eps))
    if sigma_max is not None:
        if not lo < sigma_max:
            raise ValueError(f"the cap sigma_max (--sigma-max) = {sigma_max} must exceed the last noise level σ̃(ε) = {lo:.3g}")
        hi = min(hi, float(sigma_max))
    i = torch.arange(n, dtype=torch.float64) / (n - 1)
    return (hi ** (1 / rho) + i * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


def denoiser(score_fn, sde):
    """D(x̃; σ̃) = x̃ + σ̃² f s(f x̃, t(σ̃)): the posterior mean of the clean field from the score."""

    def D(xs: torch.Tensor, level: float) -> torch.Tensor:
        t = sde.time_of_noise_level(torch.tensor(level, dtype=torch.float64))
        f = float(sde.f(t))
        return xs + (level * level * f) * score_fn(f * xs, _bt(float(t), xs))

    return D


def _scaled_prior(sde, shape, noise, device, dtype, x_init, level: float):
    """x̃ at the first noise level: the prior sample, rescaled to N(0, σ̃²) (the prior neglects the
    data's own variance, as p_T does)."""
    x = prior_sample(sde, shape, noise, device, dtype) if x_init is None else x_init.clone()
    return x * (level / sde.prior_std())


@torch.no_grad()
def heun(score_fn, sde, shape, n_steps: int = 18, eps: float = 1e-3, rho: float = 7.0, churn: float = 0.0,
         s_noise: float = 1.0, generator=None, device=None, dtype=torch.float32, x_init: torch.Tensor | None = None,
         progress_bar: bool = False, sigma_max: float | None = None) -> SampleResult:
    r"""Heun's second-order method on the probability-flow ODE in (x̃, σ̃) (Karras et al. 2022, Alg. 1/2):

    .. math:: d_i = \frac{x̃_i - D(x̃_i; σ̃_i)}{σ̃_i},\quad x̃' = x̃_i + (σ̃_{i+1} - σ̃_i) d_i,\quad
              x̃_{i+1} = x̃_i + (σ̃_{i+1} - σ̃_i)\,\tfrac12\big(d_i + d(x̃', σ̃_{i+1})\big),

    2 network evaluations per step, global error O(h²). With ``churn`` > 0 (stochastic, Alg. 2) each
    step first raises the noise level to σ̂ = σ̃_i(1 + γ), γ = min(churn/(n − 1), √2 − 1), by adding
    fresh noise of variance σ̂² − σ̃_i² (times ``s_noise``²) — a Langevin-like correction that
    forgets earlier errors; no churn where σ̂ would exceed σ̃(T).
    """
    levels = noise_levels(sde, n_steps, eps, rho, sigma_max).tolist()
    score = _Counted(score_fn)
    D = denoiser(score, sde)
    xs = _scaled_prior(sde, shape, generator, device, dtype, x_init, levels[0])
    gamma = min(churn / (n_steps - 1), math.sqrt(2) - 1) if churn > 0 else 0.0
    for i in progress(range(n_steps - 1), desc="Heun", disable=not progress_bar):
        lo, nxt = levels[i], levels[i + 1]
        if gamma > 0 and lo * (1 + gamma) <= levels[0]:
            hat = lo * (1 + gamma)
            xs = xs + (s_noise * math.sqrt(hat * hat - lo * lo)) * normal(generator, xs.shape, device=xs.device,
                                                                            dtype=xs.dtype)
            lo = hat
        d = (xs - D(xs, lo)) / lo
        pred = xs + (nxt - lo) * d
        d2 = (pred - D(pred, nxt)) / nxt
        xs = xs + (nxt - lo) * 0.5 * (d + d2)
    return SampleResult(float(sde.f(eps)) * xs, score.nfe)


@torch.no_grad()
def exponential_integrator(score_fn, sde, shape, n_steps: int = 18, eps: float = 1e-3, rho: float = 7.0,
                           order: int = 2, generator=None, device=None, dtype=torch.float32,
                           x_init: torch.Tensor | None = None, progress_bar: bool = False,
                           sigma_max: float | None = None) -> SampleResult:
    r"""Exponential integrators of the probability-flow ODE in (x̃, σ̃) (DDIM, Song et al. 2021; DPM-Solver,
    Lu et al. 2022). With D held fixed over a step, dx̃/dσ̃ = (x̃ − D)/σ̃ is solved exactly:

    .. math:: x̃_{i+1} = r\,x̃_i + (1 - r)\,D,\qquad r = σ̃_{i+1}/σ̃_i .

    ``order=1`` takes D(x̃_i; σ̃_i) (DDIM, 1 evaluation per step, error O(h)); ``order=2`` takes D at
    the geometric midpoint σ̃_m = √(σ̃_i σ̃_{i+1}) of a first-order half step (DPM-Solver-2, 2
    evaluations per step, error O(h²)). Exact for any step size when D is constant in σ̃.
    """
    if order not in (1, 2):
        raise ValueError("order must be 1 or 2")
    levels = noise_levels(sde, n_steps, eps, rho, sigma_max).tolist()
    score = _Counted(score_fn)
    D = denoiser(score, sde)
    xs = _scaled_prior(sde, shape, generator, device, dtype, x_init, levels[0])
    for i in progress(range(n_steps - 1), desc="exponential", disable=not progress_bar):
        lo, nxt = levels[i], levels[i + 1]
        d = D(xs, lo)
        if order == 2:
            mid = math.sqrt(lo * nxt)
            d = D((mid / lo) * xs + (1 - mid / lo) * d, mid)
        xs = (nxt / lo) * xs + (1 - nxt / lo) * d
    return SampleResult(float(sde.f(eps)) * xs, score.nfe)


# ---------------------------------------------------------------------------------- registry
def _em(score_fn, sde, x_T, settings, noise, progress_bar=False, record_times=None) -> SampleResult:
    return euler_maruyama(score_fn, sde, x_T.shape, n_steps=settings.n_steps, eps=settings.eps, generator=noise,
                          x_init=x_T, record_times=record_times, progress_bar=progress_bar)


def _pc(score_fn, sde, x_T, settings, noise, progress_bar=False, record_times=None) -> SampleResult:
    return predictor_corrector(score_fn, sde, x_T.shape, n_steps=settings.n_steps, eps=settings.eps,
                               snr=settings.snr, n_corrector=settings.n_corrector, generator=noise, x_init=x_T,
                               progress_bar=progress_bar)


def _ode(score_fn, sde, x_T, settings, noise, progress_bar=False, record_times=None) -> SampleResult:
    score = _Counted(score_fn)
    x = probability_flow(score, sde, x_T, sde.T, settings.eps, rtol=settings.rtol, atol=settings.atol,
                         method=settings.method)
    return SampleResult(x, score.nfe)


def _heun(score_fn, sde, x_T, settings, noise, progress_bar=False, record_times=None) -> SampleResult:
    return heun(score_fn, sde, x_T.shape, n_steps=settings.n_steps, eps=settings.eps, rho=settings.rho,
                x_init=x_T, progress_bar=progress_bar, sigma_max=settings.sigma_max)


def _churn(score_fn, sde, x_T, settings, noise, progress_bar=False, record_times=None) -> SampleResult:
    return heun(score_fn, sde, x_T.shape, n_steps=settings.n_steps, eps=settings.eps, rho=settings.rho,
                churn=settings.churn, s_noise=settings.s_noise, generator=noise, x_init=x_T, progress_bar=progress_bar,
                sigma_max=settings.sigma_max)


def _ddim(score_fn, sde, x_T, settings, noise, progress_bar=False, record_times=None) -> SampleResult:
    return exponential_integrator(score_fn, sde, x_T.shape, n_steps=settings.n_steps, eps=settings.eps,
                                  rho=settings.rho, order=1, x_init=x_T, progress_bar=progress_bar,
                                  sigma_max=settings.sigma_max)


def _dpm2(score_fn, sde, x_T, settings, noise, progress_bar=False, record_times=None) -> SampleResult:
    return exponential_integrator(score_fn, sde, x_T.shape, n_steps=settings.n_steps, eps=settings.eps,
                                  rho=settings.rho, order=2, x_init=x_T, progress_bar=progress_bar,
                                  sigma_max=settings.sigma_max)


SAMPLERS = {
    "em": _em,        # Euler–Maruyama on the reverse SDE (paper eq. 3.9)
    "pc": _pc,        # predictor–corrector
    "ode": _ode,      # probability-flow ODE (eq. 3.14), adaptive
    "heun": _heun,    # Heun on the PF-ODE, EDM noise levels (2 NFE per step)
    "churn": _churn,  # Heun with fresh noise per step (EDM's stochastic sampler)
    "ddim": _ddim,    # first-order exponential integrator (1 NFE per step)
    "dpm2": _dpm2,    # DPM-Solver-2 (2 NFE per step)
}
SAMPLER_HELP = {"em": "Euler–Maruyama on the reverse SDE (the paper's)", "pc": "predictor–corrector",
                "ode": "probability-flow ODE, adaptive (deterministic given x_T)",
                "heun": "Heun on the probability-flow ODE, EDM noise levels, 2 NFE per step",
                "churn": "Heun with fresh noise each step (EDM's stochastic sampler; --churn)",
                "ddim": "first-order exponential integrator (DDIM), 1 NFE per step",
                "dpm2": "second-order exponential integrator (DPM-Solver-2), 2 NFE per step"}


def fast_settings(device=None, **overrides) -> SampleSettings:
    """The fastest generation settings measured at the accuracy of the paper's sampler, for the
    kind of device that will run them (the per-device winners of ``benchmarks/``; the paper's
    500-step Euler–Maruyama stays the default of :class:`SampleSettings`):

    * the sampler: DPM-Solver-2 with 48 noise levels (94 NFE), which reaches the 500-step
      Euler–Maruyama's error on the free field at L = 32 (``benchmarks/samplers.py``: ×5.3 on a
      2-core CPU, ×21 the paper's rate on an H200). The number of levels a trained model needs
      can differ; with an imperfect score the probability-flow ODE converges to another
      distribution than the reverse SDE (``benchmarks/samplers_trained.py``), so check the
      observables you need against EM-500 once;
    * the precision: ``"bf16"`` on a CPU with native bfloat16 instructions
      (:func:`lib.runtime.cpu_capability`: ×1.7–2.2 at L = 8, shifts of χ₂, U_L and the action
      below a tenth of the statistical error of 2048 configurations:
      ``benchmarks/samplers_trained.py --bf16``); ``"float32"`` on a CPU without them (an
      AVX2-only EPYC ran the 500-step sampler seven times slower in bf16) and on CUDA, where bf16
      autocast gave no gain in eager mode (H200: 202,383 against 207,688 forward passes/s).

    ``device``: as :func:`lib.runtime.resolve_device` (``None``: CUDA when present). Keyword
    arguments override single settings, e.g. ``n_steps=64``.
    """
    from ..runtime import cpu_capability, resolve_device

    dev = resolve_device(device)
    bf16 = dev.type == "cpu" and cpu_capability()["native_bf16"]
    winners = {"sampler": "dpm2", "n_steps": 48, "precision": "bf16" if bf16 else "float32"}
    return SampleSettings(**{**winners, **overrides})


def sample(score_fn, sde, x_T: torch.Tensor, settings: SampleSettings, noise=None, progress_bar: bool = False,
           record_times=None) -> SampleResult:
    """Run the sampler ``settings.sampler`` of the registry from the prior sample ``x_T``, the
    score evaluated at ``settings.precision``."""
    if settings.precision == "bf16":
        score_fn = _Autocast(score_fn)
    return SAMPLERS[settings.sampler](score_fn, sde, x_T, settings, noise, progress_bar=progress_bar,
                                      record_times=record_times)


__all__ = ["SampleSettings", "SampleResult", "PRECISIONS", "fast_settings", "SamplerFailed", "SAMPLERS", "sample", "euler_maruyama",
           "predictor_corrector", "probability_flow", "prior_sample", "time_grid", "noise_levels", "denoiser", "heun",
           "exponential_integrator"]
