r"""The model's likelihood by the probability-flow ODE (paper eq. 3.15, App. B)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..settings import bounded_float, Settings, choice, positive_float, positive_int
from .samplers import _first_step


@dataclass(frozen=True)
class LikelihoodSettings(Settings):
    """Settings of the likelihood stage (defaults: the authors' recipe — RK45 (``dopri5``) at
    rtol = atol = 10⁻⁵ from ε = 10⁻⁵ to T, Skilling–Hutchinson with 10 Gaussian probes, EMA
    weights). ``trace``: ``"hutchinson"`` or ``"exact"`` (then the probes are unused)."""

    stage = "likelihood"
    trace: str = "hutchinson"
    n_probes: int = 10
    probe: str = "gaussian"
    rtol: float = 1e-5
    atol: float = 1e-5
    method: str = "dopri5"
    eps: float = 1e-5
    ema: bool = True

    def __post_init__(self):
        choice("trace", self.trace, ("hutchinson", "exact"))
        positive_int("n_probes", self.n_probes)
        choice("probe", self.probe, ("gaussian", "rademacher"))
        self._set("rtol", bounded_float("rtol", self.rtol, 1e-14, 1.0, "a relative tolerance"))
        self._set("atol", bounded_float("atol", self.atol, 1e-14, 1.0, "an absolute tolerance"))
        choice("method", self.method, ("dopri5", "dopri8", "bosh3", "adaptive_heun", "rk4", "midpoint", "euler"))
        eps = positive_float("eps", self.eps)
        if eps >= 1:
            raise ValueError(f"eps (the smallest diffusion time) must lie in (0, 1), got {self.eps!r}")
        self._set("eps", eps)
        self._set("ema", bool(self.ema))


def probability_flow_drift(score_fn, sde, t, batch: int, like: torch.Tensor):
    r"""The probability-flow vector field at a fixed time t as a function of x alone,
    x ↦ f̃(x, t) = f(x, t) − ½ g²(t) s(x, t) (paper eq. 3.14), for the divergence routines below
    (``like`` gives dtype and device of the time tensor)."""
    tb = torch.full((batch,), float(t), dtype=like.dtype, device=like.device)

    def drift(z):
        return sde.ode_drift(z, tb, score_fn(z, tb))

    return drift


def draw_probes(n_probes: int, shape, probe: str = "gaussian", noise=None, device=None, dtype=torch.float32):
    """Skilling–Hutchinson probes of shape ``(n_probes, *shape)`` (shape = (batch, *sample)), with
    zero mean and unit covariance: Gaussian, or Rademacher (±1). ``noise``: a ``torch.Generator``
    (or None) for the whole batch, or :class:`lib.rng.SampleStreams` so that sample i's probes
    depend only on its own stream."""
    shape = tuple(shape)
    if noise is None or isinstance(noise, torch.Generator):
        z = torch.randn((n_probes, *shape), generator=noise, device=device, dtype=dtype)
    else:
        if len(noise) != shape[0]:
            raise ValueError(f"the random streams cover {len(noise)} samples, the batch has {shape[0]}")
        z = noise.randn((n_probes, *shape[1:]), dtype).transpose(0, 1).contiguous()
    return torch.sign(z) if probe == "rademacher" else z


@dataclass
class LikelihoodResult:
    """log q(x₀) per configuration (nats), the encoded prior sample x_T and the number of
    network evaluations the solver made."""

    log_q: torch.Tensor
    x_T: torch.Tensor
    nfe: int

    def __iter__(self):  # ``log_q, x_T = log_likelihood(...)``
        return iter((self.log_q, self.x_T))


def divergence_exact(fn, y: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(v, ∇·v)`` for ``v = fn(y)`` with y of shape (batch, *shape), the divergence
    Σ_i ∂v_i/∂y_i per sample computed exactly: ``torch.func.vjp`` once, then vmapped over
    ``chunk`` basis cotangents at a time (D backward passes in D/chunk batched calls). ``fn`` must
    treat the samples of a batch independently (no batch statistics), as every score network here
    does."""
    from torch.func import vjp, vmap

    v, pullback = vjp(fn, y)
    n, d = y.shape[0], y[0].numel()
    div = torch.zeros(n, dtype=y.dtype, device=y.device)
    for a in range(0, d, chunk):
        k = min(chunk, d - a)
        basis = torch.zeros((k, n, d), dtype=y.dtype, device=y.device)
        idx = torch.arange(k, device=y.device)
        basis[idx, :, a + idx] = 1.0
        (rows,) = vmap(pullback)(basis.reshape(k, *y.shape))
        div = div + rows.reshape(k, n, d)[idx, :, a + idx].sum(0)
    return v, div


