"""Lattice φ⁴ theory in d Euclidean dimensions (paper Sec. 4, eqs. 4.2–4.4).

A configuration batch is a tensor of shape ``(batch, L, ..., L)`` (d lattice axes) with
periodic boundary conditions. Every method works on any device and dtype.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..runtime import check_batch


@dataclass(frozen=True)
class Phi4:
    r"""Lattice φ⁴ action in the hopping-parameter form (paper eq. 4.2)

    .. math::
        S_E[φ] = \sum_x \Big[-2κ \sum_{μ=1}^d φ(x)φ(x+\hat μ) + (1-2λ)φ(x)^2 + λφ(x)^4\Big]

    Parameters
    ----------
    L : int
        Linear lattice size (L ≥ 2), periodic boundaries in every direction.
    kappa : float
        Hopping parameter κ ≥ 0.
    lam : float
        Quartic coupling λ ≥ 0. For λ = 0 (free field) stability needs κ < 1/(2d).
    d : int
        Number of Euclidean dimensions (default 2).
    """

    L: int
    kappa: float
    lam: float
    d: int = 2

    def __post_init__(self):
        if not isinstance(self.L, int) or self.L < 2:
            raise ValueError(f"lattice size L must be an integer >= 2, got {self.L!r}")
        if not isinstance(self.d, int) or self.d < 1:
            raise ValueError(f"dimension d must be a positive integer, got {self.d!r}")
        if not math.isfinite(self.kappa) or self.kappa < 0:
            raise ValueError(f"hopping parameter kappa must be >= 0, got {self.kappa!r}")
        if not math.isfinite(self.lam) or self.lam < 0:
            raise ValueError(f"coupling lam must be >= 0, got {self.lam!r}")
        if self.lam == 0 and self.kappa >= self.kappa_free_bound:
            raise ValueError(
                f"free field (lam=0) is unstable for kappa >= 1/(2d) = {self.kappa_free_bound:g}; "
                f"got kappa={self.kappa!r}"
            )

    # ------------------------------------------------------------------ metadata
    @property
    def name(self) -> str:
        return "phi4"

    @property
    def lattice_shape(self) -> tuple[int, ...]:
        return (self.L,) * self.d

    @property
    def volume(self) -> int:
        return self.L**self.d

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}

    # ------------------------------------------------------------------ relations
    @property
    def kappa_free_bound(self) -> float:
        """Stability bound κ < 1/(2d) of the free field (λ = 0)."""
        return 1.0 / (2 * self.d)

    @property
    def bare_mass_squared(self) -> float:
        """(a m₀)² = (1 − 2λ)/κ − 2d (paper eq. 4.3)."""
        if self.kappa == 0:
            return math.inf
        return (1 - 2 * self.lam) / self.kappa - 2 * self.d

    @staticmethod
    def kappa_classical(lam: float, d: int = 2) -> float:
        """Classical critical hopping parameter κ_c = (1 − 2λ)/(2d) (paper eq. 4.4)."""
        return (1 - 2 * lam) / (2 * d)

    def classical_vacuum(self) -> float:
        r"""|φ₀| ≥ 0 minimising the action per site of a constant field (eq. 4.2 with φ(x) = φ₀),

        .. math:: s(φ₀) = (1 − 2λ − 2dκ) φ₀² + λ φ₀⁴, \qquad φ₀² = \frac{2dκ − 1 + 2λ}{2λ}

        when 2dκ > 1 − 2λ (κ above the classical κ_c of eq. 4.4), else 0. Used for ordered starts.
        """
        a = 2 * self.d * self.kappa - 1 + 2 * self.lam
        if a <= 0:
            return 0.0
        if self.lam == 0:
            raise ValueError("no classical vacuum for lam = 0 above the free-field bound")
        return math.sqrt(a / (2 * self.lam))

    # ------------------------------------------------------------------ action
    def _dims(self, phi: torch.Tensor) -> tuple[int, ...]:
        return tuple(range(1, self.d + 1))

    def neighbour_sum(self, phi: torch.Tensor) -> torch.Tensor:
        """Σ_μ [φ(x+μ̂) + φ(x−μ̂)] with periodic boundaries."""
        out = torch.roll(phi, 1, 1)
        out += torch.roll(phi, -1, 1)
        for mu in range(2, self.d + 1):
            out += torch.roll(phi, 1, mu)
            out += torch.roll(phi, -1, mu)
        return out

    def action(self, phi: torch.Tensor) -> torch.Tensor:
        """S_E[φ] of eq. (4.2) for each configuration; returns shape ``(batch,)``."""
        check_batch(phi, self.lattice_shape)
        phi2 = phi * phi
        hop = torch.zeros_like(phi)
        for mu in range(1, self.d + 1):
            hop += torch.roll(phi, -1, mu)
        dens = -2 * self.kappa * phi * hop + (1 - 2 * self.lam) * phi2 + self.lam * phi2 * phi2
        return dens.sum(dim=self._dims(phi))

    def drift(self, phi: torch.Tensor) -> torch.Tensor:
        r"""Langevin drift K = −∂S/∂φ(x) (paper eq. 2.5) for eq. (4.2):

        .. math:: K(x) = 2κ \sum_{\pm μ} φ(x\pm\hat μ) - 2(1-2λ)φ(x) - 4λφ(x)^3
        """
        check_batch(phi, self.lattice_shape)
        # written with in-place updates of temporaries: this is the HMC inner loop
        pot = phi * phi
        pot.mul_(4 * self.lam).add_(2 * (1 - 2 * self.lam)).mul_(phi)
        return self.neighbour_sum(phi).mul_(2 * self.kappa).sub_(pot)

    def local_action(self, phi: torch.Tensor) -> torch.Tensor:
        """Site-resolved part of S that depends on φ(x) with its neighbours held fixed,

        s_x = −2κ φ(x) Σ_{±μ} φ(x±μ̂) + (1−2λ)φ(x)² + λφ(x)⁴,

        so that changing φ at a set of mutually non-neighbouring sites changes S by the sum of
        the differences of s_x over those sites (used by checkerboard Metropolis).
        """
        phi2 = phi * phi
        return -2 * self.kappa * phi * self.neighbour_sum(phi) + (1 - 2 * self.lam) * phi2 + self.lam * phi2 * phi2

    def checkerboard_masks(self, device=None) -> list[torch.Tensor]:
        """Boolean masks of the even and odd sublattices (needs even L for periodic boundaries)."""
        if self.L % 2:
            raise ValueError(f"checkerboard updates need an even lattice size, got L={self.L}")
        idx = torch.meshgrid(*[torch.arange(self.L, device=device)] * self.d, indexing="ij")
        parity = sum(idx) % 2
        return [parity == 0, parity == 1]

    # ------------------------------------------------------------------ free field
    def _require_free(self):
        if self.lam != 0:
            raise ValueError("exact results are only available for the free field (lam=0)")

    def free_momentum_propagator(self, dtype=torch.float64, device=None) -> torch.Tensor:
        r"""Exact G̃(p) = 1 / (2 − 4κ Σ_μ cos p_μ) of the free field (λ = 0), p_μ = 2πn_μ/L.

        Follows from S = ½ φᵀAφ with A = 2·1 − 2κ Σ_μ (T_μ + T_μ⁻¹).
        """
        self._require_free()
        p = 2 * math.pi * torch.arange(self.L, dtype=dtype, device=device) / self.L
        grids = torch.meshgrid(*[p] * self.d, indexing="ij")
        return 1.0 / (2 - 4 * self.kappa * sum(torch.cos(g) for g in grids))

    def free_propagator(self, dtype=torch.float64, device=None) -> torch.Tensor:
        """Exact free-field two-point function G(x) = ⟨φ(0)φ(x)⟩ on the finite periodic lattice."""
        gp = self.free_momentum_propagator(dtype=dtype, device=device)
        return torch.fft.ifftn(gp).real

    def free_susceptibility(self) -> float:
        """Exact χ₂ = V(⟨M²⟩ − ⟨M⟩²) = G̃(0) = 1/(2 − 4dκ) of the free field (eq. 4.6 at λ = 0)."""
        self._require_free()
        return 1.0 / (2 - 4 * self.d * self.kappa)

    def free_site_variance(self) -> float:
        """Exact ⟨φ(x)²⟩ = G(0) of the free field on the finite lattice."""
        return float(self.free_propagator()[(0,) * self.d])

    def free_field(self):
        """The free field (λ = 0) as a :class:`lib.theories.GaussianField` with spectrum G̃(p): its
        exact samples, diffused scores and densities, and the exact Euler–Maruyama distribution."""
        from .gaussian_field import GaussianField

        return GaussianField(self.free_momentum_propagator())
