r"""The model's likelihood by the probability-flow ODE (paper eq. 3.15, App. B)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .samplers import _first_step


@dataclass
class LikelihoodResult:
    """log q(x₀) per configuration (nats), the encoded prior sample x_T and the number of
    network evaluations the solver made."""

    log_q: torch.Tensor
    x_T: torch.Tensor
    nfe: int

    def __iter__(self):  # ``log_q, x_T = log_likelihood(...)``
        return iter((self.log_q, self.x_T))


def log_likelihood(score_fn, sde, x0: torch.Tensor, eps: float = 1e-5, n_probes: int = 10, generator=None,
                   rtol: float = 1e-5, atol: float = 1e-5, method: str = "dopri5", exact_divergence: bool = False):
    r"""log q(x₀) of the model by the probability-flow ODE (paper eq. 3.15, App. B):

    .. math:: \log q_0(x_0) = \log p_T(x_T) + \int_ε^T dt\, ∇·\tilde f(x_t, t),\qquad
              \tilde f = f - \tfrac12 g^2 s,

    integrating x and the divergence together from ε to T. The divergence is estimated with
    ``n_probes`` fixed Gaussian probes (Skilling–Hutchinson, eq. B.1–B.3), or computed exactly
    with ``exact_divergence`` (one backward pass per degree of freedom — few dof only).

    Returns a :class:`LikelihoodResult` (unpacks as ``log_q, x_T``; log_q has shape (batch,), in
    nats) with the number of network evaluations.
    """
    from torchdiffeq import odeint

    if n_probes < 1:
        raise ValueError("n_probes must be >= 1")
    probes = torch.randn((n_probes, *x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
    n_dof = x0[0].numel()

    nfe = 0

    def rhs(t, state):
        nonlocal nfe
        nfe += 1
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
    return LikelihoodResult(sde.prior_logp(xT) + integral, xT, nfe)