def divergence_hutchinson(fn, y: torch.Tensor, probes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(v, ∇·v)`` with the divergence estimated by Skilling–Hutchinson (paper eqs. B.1–B.3):
    ∇·v ≈ (1/n) Σ_k ε_kᵀ (∂v/∂y) ε_k with the n given probes ε_k (shape (n, batch, *shape)) of zero
    mean and unit covariance (Gaussian or Rademacher); unbiased, one backward pass per probe."""
    from torch.func import vjp, vmap

    v, pullback = vjp(fn, y)
    (rows,) = vmap(pullback)(probes)
    return v, (rows * probes).flatten(2).sum(2).mean(0)


def log_likelihood(score_fn, sde, x0: torch.Tensor, eps: float = 1e-5, n_probes: int = 10, generator=None,
                   rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5", exact_divergence: bool = False,
                   trace: str | None = None, probe: str = "gaussian", prior_logp=None, chunk: int = 64,
                   divergence_fn=None):
    r"""log q(x₀) of the model by the probability-flow ODE (paper eq. 3.15, App. B):

    .. math:: \log q_ε(x_0) = \log p_T(x_T) + \int_ε^T dt\, ∇·\tilde f(x_t, t),\qquad
              \tilde f = f - \tfrac12 g^2 s,

    integrating x and the divergence together from ε to T with torchdiffeq (``method``, ``rtol``,
    ``atol``; the authors: RK45 at 10⁻⁵). ``trace``: ``"exact"`` (:func:`divergence_exact`, D
    backward passes per evaluation, batched; ``exact_divergence=True`` means the same) or
    ``"hutchinson"`` (the default, :func:`divergence_hutchinson` with ``n_probes`` probes of kind
    ``probe`` — ``"gaussian"`` (the paper's) or ``"rademacher"`` — drawn once per trajectory, so the
    solver integrates a smooth function; ``generator`` is a ``torch.Generator`` for the batch or
    :class:`lib.rng.SampleStreams` for per-sample probes, see :func:`draw_probes`). ``prior_logp(x_T)`` replaces the prior N(0, Ξ(T)) (e.g. by
    an exact p_T to test the integration alone). ``divergence_fn(x, t)``, where the divergence of
    the ODE drift is known in closed form (a Gaussian field:
    :meth:`lib.theories.GaussianField.ode_divergence`), replaces the trace computation.

    Returns a :class:`LikelihoodResult` (unpacks as ``log_q, x_T``; log_q has shape (batch,), in
    nats) with the number of network evaluations (solver right-hand sides).
    """
    trace = trace or ("exact" if exact_divergence else "hutchinson")
    xT, integral, nfe = _flow_with_divergence(score_fn, sde, x0, eps, sde.T, n_probes, generator, rtol, atol, method,
                                              trace, probe, chunk, divergence_fn)
    terminal = (prior_logp or sde.prior_logp)(xT)
    return LikelihoodResult(terminal + integral, xT, nfe)


@dataclass
class ODESample:
    """Configurations generated by the probability-flow ODE (network units), their log density
    log q(x_ε) in nats (exact up to the solver with the exact trace; an unbiased estimate of the
    integral with Hutchinson's), the prior draws they came from and the network evaluations."""

    x: torch.Tensor
    log_q: torch.Tensor
    x_T: torch.Tensor
    nfe: int


def ode_sample_with_density(score_fn, sde, x_T: torch.Tensor, eps: float = 1e-5, n_probes: int = 10, generator=None,
                            rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5", trace: str = "exact",
                            probe: str = "gaussian", chunk: int = 64, divergence_fn=None) -> ODESample:
    r"""Generate with the probability-flow ODE from prior draws ``x_T`` down to ε and carry the
    log density along the same trajectory (the change of variables of eq. 3.15 run backwards):

    .. math:: \log q(x_ε) = \log π(x_T) - \int_T^ε dt\, ∇·\tilde f(x_t, t)

    — a proposal together with the density it was drawn from, for an exact Metropolis test
    (DM-MC). The options are those of :func:`log_likelihood`; the default trace is exact (an
    estimated trace makes log q noisy)."""
    xe, integral, nfe = _flow_with_divergence(score_fn, sde, x_T, sde.T, eps, n_probes, generator, rtol, atol, method,
                                              trace, probe, chunk, divergence_fn)
    return ODESample(xe, sde.prior_logp(x_T) - integral, x_T, nfe)


def _flow_with_divergence(score_fn, sde, x_start, t_start, t_end, n_probes, generator, rtol, atol, method, trace,
                          probe, chunk, divergence_fn):
    """Integrate dx/dt = f̃ and dℓ/dt = ∇·f̃ from t_start to t_end (either direction) with ℓ = 0 at
    the start; returns (x(t_end), ℓ(t_end), number of right-hand sides)."""
    from torchdiffeq import odeint

    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    if probe not in ("gaussian", "rademacher"):
        raise ValueError(f"probe must be 'gaussian' or 'rademacher', got {probe!r}")
    if n_probes < 1:
        raise ValueError("n_probes must be >= 1")
    probes = None
    if trace == "hutchinson" and divergence_fn is None:
        probes = draw_probes(n_probes, x_start.shape, probe, generator, x_start.device, x_start.dtype)
    nfe = 0

    def rhs(t, state):
        nonlocal nfe
        nfe += 1
        y = state[0]
        drift = probability_flow_drift(score_fn, sde, t, y.shape[0], y)
        if divergence_fn is not None:
            with torch.no_grad():
                div = torch.as_tensor(divergence_fn(y, float(t)), dtype=y.dtype, device=y.device)
                return drift(y), div.expand(y.shape[0]).clone()
        with torch.enable_grad():
            if trace == "exact":
                v, div = divergence_exact(drift, y.detach(), chunk)
            else:
                v, div = divergence_hutchinson(drift, y.detach(), probes)
        return v.detach(), div.detach()

    ts = torch.tensor([t_start, t_end], dtype=torch.float64, device=x_start.device)
    init = (x_start, torch.zeros(x_start.shape[0], dtype=x_start.dtype, device=x_start.device))
    try:
        xs, divs = odeint(rhs, init, ts, rtol=rtol, atol=atol, method=method,
                          options=_first_step(method, t_start, t_end))
    except AssertionError as exc:
        from .samplers import SamplerFailed

        raise SamplerFailed(f"the probability-flow ODE solver gave up ({str(exc).strip()[:80]}); try a looser "
                            "tolerance") from None
    return xs[-1], divs[-1], nfe
