r"""The Metropolis-adjusted Langevin algorithm (MALA): one Euler step of the Langevin equation of
stochastic quantisation as a proposal, made exact by a Metropolis test.

.. math::
    φ' = φ + ε K(φ) + \sqrt{2ε}\,ξ,\qquad K = −∂S/∂φ,

    \log α(φ → φ') = −S(φ') + S(φ) − \frac{|φ − φ' − εK(φ')|^2}{4ε} + \frac{|φ' − φ − εK(φ)|^2}{4ε},

accepted with probability min(1, e^{log α}). The proposal density q(φ'|φ) = N(φ + εK(φ), 2ε) enters
through the asymmetric correction, so e^{−S} satisfies detailed balance for every ε (Roberts &
Tweedie 1996). For angles (:class:`lib.theories.U1Gauge`) the chain runs in the covering space,
where S and K are periodic: the same formula then leaves e^{−S} on the torus invariant. This is the
exactness step of arXiv:2502.05504 after a diffusion model's reverse process.
"""
from __future__ import annotations

import math

import torch

from ..runtime import per_sample
from .chain import MarkovChainSampler


def mala_log_acceptance(theory, phi: torch.Tensor, prop: torch.Tensor, eps: float) -> torch.Tensor:
    """log α(φ → φ') of the module docstring, per configuration (before the min with 0)."""
    dims = tuple(range(1, phi.ndim))
    fwd = prop - phi - eps * theory.drift(phi)
    bwd = phi - prop - eps * theory.drift(prop)
    return (theory.action(phi) - theory.action(prop)
            - (bwd * bwd).sum(dim=dims) / (4 * eps) + (fwd * fwd).sum(dim=dims) / (4 * eps))


class MALA(MarkovChainSampler):
    """Metropolis-adjusted Langevin updates of every chain (module docstring) with step ``eps``."""

    sampler = "mala"
    unit = "step"

    def __init__(self, theory, n_chains: int = 1, eps: float = 0.01, seed: int = 0, start="hot", device=None,
                 dtype=torch.float64, first_chain: int = 0, per_chain_streams: bool | None = None):
        if not (math.isfinite(eps) and eps > 0):
            raise ValueError(f"MALA step eps must be a positive number, got {eps!r}")
        self.eps = float(eps)
        super().__init__(theory, n_chains, seed=seed, start=start, device=device, dtype=dtype,
                         first_chain=first_chain, per_chain_streams=per_chain_streams)
        self.n_accepted = torch.zeros(n_chains, dtype=torch.long, device=self.device)

    def settings(self) -> dict:
        return {**super().settings(), "eps": self.eps}

    def update(self) -> torch.Tensor:
        """One MALA step of every chain; returns the boolean acceptance mask."""
        xi = self.noise.randn(self.theory.lattice_shape, self.dtype)
        prop = self.phi + self.eps * self.theory.drift(self.phi) + math.sqrt(2 * self.eps) * xi
        log_a = mala_log_acceptance(self.theory, self.phi, prop, self.eps)
        u = self.noise.rand((), self.dtype)
        accept = torch.log(u) < log_a.nan_to_num(nan=-math.inf)
        self.phi = torch.where(per_sample(accept, self.phi).bool(), prop, self.phi)
        self.n_accepted += accept
        return accept

    def step(self) -> torch.Tensor:
        """One counted MALA step (what :meth:`run` does ``n`` times); returns the acceptance mask."""
        accept = self.update()
        self.n_updates += 1
        return accept

    @property
    def acceptance_rate(self) -> float:
        return float(self.n_accepted.sum()) / max(self.n_updates * len(self.n_accepted), 1)

    def _extra_state(self) -> dict:
        return {"n_accepted": self.n_accepted.cpu()}

    def _load_extra_state(self, state: dict) -> None:
        self.n_accepted = state["n_accepted"].to(self.device)


__all__ = ["MALA", "mala_log_acceptance"]
