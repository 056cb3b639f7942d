"""Local Metropolis updates with parallel checkerboard sweeps."""
from __future__ import annotations

import torch

from .chain import MarkovChainSampler


class Metropolis(MarkovChainSampler):
    r"""Local Metropolis sampler, batched over chains.

    One sweep visits the even and then the odd sublattice. On a sublattice no two sites are
    neighbours, so all its sites are updated at once: propose φ'(x) = φ(x) + δ·u, u ~ U(−1, 1),
    and accept each site independently with probability min(1, e^{−ΔS_x}), where
    ΔS_x = s_x(φ') − s_x(φ) is the change of the site-local action
    (``theory.local_action``). This satisfies detailed balance for e^{−S}.
    """

    sampler = "metropolis"
    unit = "sweep"

    def __init__(self, theory, n_chains: int = 1, delta: float = 1.0, seed: int = 0, start="hot",
                 device=None, dtype=torch.float64, first_chain: int = 0, per_chain_streams: bool | None = None):
        if not delta > 0:
            raise ValueError(f"proposal width delta must be positive, got {delta}")
        self.delta = float(delta)
        super().__init__(theory, n_chains, seed=seed, start=start, device=device, dtype=dtype,
                         first_chain=first_chain, per_chain_streams=per_chain_streams)
        self.masks = theory.checkerboard_masks(device=self.device)
        self.n_accepted_sites = 0

    def settings(self) -> dict:
        return {**super().settings(), "delta": self.delta}

    def update(self) -> float:
        """One checkerboard sweep of every chain; returns the site acceptance rate of the sweep."""
        acc = 0
        for mask in self.masks:
            u = self.noise.rand(self.theory.lattice_shape, self.dtype)
            prop = torch.where(mask, self.phi + self.delta * (2 * u - 1), self.phi)
            dS = self.theory.local_action(prop) - self.theory.local_action(self.phi)
            r = self.noise.rand(self.theory.lattice_shape, self.dtype)
            accept = mask & (r < torch.exp(-dS))
            self.phi = torch.where(accept, prop, self.phi)
            acc += int(accept.sum().item())
        self.n_accepted_sites += acc
        return acc / self.phi.numel()

    def sweep(self) -> float:
        """One counted sweep; returns its site acceptance rate."""
        rate = self.update()
        self.n_updates += 1
        return rate

    @property
    def n_sweeps(self) -> int:
        return self.n_updates

    @property
    def acceptance_rate(self) -> float:
        return self.n_accepted_sites / max(self.n_sweeps * self.phi.numel(), 1)

    def _extra_state(self) -> dict:
        return {"n_accepted_sites": self.n_accepted_sites}

    def _load_extra_state(self, state: dict) -> None:
        self.n_accepted_sites = state["n_accepted_sites"]
