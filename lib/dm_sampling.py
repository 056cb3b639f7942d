r"""Generating with a diffusion model: the reverse SDE (paper eqs. 3.2, 3.5, 3.9), a
predictor–corrector variant, the probability-flow ODE (eq. 3.14) and the likelihood it gives
(eq. 3.15, App. B).

All functions take a score ``score_fn(x, t) -> ∇ log p_t(x)`` (a trained network or an exact
score such as :meth:`lib.gmm.GaussianMixture.score_fn`), an SDE from :mod:`lib.sde`, batched
tensors on any device, and an explicit ``torch.Generator``.
"""
from __future__ import annotations

import torch

from .utils import progress


def _bt(t: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def _bc(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) if v.ndim else v.to(x.dtype)


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


@torch.no_grad()
def euler_maruyama(score_fn, sde, shape, n_steps: int = 500, eps: float = 1e-3, generator=None, device=None,
                   dtype=torch.float32, x_init: torch.Tensor | None = None, record_times=None,
                   denoise_last: bool = True, progress_bar: bool = True):
    r"""Euler–Maruyama integration of the reverse SDE from t = T to t = ε (paper eq. 3.9):

    .. math:: x_{i+1} = x_i - \big[f(x_i, t_i) - g^2(t_i)\, s(x_i, t_i)\big] Δt + g(t_i)\sqrt{Δt}\, z_i,

    with Δt = t_i − t_{i+1} = (T − ε)/(N − 1) on a uniform grid of N times, z_i ~ N(0, 1).
    In the reverse time τ = T − t this is a Langevin step with drift g²s and kernel g²
    (eqs. 3.8–3.9). With ``denoise_last`` the last step adds no noise (as in the authors' code).

    Returns ``(x, records)`` where records maps each requested time to the batch at the
    nearest grid time (a dict ``{t: tensor}``; the initial prior sample is at t = T).
    """
    if n_steps < 2:
        raise ValueError("n_steps must be >= 2")
    if not 0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, T), got {eps}")
    grid = torch.linspace(sde.T, eps, n_steps, dtype=torch.float64)
    x = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype) if x_init is None else x_init.clone()
    rec_idx = _record_indices(grid, record_times)
    records = {t: x.clone() for t, i in rec_idx.items() if i == 0}
    dt = float(grid[0] - grid[1])
    for i in progress(range(n_steps - 1), desc="reverse SDE", disable=not progress_bar):
        t = _bt(grid[i], x)
        g2 = _bc(sde.g(t.double()) ** 2, x)
        mean = x - (sde.drift(x, t) - g2 * score_fn(x, t)) * dt
        last = i == n_steps - 2
        if last and denoise_last:
            x = mean
        else:
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = mean + torch.sqrt(g2 * dt) * z
        for tr, j in rec_idx.items():
            if j == i + 1:
                records[tr] = x.clone()
    return x, records


@torch.no_grad()
def predictor_corrector(score_fn, sde, shape, n_steps: int = 500, eps: float = 1e-3, snr: float = 0.16,
                        n_corrector: int = 1, generator=None, device=None, dtype=torch.float32,
                        x_init: torch.Tensor | None = None, progress_bar: bool = True):
    r"""Predictor–corrector sampler (Song et al. 2021): each Euler–Maruyama predictor step is
    followed by ``n_corrector`` Langevin corrector steps at fixed t,

    .. math:: x ← x + δ\, s(x, t) + \sqrt{2δ}\, z,\qquad δ = 2\,\big(\mathrm{snr}\,‖z‖/‖s‖\big)^2

    — stochastic quantisation at frozen time with the learned drift. Returns the samples.
    """
    if n_steps < 2:
        raise ValueError("n_steps must be >= 2")
    grid = torch.linspace(sde.T, eps, n_steps, dtype=torch.float64)
    x = sde.prior_sample(shape, generator=generator, device=device, dtype=dtype) if x_init is None else x_init.clone()
    dt = float(grid[0] - grid[1])
    for i in progress(range(n_steps - 1), desc="PC sampler", disable=not progress_bar):
        t = _bt(grid[i], x)
        for _ in range(n_corrector):
            s = score_fn(x, t)
            z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            s_norm = s.flatten(1).norm(dim=1).mean()
            z_norm = z.flatten(1).norm(dim=1).mean()
            delta = 2 * (snr * z_norm / s_norm) ** 2
            x = x + delta * s + torch.sqrt(2 * delta) * z
        g2 = _bc(sde.g(t.double()) ** 2, x)
        mean = x - (sde.drift(x, t) - g2 * score_fn(x, t)) * dt
        if i == n_steps - 2:
            x = mean
        else:
            x = mean + torch.sqrt(g2 * dt) * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x


