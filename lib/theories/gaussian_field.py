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

    def ode_divergence(self, sde):
        r"""``(x, t) -> ∇·f̃``: the divergence of the probability-flow drift f̃ = f − ½g² ∇log p_t
        (paper eq. 3.14) for this field, which does not depend on x:

        .. math:: ∇·\tilde f = -\tfrac12 k(t)\, V + \tfrac12 g(t)^2 \sum_p \frac{1}{c_t(p)}

        (k = 0 for VE), the trace of a diagonal matrix in momentum space. Used to check the ODE
        likelihood without the cost of an exact trace (V backward passes)."""
        v = math.prod(self.lattice_shape)

        def fn(x, t):
            tt = torch.as_tensor(t, dtype=torch.float64)
            g2, k = float(sde.g(tt)) ** 2, float(sde.k(tt))
            return -0.5 * k * v + 0.5 * g2 * float((1.0 / self.variance(sde, t)).sum())

        return fn

    def log_prob(self, x: torch.Tensor, sde=None, t=0.0) -> torch.Tensor:
        """log p_t(x) in nats, shape (batch,)."""
        self._check(x)
        c = self.variance(sde, t).to(x.device)
        xf = torch.fft.fftn(x.double(), dim=self.dims)
        v = math.prod(self.lattice_shape)
        return -0.5 * (xf.abs() ** 2 / c).sum(dim=self.dims) / v - 0.5 * torch.log(2 * math.pi * c).sum()

    def em_variance(self, sde, n_steps: int, eps: float, start_var: torch.Tensor | None = None,
                    denoise_last: bool = True) -> torch.Tensor:
        r"""Exact per-mode output variance (per site, shape (L,)*d) of the Euler–Maruyama sampler of
        :func:`lib.diffusion.samplers.euler_maruyama` driven by this field's exact score (VE or VP):
        each mode is a linear recursion,

        .. math:: x' = \big(1 + Δt\,[\tfrac12 k(t) - g^2(t)/c_t(p)]\big) x + g\sqrt{Δt}\,z,

        so var' = (1 + Δt[k/2 − g²/c_t])² var + g²Δt (no noise in the last step with ``denoise_last``).
        ``start_var`` is the variance of x_T per mode (default: the prior's Ξ(T)). Compare with
        :meth:`variance` at t = ε to see the sampler's discretisation error exactly."""
        grid = torch.linspace(sde.T, eps, n_steps, dtype=torch.float64)
        dt = float(grid[0] - grid[1])
        var = (torch.full_like(self.spectrum, float(sde.Xi(torch.tensor(sde.T, dtype=torch.float64))))
               if start_var is None else start_var.clone())
        for i in range(n_steps - 1):
            t = grid[i]
            g2, k = float(sde.g(t)) ** 2, float(sde.k(t))
            last = i == n_steps - 2 and denoise_last
            var = (1 + dt * (0.5 * k - g2 / self.variance(sde, t))) ** 2 * var + (0.0 if last else g2 * dt)
        return var

    def em_ode_mismatch(self, sde, n_steps: int, eps: float) -> dict:
        r"""How far Euler–Maruyama samples are from the density the probability-flow ODE assigns them,
        with this field's exact score, both started from the prior N(0, Ξ(T)) (the paper's recipe for
        DM-MC: EM proposals weighted with the ODE's log q). Per mode both are Gaussian, with
        variances a(p) (:meth:`em_variance`) and b(p) = Ξ(T) c_ε(p)/c_T(p) (the ODE maps the prior
        mode by mode by √(c_ε/c_T)), so per configuration, in nats,

        .. math:: \mathrm{KL}(p_{EM}\,\|\,q_{ODE}) = \tfrac12\sum_p \Big(\frac{a}{b} - 1 - \ln\frac ab\Big),
                  \qquad \mathrm{std}\,\ln\frac{p_{EM}}{q_{ODE}} = \Big[\tfrac12\sum_p\Big(\frac ab - 1\Big)^2\Big]^{1/2}

        (the sums run over all V momenta, the eigenvalues of the real-space covariances). Also
        returned: the KL of the EM samples from the true p_ε, and that of the ODE density from p_ε."""
        xi_T = float(sde.Xi(torch.tensor(sde.T, dtype=torch.float64)))
        c_eps = self.variance(sde, eps)
        a = self.em_variance(sde, n_steps, eps)
        b = xi_T * c_eps / self.variance(sde, sde.T)

        def kl(p, q):
            r = p / q
            return float(0.5 * (r - 1 - torch.log(r)).sum())

        return {"kl_em_ode": kl(a, b), "std_log_ratio": float(torch.sqrt(0.5 * ((a / b - 1) ** 2).sum())),
                "kl_em_target": kl(a, c_eps), "kl_ode_target": kl(b, c_eps)}

    def sample(self, n: int, seed: int, dtype=torch.float64, device=None) -> torch.Tensor:
        """n exact samples, drawn mode by mode."""
        from ..rng import generator

        z = torch.randn((n, *self.lattice_shape), generator=generator(seed, device), dtype=torch.float64,
                        device=device)
        c = self.spectrum.to(z.device)
        return torch.fft.ifftn(torch.fft.fftn(z, dim=self.dims) * torch.sqrt(c), dim=self.dims).real.to(dtype)
