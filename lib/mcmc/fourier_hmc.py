r"""Fourier-accelerated HMC: Hybrid Monte Carlo with a kinetic term that is diagonal in momentum
space, one mass per lattice momentum, taken from the free lattice propagator.

With H = ½ πᵀ M⁻¹ π + S[φ] and M = F⁻¹ diag(m(p)) F (F the discrete Fourier transform on the
lattice), a free mode of momentum p oscillates with frequency ω(p)² = A(p)/m(p), where
A(p) = 2(1 − 2λ) − 4κ Σ_μ cos p_μ = 2κ (p̂² + m₀²) is the quadratic part of the φ⁴ action in momentum
space (p̂² = Σ_μ 4 sin²(p_μ/2), m₀² the bare mass of eq. 4.3). Plain HMC (m = 1) has ω(p)² = A(p):
near the critical point A(0) → 0 and the long-wavelength modes, which carry M and χ₂, move the
slowest. Choosing

.. math:: m(p) = 2κ\,(\hat p^2 + μ^2)

with a tunable mass μ makes every mode's frequency about the same (exactly 1 for the free field with
μ = m₀), so one trajectory length moves all of them and the critical slowing down of the leapfrog
dynamics is removed for the Gaussian part of the action (Batrouni et al. 1985; Duane, Kennedy,
Pendleton, Roweth 1987).

The update stays exact for any positive m(p): the leapfrog with a constant symmetric positive M is
reversible and volume preserving, and the Metropolis test uses the full H. Momenta are drawn as
π = F⁻¹ diag(√m) F ξ with ξ white noise (real, covariance M), the velocity is M⁻¹π.
"""
from __future__ import annotations

import math

import torch

from ..settings import positive_float
from .hmc import HMC, leapfrog


def fourier_masses(theory, mass: float, dtype=torch.float64, device=None) -> torch.Tensor:
    r"""m(p) = 2κ (p̂² + μ²) on the lattice's momenta p_μ = 2πn_μ/L (shape ``theory.lattice_shape``),
    p̂² = Σ_μ 4 sin²(p_μ/2): the inverse free propagator of mass μ = ``mass`` in the hopping
    normalisation of the φ⁴ action (at κ = 0 the normalisation 2κ is replaced by 1)."""
    mass = positive_float("mass", mass)
    p = 2 * math.pi * torch.arange(theory.L, dtype=dtype, device=device) / theory.L
    grids = torch.meshgrid(*[p] * theory.d, indexing="ij")
    p_hat2 = sum(4 * torch.sin(g / 2) ** 2 for g in grids)
    scale = 2 * theory.kappa if theory.kappa > 0 else 1.0
    return scale * (p_hat2 + mass**2)


class FourierHMC(HMC):
    """HMC with the Fourier-accelerated kinetic term of :func:`fourier_masses` (see the module).

    Parameters are those of :class:`lib.mcmc.HMC` plus ``mass`` (μ; for the free field the bare mass
    m₀ = √(m₀²) makes the dynamics exactly harmonic with unit frequency, so a trajectory of length
    π/2 decorrelates every mode; near a critical point a small positive μ). The step size and the
    trajectory length keep their meaning (the mass matrix sets the frequencies, ~1 for every mode).
    """

    sampler = "fa-hmc"

    def __init__(self, theory, n_chains: int = 1, eps: float = 0.1, n_steps: int = 10, mass: float = 1.0,
                 seed: int = 0, start="hot", device=None, dtype=torch.float64, first_chain: int = 0,
                 per_chain_streams: bool | None = None):
        if not hasattr(theory, "kappa") or not hasattr(theory, "d"):
            raise ValueError(f"Fourier acceleration needs a lattice theory with kappa and d, not {type(theory).__name__}")
        self.mass = positive_float("mass", mass)
        super().__init__(theory, n_chains, eps=eps, n_steps=n_steps, seed=seed, start=start, device=device,
                         dtype=dtype, first_chain=first_chain, per_chain_streams=per_chain_streams)
        self.masses = fourier_masses(theory, self.mass, dtype=dtype, device=self.device)
        self._dims = tuple(range(1, theory.d + 1))

    def settings(self) -> dict:
        return {**super().settings(), "mass": self.mass}

    def _multiply(self, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """F⁻¹ diag(factor) F x on the lattice axes (factor even in p, so the result is real)."""
        return torch.fft.ifftn(torch.fft.fftn(x, dim=self._dims) * factor, dim=self._dims).real

    def _momenta(self, xi: torch.Tensor) -> torch.Tensor:
        return self._multiply(xi, self.masses.sqrt())

    def velocity(self, p: torch.Tensor) -> torch.Tensor:
        """M⁻¹π."""
        return self._multiply(p, 1.0 / self.masses)

    def kinetic(self, p: torch.Tensor) -> torch.Tensor:
        """½ πᵀ M⁻¹ π per chain."""
        return 0.5 * (p * self.velocity(p)).sum(dim=self._dims)

    def _hamiltonian(self, phi: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return self.kinetic(p) + self.theory.action(phi)

    def _integrate(self, phi: torch.Tensor, p: torch.Tensor):
        return leapfrog(self.theory, phi, p, self.eps, self.n_steps, velocity=self.velocity)


__all__ = ["FourierHMC", "fourier_masses"]