def probability_flow(score_fn, sde, x: torch.Tensor, t_start: float, t_end: float, rtol: float = 1e-5,
                     atol: float = 1e-5, method: str = "dopri5", record_times=None):
    r"""Integrate the probability-flow ODE (paper eq. 3.14, α = ½ convention)

    .. math:: \frac{dx}{dt} = f(x, t) - \tfrac12 g^2(t)\, s(x, t)

    from ``t_start`` to ``t_end`` with torchdiffeq (adaptive Dormand–Prince, the RK45 of the
    authors). From T to ε it is a deterministic sampler; from ε to T it encodes data.
    Returns the end state, or ``(end, {t: state})`` if ``record_times`` is given.
    """
    from torchdiffeq import odeint

    times = [float(t_start)] + [float(t) for t in (record_times or [])] + [float(t_end)]
    order = sorted(set(times[1:-1]), reverse=t_end < t_start)
    ts = torch.tensor([times[0], *order, times[-1]], dtype=torch.float64)

    def rhs(t, y):
        tb = torch.full((y.shape[0],), float(t), dtype=y.dtype, device=y.device)
        with torch.no_grad():
            return sde.ode_drift(y, tb, score_fn(y, tb))

    ys = odeint(rhs, x, ts.to(x.device), rtol=rtol, atol=atol, method=method,
                options=_first_step(method, t_start, t_end))
    if record_times is None:
        return ys[-1]
    return ys[-1], {float(t): ys[i] for i, t in enumerate(ts.tolist())}


def log_likelihood(score_fn, sde, x0: torch.Tensor, eps: float = 1e-5, n_probes: int = 10, generator=None,
                   rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5", exact_divergence: bool = False):
    r"""log q(x₀) of the model by the probability-flow ODE (paper eq. 3.15, App. B):

    .. math:: \log q_0(x_0) = \log p_T(x_T) + \int_ε^T dt\, ∇·\tilde f(x_t, t),\qquad
              \tilde f = f - \tfrac12 g^2 s,

    integrating x and the divergence together from ε to T. The divergence is estimated with
    ``n_probes`` fixed Gaussian probes (Skilling–Hutchinson, eq. B.1–B.3), or computed exactly
    with ``exact_divergence`` (one backward pass per degree of freedom — few dof only).

    Returns ``(log_q, x_T)``; log_q has shape (batch,), in nats.
    """
    from torchdiffeq import odeint

    if n_probes < 1:
        raise ValueError("n_probes must be >= 1")
    probes = torch.randn((n_probes, *x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
    n_dof = x0[0].numel()

    def rhs(t, state):
        y = state[0]
        tb = torch.full((y.shape[0],), float(t), dtype=y.dtype, device=y.device)
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            v = sde.ode_drift(y, tb, score_fn(y, tb))
            if exact_divergence:
                div = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
                vf, yf = v.flatten(1), y
                for j in range(n_dof):
                    gj, = torch.autograd.grad(vf[:, j].sum(), yf, retain_graph=True)
                    div = div + gj.flatten(1)[:, j]
            else:
                div = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
                for k in range(n_probes):
                    e = probes[k]
                    gk, = torch.autograd.grad((v * e).sum(), y, retain_graph=k < n_probes - 1)
                    div = div + (gk * e).flatten(1).sum(1)
                div = div / n_probes
        return v.detach(), div.detach()

    ts = torch.tensor([eps, sde.T], dtype=torch.float64, device=x0.device)
    init = (x0, torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device))
    xs, divs = odeint(rhs, init, ts, rtol=rtol, atol=atol, method=method,
                      options=_first_step(method, eps, sde.T))
    xT, integral = xs[-1], divs[-1]
    return sde.prior_logp(xT) + integral, xT
