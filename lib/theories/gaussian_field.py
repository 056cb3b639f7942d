r"""Translation-invariant Gaussian fields on a periodic lattice: p(φ) = N(0, C) with C diagonal in
momentum space, c(p) its per-site mode variance. Under the linear SDEs of :mod:`lib.diffusion.sde`
the field stays Gaussian, c_t(p) = f(t,0)² c(p) + Ξ(t), so the diffused score is exact:

.. math:: ∇ \log p_t(x) = -\mathcal F^{-1}\Big[\frac{\mathcal F x}{c_t(p)}\Big].

The free field is the case c = G̃ (:meth:`lib.Phi4.free_momentum_propagator`); fitted to an ensemble
(:meth:`GaussianField.fit`, the measured power spectrum) it is the Gaussian baseline a score
network must beat: what its loss adds to the Gaussian's is what it has learned beyond two-point
correlations.
"""
from __future__ import annotations

import math

import numpy as np
import torch


class GaussianField:
    """Zero-mean Gaussian field with per-site mode variances ``spectrum`` (shape (L,)*d, > 0)."""

    def __init__(self, spectrum):
        c = torch.as_tensor(np.asarray(spectrum, dtype=float), dtype=torch.float64)
        if c.ndim < 1 or not bool(torch.all(c > 0)) or not bool(torch.isfinite(c).all()):
            raise ValueError("the spectrum must be a positive finite array of shape (L,)*d")
        self.spectrum = c
        self.lattice_shape = tuple(c.shape)
        self.dims = tuple(range(1, c.ndim + 1))

    @classmethod
    def fit(cls, configs, floor: float = 1e-12):
        """The Gaussian with the measured power spectrum ⟨|φ̃(p)|²⟩/V of ``configs`` (n, *lattice);
        the mean is taken as zero (symmetric ensembles; for a broken phase the zero mode's
        variance includes ⟨M⟩²)."""
        x = torch.as_tensor(np.asarray(configs) if not isinstance(configs, torch.Tensor) else configs).double()
        dims = tuple(range(1, x.ndim))
        power = (torch.fft.fftn(x, dim=dims).abs() ** 2).mean(0) / math.prod(x.shape[1:])
        return cls(power.clamp_min(floor))

    def variance(self, sde=None, t=0.0) -> torch.Tensor:
        """c_t(p) = f² c(p) + Ξ(t) (per site), shape (L,)*d."""
        if sde is None:
            return self.spectrum
        tt = torch.as_tensor(t, dtype=torch.float64)
        return float(sde.f(tt)) ** 2 * self.spectrum + float(sde.Xi(tt))

    def _check(self, x):
        if tuple(x.shape[1:]) != self.lattice_shape:
            raise ValueError(f"expected fields of shape (batch, {self.lattice_shape}), got {tuple(x.shape)}")

    def score(self, x: torch.Tensor, sde=None, t=0.0) -> torch.Tensor:
        """The exact score of the field diffused to time t (a number)."""
        self._check(x)
        c = self.variance(sde, t).to(x.device)
        xf = torch.fft.fftn(x.double(), dim=self.dims)
        return -torch.fft.ifftn(xf / c, dim=self.dims).real.to(x.dtype)

    def score_fn(self, sde):
        """``(x, t) -> score`` for samplers and losses; t of shape (batch,) may differ per sample."""
        def fn(x, t):
            t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
            if t.numel() == 1 or bool((t == t[0]).all()):
                return self.score(x, sde, float(t[0]))
            return torch.cat([self.score(x[i:i + 1], sde, float(t[i])) for i in range(x.shape[0])])
        return fn

    def log_prob(self, x: torch.Tensor, sde=None, t=0.0) -> torch.Tensor:
        """log p_t(x) in nats, shape (batch,)."""
        self._check(x)
        c = self.variance(sde, t).to(x.device)
        xf = torch.fft.fftn(x.double(), dim=self.dims)
        v = math.prod(self.lattice_shape)
        return -0.5 * (xf.abs() ** 2 / c).sum(dim=self.dims) / v - 0.5 * torch.log(2 * math.pi * c).sum()

    def sample(self, n: int, seed: int, dtype=torch.float64, device=None) -> torch.Tensor:
        """n exact samples, drawn mode by mode."""
        from ..rng import generator

        z = torch.randn((n, *self.lattice_shape), generator=generator(seed, device), dtype=torch.float64,
                        device=device)
        c = self.spectrum.to(z.device)
        return torch.fft.ifftn(torch.fft.fftn(z, dim=self.dims) * torch.sqrt(c), dim=self.dims).real.to(dtype)
