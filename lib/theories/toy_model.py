"""The 0+0-dimensional toy model of the paper (eq. 3.19): one degree of freedom.

Configurations are tensors of shape ``(batch, 1)`` — a lattice with a single site — so that
every sampler in :mod:`lib` runs on it unchanged. Exact results come from numerical
quadrature of e^{−S}.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
import torch
from scipy import integrate

from ..runtime import check_batch


@dataclass(frozen=True)
class ToyModel:
    r"""S(φ) = μ²/2 φ² + g/4! φ⁴, drift f(φ) = −∂S/∂φ = −μ²φ − g/3! φ³ (paper eq. 3.19).

    μ² > 0 gives the single well (paper: μ² = 1, g = 0.4), μ² < 0 the double well
    (μ² = −1, g = 0.4). The density e^{−S} is normalisable for g > 0, or g = 0 and μ² > 0.
    """

    mu2: float = 1.0
    g: float = 0.4

    def __post_init__(self):
        if not (math.isfinite(self.mu2) and math.isfinite(self.g)):
            raise ValueError("mu2 and g must be finite")
        if self.g < 0 or (self.g == 0 and self.mu2 <= 0):
            raise ValueError(
                f"e^-S is not normalisable for mu2={self.mu2}, g={self.g}: need g > 0, or g = 0 and mu2 > 0"
            )

    name = "toy"
    lattice_shape = (1,)
    volume = 1

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}

    # ------------------------------------------------------------------ action and drift
    def action(self, phi: torch.Tensor) -> torch.Tensor:
        """S(φ) of eq. (3.19) per configuration, shape ``(batch,)``."""
        check_batch(phi, self.lattice_shape)
        return self.local_action(phi)[:, 0]

    def local_action(self, phi: torch.Tensor) -> torch.Tensor:
        """S evaluated site by site (there is one site)."""
        return self._s(phi)

    def drift(self, phi: torch.Tensor) -> torch.Tensor:
        """f(φ) = −μ²φ − g/3! φ³ (eq. 3.19)."""
        check_batch(phi, self.lattice_shape)
        return -self.mu2 * phi - self.g / 6.0 * phi**3

    def checkerboard_masks(self, device=None) -> list[torch.Tensor]:
        return [torch.ones(1, dtype=torch.bool, device=device)]

    # ------------------------------------------------------------------ exact results
    def _s(self, x):
        """μ²/2 x² + g/4! x⁴ for a float, an array or a tensor: the one place the action is written."""
        x2 = x * x
        return 0.5 * self.mu2 * x2 + self.g / 24.0 * x2 * x2

    @cached_property
    def _shift(self) -> float:
        """min S, subtracted before exponentiating for numerical safety."""
        if self.mu2 >= 0:
            return 0.0
        x0 = math.sqrt(-6 * self.mu2 / self.g)
        return float(self._s(x0))

    @cached_property
    def _cutoff(self) -> float:
        """|φ| beyond which e^{−S} < 1e-300 relative to its maximum."""
        x = 1.0
        while self._s(x) - self._shift < 700:
            x *= 1.5
        return x

    @cached_property
    def log_partition_function(self) -> float:
        """log Z = log ∫ dφ e^{−S(φ)} by adaptive quadrature."""
        c = self._cutoff
        z, _ = integrate.quad(lambda x: math.exp(-(self._s(x) - self._shift)), -c, c, limit=200, epsabs=0, epsrel=1e-12)
        return math.log(z) - self._shift

    def density(self, x) -> np.ndarray:
        """Normalised exact density p(φ) = e^{−S(φ)}/Z (numpy in, numpy out)."""
        x = np.asarray(x, dtype=float)
        return np.exp(-self._s(x) - self.log_partition_function)

    def moment(self, n: int) -> float:
        """Exact ⟨φⁿ⟩ by quadrature."""
        if n % 2 == 1:
            return 0.0
        c = self._cutoff
        val, _ = integrate.quad(
            lambda x: x**n * math.exp(-self._s(x) - self.log_partition_function), -c, c, limit=200, epsabs=0, epsrel=1e-12
        )
        return val

    def cumulants(self, n_max: int = 8) -> dict[int, float]:
        """Exact cumulants κ_1 … κ_{n_max} from the quadrature moments."""
        from ..analysis.observables import cumulants_from_moments

        m = [1.0] + [self.moment(k) for k in range(1, n_max + 1)]
        return cumulants_from_moments(np.array(m))

    def diffused_score(self, x: torch.Tensor, sigma: float, n_grid: int = 4001) -> torch.Tensor:
        r"""Exact score ∂_x log p_σ(x) of the density smeared by a Gaussian of width σ,

        .. math:: p_σ(x) = ∫ dy\, p(y)\, \mathcal N(x; y, σ^2), \qquad
                  ∂_x \log p_σ(x) = \frac{⟨y⟩_{x} - x}{σ^2},

        computed by quadrature on a grid. This is the drift that a diffusion model trained on the
        toy model should learn at the time where the perturbation kernel has width σ (paper
        eqs. 3.6, 3.8). For σ = 0 it returns the drift of eq. (3.19).
        """
        if sigma == 0:
            return self.drift(x.reshape(-1, 1)).reshape(x.shape)
        c = self._cutoff
        y = torch.linspace(-c, c, n_grid, dtype=torch.float64, device=x.device)
        logp = -self._s(y)
        xf = x.reshape(-1, 1).to(torch.float64)
        logw = logp[None, :] - (xf - y[None, :]) ** 2 / (2 * sigma**2)
        w = torch.softmax(logw, dim=1)
        mean_y = (w * y[None, :]).sum(1, keepdim=True)
        return ((mean_y - xf) / sigma**2).reshape(x.shape).to(x.dtype)

    def sample_exact(self, n: int, seed: int, n_grid: int = 200001) -> torch.Tensor:
        """n exact independent samples (shape ``(n, 1)``, float64) by inverse-CDF on a fine grid."""
        c = self._cutoff
        x = np.linspace(-c, c, n_grid)
        p = self.density(x)
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(x))])
        cdf /= cdf[-1]
        u = np.random.default_rng(seed).random(n)
        return torch.from_numpy(np.interp(u, cdf, x)).reshape(n, 1)
