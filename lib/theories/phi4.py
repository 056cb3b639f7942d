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

    # ------------------------------------------------------------------ free field under diffusion
    def free_mode_variance(self, sde=None, t=0.0, dtype=torch.float64, device=None) -> torch.Tensor:
        r"""Variance of every Fourier mode of the free field diffused to time t,

        .. math:: v_t(p) = f(t,0)^2\, V\, G̃(p) + V\,Ξ(t),

        for the unnormalised transform φ̃(p) = Σ_x e^{−ipx} φ(x) (so ⟨|φ̃(p)|²⟩ = V v/V). At t = 0 (or
        without an SDE) this is V·G̃(p). Shape (L,)*d."""
        g = self.free_momentum_propagator(dtype=dtype, device=device)
        if sde is None:
            return self.volume * g
        tt = torch.as_tensor(t, dtype=torch.float64)
        f2, xi = float(sde.f(tt)) ** 2, float(sde.Xi(tt))
        return self.volume * (f2 * g + xi)

    def free_diffused_score(self, x: torch.Tensor, sde, t) -> torch.Tensor:
        r"""Exact score ∇ log p_t(x) of the free field (λ = 0) diffused by ``sde`` to time t (a
        number): p_t = N(0, f² C + Ξ 1) with C = A⁻¹ diagonal in momentum space, so

        .. math:: s_t(x) = -\mathcal F^{-1}\Big[\frac{\mathcal F x}{f^2 G̃(p) + Ξ(t)}\Big].

        At t = 0 this is the drift −Aφ of eq. (4.2) with λ = 0."""
        check_batch(x, self.lattice_shape)
        dims = tuple(range(1, self.d + 1))
        g = self.free_momentum_propagator(dtype=torch.float64, device=x.device)
        tt = torch.as_tensor(t, dtype=torch.float64)
        if tt.ndim:
            raise ValueError("free_diffused_score takes one time for the whole batch")
        denom = float(sde.f(tt)) ** 2 * g + float(sde.Xi(tt))
        return -torch.fft.ifftn(torch.fft.fftn(x.double(), dim=dims) / denom, dim=dims).real.to(x.dtype)

    def free_score_fn(self, sde):
        """``(x, t) -> score`` for the samplers (t of shape (batch,), all equal, as the samplers pass it)."""
        return lambda x, t: self.free_diffused_score(x, sde, float(torch.as_tensor(t).reshape(-1)[0]))

    def free_diffused_log_prob(self, x: torch.Tensor, sde=None, t=0.0) -> torch.Tensor:
        r"""Exact log p_t(x) of the diffused free field (normalised, in nats), shape (batch,):

        .. math:: \log p_t(x) = -\tfrac12 \sum_p \frac{|φ̃(p)|^2}{V v_t(p)/V}\cdot\frac1V
                  - \tfrac12\sum_p \log\big(2π\, v_t(p)/V\big)."""
        check_batch(x, self.lattice_shape)
        dims = tuple(range(1, self.d + 1))
        var = self.free_mode_variance(sde, t, device=x.device) / self.volume  # per-mode variance of the field
        xf = torch.fft.fftn(x.double(), dim=dims)
        quad = (xf.abs() ** 2 / var).sum(dim=dims) / self.volume
        return -0.5 * quad - 0.5 * torch.log(2 * math.pi * var).sum()

    def free_sample(self, n: int, seed: int, dtype=torch.float64, device=None) -> torch.Tensor:
        """n exact independent free-field configurations (λ = 0), drawn mode by mode."""
        from ..rng import generator

        dims = tuple(range(1, self.d + 1))
        g = self.free_momentum_propagator(dtype=torch.float64, device=device)
        z = torch.randn((n, *self.lattice_shape), generator=generator(seed, device), dtype=torch.float64,
                        device=device)
        return torch.fft.ifftn(torch.fft.fftn(z, dim=dims) * torch.sqrt(g), dim=dims).real.to(dtype)

    def free_em_mode_variance(self, sde, n_steps: int, eps: float, start_var: torch.Tensor | None = None,
                              denoise_last: bool = True) -> torch.Tensor:
        r"""Exact per-mode output variance (per site, shape (L,)*d) of the Euler–Maruyama sampler of
        :func:`lib.diffusion.samplers.euler_maruyama` driven by the exact free-field score (VE or VP):
        each mode is a linear recursion,

        .. math:: x' = \big(1 + Δt\,[\tfrac12 k(t) - g^2(t)/c_t(p)]\big) x + g\sqrt{Δt}\,z,\qquad
                  c_t(p) = f(t,0)^2 G̃(p) + Ξ(t),

        so var' = (1 + Δt[k/2 − g²/c])² var + g²Δt (no noise in the last step with ``denoise_last``).
        ``start_var`` is the variance of x_T per mode (default: the prior's Ξ(T)). Compare with
        :meth:`free_mode_variance` at t = ε to see the sampler's discretisation error exactly."""
        g_tilde = self.free_momentum_propagator()
        grid = torch.linspace(sde.T, eps, n_steps, dtype=torch.float64)
        dt = float(grid[0] - grid[1])
        var = (torch.full_like(g_tilde, float(sde.Xi(torch.tensor(sde.T, dtype=torch.float64))))
               if start_var is None else start_var.clone())
        for i in range(n_steps - 1):
            t = grid[i]
            g2, k = float(sde.g(t)) ** 2, float(sde.k(t))
            c = float(sde.f(t)) ** 2 * g_tilde + float(sde.Xi(t))
            last = i == n_steps - 2 and denoise_last
            var = (1 + dt * (0.5 * k - g2 / c)) ** 2 * var + (0.0 if last else g2 * dt)
        return var

    def free_em_ode_mismatch(self, sde, n_steps: int, eps: float) -> dict:
        r"""How far Euler–Maruyama samples are from the density the probability-flow ODE assigns them,
        for the free field with its exact score, both started from the prior N(0, Ξ(T)) (the paper's
        recipe for DM-MC: EM proposals weighted with the ODE's log q). Per mode both are Gaussian,
        with variances a(p) (:meth:`free_em_mode_variance`) and b(p) = Ξ(T) v_ε(p)/v_T(p) (the ODE
        maps the prior mode by mode by √(v_ε/v_T)), so per configuration, in nats,

        .. math:: \mathrm{KL}(p_{EM}\,\|\,q_{ODE}) = \tfrac12\sum_p \Big(\frac{a}{b} - 1 - \ln\frac ab\Big),
                  \qquad \mathrm{std}\,\ln\frac{p_{EM}}{q_{ODE}} = \Big[\tfrac12\sum_p\Big(\frac ab - 1\Big)^2\Big]^{1/2}

        (the sums run over all V momenta, the eigenvalues of the real-space covariances). Also
        returned: the KL of the EM samples from the true p_ε, and that of the ODE density from p_ε.
        """
        xi_T = float(sde.Xi(torch.tensor(sde.T, dtype=torch.float64)))
        v_eps = self.free_mode_variance(sde, eps) / self.volume
        v_T = self.free_mode_variance(sde, sde.T) / self.volume
        a = self.free_em_mode_variance(sde, n_steps, eps)
        b = xi_T * v_eps / v_T

        def kl(p, q):
            r = p / q
            return float(0.5 * (r - 1 - torch.log(r)).sum())

        return {"kl_em_ode": kl(a, b), "std_log_ratio": float(torch.sqrt(0.5 * ((a / b - 1) ** 2).sum())),
                "kl_em_target": kl(a, v_eps), "kl_ode_target": kl(b, v_eps)}
