r"""Gaussian mixtures: targets whose diffused density and score are known exactly.

A mixture p₀(x) = Σ_k w_k N(x; m_k, s_k² 1) in D dimensions stays a mixture under the linear
SDEs of :mod:`lib.diffusion.sde`:

.. math:: p_t(x) = Σ_k w_k\, N\big(x;\, f(t,0)\, m_k,\ v_k(t) 1\big),\qquad v_k(t) = f(t,0)^2 s_k^2 + Ξ(t),

.. math:: ∇_x \log p_t(x) = -\sum_k r_k(x, t)\, \frac{x - f(t,0) m_k}{v_k(t)},\qquad
          r_k = \frac{w_k N_k(x)}{\sum_j w_j N_j(x)}.

For the talk's two-peak target (m = ±μ, equal widths) this reduces to
−x/v + (fμ/v) tanh(x fμ/v).
"""
from __future__ import annotations

import math

import numpy as np
import torch


class GaussianMixture:
    """Isotropic Gaussian mixture in ``dim`` dimensions.

    Parameters
    ----------
    means : array (K, D) or (K,) for D = 1
    stds : array (K,) or a scalar — the width of each component
    weights : array (K,), non-negative (normalised here); default uniform
    """

    def __init__(self, means, stds, weights=None):
        m = torch.as_tensor(np.asarray(means, dtype=float), dtype=torch.float64)
        if m.ndim == 1:
            m = m[:, None]
        if m.ndim != 2 or m.shape[0] < 1:
            raise ValueError(f"means must have shape (K, D), got {tuple(m.shape)}")
        k = m.shape[0]
        s = torch.as_tensor(np.broadcast_to(np.asarray(stds, dtype=float), (k,)).copy(), dtype=torch.float64)
        if torch.any(s <= 0):
            raise ValueError("component widths must be positive")
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(
            np.asarray(weights, dtype=float), dtype=torch.float64)
        if w.shape != (k,) or torch.any(w < 0) or w.sum() <= 0:
            raise ValueError("weights must be K non-negative numbers with a positive sum")
        self.means, self.stds, self.weights = m, s, w / w.sum()

    @classmethod
    def two_peaks(cls, mu: float = 1.0, sigma0: float = 0.25):
        """½[N(μ, σ₀²) + N(−μ, σ₀²)] in one dimension (the talk's target)."""
        return cls([[mu], [-mu]], [sigma0, sigma0])

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def to_dict(self) -> dict:
        return {"name": "gmm", "means": self.means.tolist(), "stds": self.stds.tolist(),
                "weights": self.weights.tolist()}

    # ------------------------------------------------------------------ diffused mixture
    def _params(self, sde, t, like: torch.Tensor):
        """Per-sample component means (B, K, D) and variances (B, K) at times t (B,) or scalar."""
        t = torch.as_tensor(t, dtype=torch.float64, device=like.device)
        t = t.expand(like.shape[0]) if t.ndim == 0 else t
        f = sde.f(t).to(like.device)  # (B,)
        xi = sde.Xi(t).to(like.device)
        means = f[:, None, None] * self.means.to(like.device)[None]
        var = f[:, None] ** 2 * self.stds.to(like.device)[None] ** 2 + xi[:, None]
        return means, var

    def _check(self, x):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected points of shape (batch, {self.dim}), got {tuple(x.shape)}")

    def _log_components(self, x, sde, t):
        means, var = self._params(sde, t, x)
        d2 = ((x.double()[:, None, :] - means) ** 2).sum(-1)
        return (torch.log(self.weights.to(x.device))[None] - 0.5 * d2 / var
                - 0.5 * self.dim * torch.log(2 * math.pi * var)), means, var

    def log_prob(self, x: torch.Tensor, sde=None, t=0.0) -> torch.Tensor:
        """log p_t(x) (t = 0, or ``sde`` None: the target itself); x of shape (batch, D)."""
        self._check(x)
        sde = sde or _Identity()
        logc, _, _ = self._log_components(x, sde, t)
        return torch.logsumexp(logc, dim=1).to(x.dtype)

    def score(self, x: torch.Tensor, sde=None, t=0.0) -> torch.Tensor:
        """Exact ∇ log p_t(x) under ``sde`` at time t (scalar or per sample); x of shape (batch, D)."""
        self._check(x)
        sde = sde or _Identity()
        logc, means, var = self._log_components(x, sde, t)
        r = torch.softmax(logc, dim=1)  # responsibilities (B, K)
        s = -(r[:, :, None] * (x.double()[:, None, :] - means) / var[:, :, None]).sum(1)
        return s.to(x.dtype)

    def score_fn(self, sde):
        """A callable ``(x, t) -> score`` for the samplers, with x of shape (batch, D)."""
        return lambda x, t: self.score(x, sde, t)

    def sample(self, n: int, generator=None, device=None, dtype=torch.float64) -> torch.Tensor:
        """n independent draws from the target, shape (n, D)."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, self.dim), generator=generator, dtype=torch.float64)
        out = self.means[idx] + self.stds[idx, None] * z
        return out.to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ exact moments (1D)
    def moments(self, n_max: int = 8, sde=None, t=0.0) -> np.ndarray:
        """Raw moments E[xⁿ], n = 0…n_max, of the first coordinate at time t (exact)."""
        sde = sde or _Identity()
        t = torch.as_tensor(t, dtype=torch.float64)
        f, xi = float(sde.f(t)), float(sde.Xi(t))
        out = np.zeros(n_max + 1)
        for w, m, s in zip(self.weights.tolist(), self.means[:, 0].tolist(), self.stds.tolist()):
            mean, var = f * m, f * f * s * s + xi
            # E[(mean + sqrt(var) z)^n] = Σ_j C(n, j) mean^{n-j} var^{j/2} E[z^j], E[z^j] = (j-1)!! for even j
            for n in range(n_max + 1):
                out[n] += w * sum(math.comb(n, j) * mean ** (n - j) * var ** (j // 2) * _double_factorial(j - 1)
                                  for j in range(0, n + 1, 2))
        return out

    def cumulants(self, n_max: int = 8, sde=None, t=0.0) -> dict[int, float]:
        """Exact cumulants κ₁…κ_{n_max} of the first coordinate at time t."""
        from ..analysis.observables import cumulants_from_moments

        return cumulants_from_moments(self.moments(n_max, sde, t))


def _double_factorial(n: int) -> int:
    return 1 if n <= 0 else n * _double_factorial(n - 2)


class _Identity:
    """The trivial 'SDE' at t = 0: f = 1, Ξ = 0."""

    def f(self, t):
        return torch.ones_like(torch.as_tensor(t, dtype=torch.float64))

    def Xi(self, t):
        return torch.zeros_like(torch.as_tensor(t, dtype=torch.float64))
