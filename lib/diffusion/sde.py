r"""Forward SDEs of diffusion models (paper Sec. 3.1; Aarts talk, "Diffusion models in more detail").

Both schemes are linear SDEs in the machine-learning convention ⟨η(t)η(t')⟩ = δ(t − t')
(α = ½ in the paper's eq. 3.1):

.. math:: dx = -\tfrac12 k(t)\, x\, dt + g(t)\, dW, \qquad g(t) = σ^{t/T}

* variance expanding (VE, paper eq. 3.6): k = 0;
* variance preserving (VP, DDPM-type): k(t) = g²(t), the same g as VE (as in the cumulant study).

The solution is x(t) = f(t,0) x₀ + ∫₀ᵗ ds f(t,s) g(s) η(s) with
f(t,s) = exp(−½∫ₛᵗ k) and noise variance Ξ(t) = ∫₀ᵗ ds f²(t,s) g²(s), so the perturbation
kernel is p_t(x|x₀) = N(x; f(t,0)x₀, Ξ(t)).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..runtime import per_sample as _bcast


def _as_tensor(t, like: torch.Tensor | None = None):
    if isinstance(t, torch.Tensor):
        return t
    kw = {} if like is None else {"dtype": like.dtype, "device": like.device}
    return torch.as_tensor(t, **({"dtype": torch.float64} | kw))


@dataclass(frozen=True)
class VESDE:
    r"""Variance-expanding SDE: dx = σ^{t/T} dW (paper eq. 3.6 with T = 1).

    .. math:: σ_t^2 ≡ Ξ(t) = ∫_0^t σ^{2s/T} ds = \frac{T(σ^{2t/T} - 1)}{2\ln σ}, \qquad f(t, s) = 1.
    """

    sigma: float = 25.0
    T: float = 1.0

    def __post_init__(self):
        if not self.sigma > 1:
            raise ValueError(f"sigma must be > 1, got {self.sigma}")
        if not self.T > 0:
            raise ValueError(f"T must be positive, got {self.T}")

    name = "ve"

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}

    def g(self, t):
        """Diffusion coefficient g(t) = σ^{t/T}."""
        return self.sigma ** (_as_tensor(t) / self.T)

    def k(self, t):
        """Linear drift rate k(t) in f(x, t) = −½ k(t) x (zero for VE)."""
        return torch.zeros_like(_as_tensor(t))

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        """Forward drift f(x, t) = −½ k(t) x."""
        return -0.5 * _bcast(self.k(_as_tensor(t, x)), x) * x

    def Xi(self, t):
        """Noise variance Ξ(t) = T(σ^{2t/T} − 1)/(2 ln σ)."""
        t = _as_tensor(t)
        return self.T * (self.sigma ** (2 * t / self.T) - 1) / (2 * math.log(self.sigma))

    def f(self, t, s=0.0):
        """Decay factor f(t, s) = exp(−½∫ₛᵗ k) (= 1 for VE)."""
        return torch.ones_like(_as_tensor(t) - _as_tensor(s))

    def marginal_std(self, t):
        """σ_t = √Ξ(t), the width of the perturbation kernel (paper eq. 3.6)."""
        return torch.sqrt(self.Xi(t))

    def marginal(self, x0: torch.Tensor, t):
        """Mean f(t,0)·x₀ and std √Ξ(t) of p_t(x|x₀) (t per sample or scalar)."""
        t = _as_tensor(t, x0)
        return _bcast(self.f(t), x0) * x0, _bcast(self.marginal_std(t), x0)

    def perturb(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """x_t = f(t,0) x₀ + √Ξ(t) z with z ~ N(0, 1) given."""
        mean, std = self.marginal(x0, t)
        return mean + std * noise

    def noise_level(self, t):
        r"""The noise level σ̃(t) = √Ξ(t)/f(t, 0) of Karras et al. (EDM): x_t/f = x₀ + σ̃ z (VE: σ̃ = σ_t)."""
        t = _as_tensor(t)
        return torch.sqrt(self.Xi(t)) / self.f(t)

    def _time_of_u(self, u):
        """Inverse of u(t) = ∫₀ᵗ g² = T(σ^{2t/T} − 1)/(2 ln σ)."""
        ls = math.log(self.sigma)
        return self.T * torch.log1p(2 * ls * u / self.T) / (2 * ls)

    def time_of_noise_level(self, level):
        """The diffusion time t at which σ̃(t) = ``level`` (inverse of :meth:`noise_level`)."""
        level = _as_tensor(level)
        return self._time_of_u(level * level)

    def prior_std(self) -> float:
        """Std of the prior p_T (the data's contribution f(T,0)·x₀ is neglected)."""
        return float(self.marginal_std(self.T))

    def prior_sample(self, shape, generator=None, device=None, dtype=torch.float32) -> torch.Tensor:
        """Draw from the prior N(0, Ξ(T))."""
        return self.prior_std() * torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def canonical(self, x: torch.Tensor) -> torch.Tensor:
        """The field a sample in the process's space stands for (itself here; angles mod 2π for
        :class:`lib.diffusion.gauge.TorusVESDE`)."""
        return x

    def prior_logp(self, x: torch.Tensor) -> torch.Tensor:
        """log N(x; 0, Ξ(T)) summed over all but the batch axis."""
        s2 = self.prior_std() ** 2
        n = x[0].numel()
        return -0.5 * (x * x).flatten(1).sum(1) / s2 - 0.5 * n * math.log(2 * math.pi * s2)

    def reverse_drift(self, x: torch.Tensor, t, score: torch.Tensor) -> torch.Tensor:
        """Drift of the reverse SDE (paper eq. 3.2/3.5) in forward time: f − g² s."""
        t = _as_tensor(t, x)
        return self.drift(x, t) - _bcast(self.g(t.double()) ** 2, x) * score

    def reverse_step(self, x: torch.Tensor, t, dt: float, score: torch.Tensor,
                     noise: torch.Tensor | None = None) -> torch.Tensor:
        r"""One Euler–Maruyama step of the reverse SDE from t to t − Δt (paper eq. 3.9):

        .. math:: x' = x - \big[f(x, t) - g^2(t)\, s(x, t)\big] Δt + g(t)\sqrt{Δt}\, z,

        — in the reverse time τ = T − t a Langevin step with drift g²s and kernel g² (eqs. 3.8–3.9).
        Without ``noise`` (z) the step is the mean only (the last, denoising step)."""
        t = _as_tensor(t, x)
        mean = x - self.reverse_drift(x, t, score) * dt
        if noise is None:
            return mean
        return mean + _bcast(self.g(t.double()) * math.sqrt(dt), x) * noise

    def ode_drift(self, x: torch.Tensor, t, score: torch.Tensor) -> torch.Tensor:
        """Probability-flow ODE drift (paper eq. 3.14 in the α = ½ convention): f − ½ g² s."""
        t = _as_tensor(t, x)
        return self.drift(x, t) - 0.5 * _bcast(self.g(t.double()) ** 2, x) * score


@dataclass(frozen=True)
class VPSDE(VESDE):
    r"""Variance-preserving (DDPM-type) SDE with the same g: dx = −½ g²(t) x dt + g(t) dW.

    With u(t) = ∫₀ᵗ g² = Ξ_VE(t):  f(t, s) = e^{−(u(t) − u(s))/2},  Ξ(t) = 1 − e^{−u(t)},
    so the prior is N(0, 1) for large u(T) and every cumulant κ_{n>2} decays as f(t,0)ⁿ.
    """

    name = "vp"

    def _u(self, t):
        return VESDE.Xi(self, t)

    def k(self, t):
        return self.g(t) ** 2

    def f(self, t, s=0.0):
        return torch.exp(-0.5 * (self._u(t) - self._u(s)))

    def Xi(self, t):
        return -torch.expm1(-self._u(t))

    def time_of_noise_level(self, level):
        level = _as_tensor(level)
        return self._time_of_u(torch.log1p(level * level))


SDES = {"ve": VESDE, "vp": VPSDE}


def make_sde(kind: str = "ve", sigma: float = 25.0, T: float = 1.0):
    """``"ve"`` (paper eq. 3.6) or ``"vp"`` with g(t) = σ^{t/T}; refused in one line otherwise."""
    if kind not in SDES:
        raise ValueError(f"unknown SDE {kind!r}; choose 've' or 'vp'")
    for name, v in (("sigma", sigma), ("T", T)):
        if not (isinstance(v, (int, float)) and math.isfinite(v)):
            raise ValueError(f"SDE {name} must be a finite number, got {v!r}")
    return SDES[kind](sigma=float(sigma), T=float(T))


def sde_from_dict(d: dict):
    """Rebuild an SDE from its ``to_dict()``."""
    d = dict(d)
    return make_sde(d.pop("name"), **d)
