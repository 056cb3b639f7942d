r"""Diffusion on the torus of U(1) link angles (:class:`lib.theories.U1Gauge`).

**Noise on the circle.** The VE process runs on the covering space ℝ^n of the angles,
x_t = x_0 + σ_t z; the angles it describes are x_t mod 2π, whose kernel is the wrapped normal

.. math:: \mathrm{WN}(x; μ, v) = \sum_{k∈ℤ} N(x + 2πk; μ, v)
          = \frac1{2π}\Big[1 + 2\sum_{m≥1} e^{−m^2 v/2}\cos m(x − μ)\Big].

Everything periodic lifts to the covering space unchanged: a score network that is periodic in
each angle, trained with the ordinary denoising loss (eq. 3.4) on x_t = x_0 + σ_t z, learns the
score of the wrapped marginal (its minimiser E[−z/σ_t | x_t mod 2π] is ∇ log p_t on the torus);
Euler–Maruyama run in ℝ^n and wrapped at the end samples the torus process; path-space weights
(:mod:`.paths`) keep their Gaussian kernels, with the prior replaced by the wrapped normal,
which for σ_T ≫ 2π is the uniform density (2π)^{−n} (:class:`TorusVESDE`).

**A gauge-invariant score by construction.** p_t is gauge invariant and, because the noise is
isotropic and the gauge directions, the holonomies and the plaquettes span orthogonal subspaces
of link space (the lattice Hodge decomposition), it depends on the plaquettes alone. Its score
is therefore s = d^T h with h(x) = ∂ log p_t/∂θ_P(x) one number per plaquette:

.. math:: s_0(x) = h(x) − h(x − \hat 1),\qquad s_1(x) = h(x − \hat 0) − h(x),

as for the force of the Wilson action, h = −β sin θ_P at t = 0. :class:`PlaquetteScoreNet`
computes h with a translation-equivariant convolutional network of (cos θ_P, sin θ_P) and the
time, so its score is exactly gauge invariant (no gauge copies of the training data needed) and
has no component along the holonomies.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..theories.u1 import momenta_squared, plaquette_angles, plaquette_to_links, wrap
from .networks import GaussianFourierEmbedding, NETWORKS, ScoreModel
from .sde import SDES, VESDE

TWO_PI = 2 * math.pi


def wrapped_normal_logpdf(x: torch.Tensor, mean, var, n_terms: int = 12) -> torch.Tensor:
    """log WN(x; mean, var) elementwise (module docstring): the Fourier series for var ≥ 1, the sum
    over 2·n_terms + 1 images below (both exact to double precision there)."""
    var = torch.as_tensor(var, dtype=x.dtype, device=x.device)
    d = x - mean
    if bool((var >= 1).all()):
        m = torch.arange(1, n_terms + 1, dtype=x.dtype, device=x.device)
        series = 1 + 2 * (torch.exp(-0.5 * m * m * var[..., None]) * torch.cos(m * d[..., None])).sum(-1)
        return torch.log(series) - math.log(TWO_PI)
    d = wrap(d)
    k = torch.arange(-n_terms, n_terms + 1, dtype=x.dtype, device=x.device)
    e = -0.5 * (d[..., None] + TWO_PI * k) ** 2 / var[..., None]
    return torch.logsumexp(e, -1) - 0.5 * torch.log(TWO_PI * var)


def wrapped_normal_score(x: torch.Tensor, mean, var) -> torch.Tensor:
    """∂/∂x log WN(x; mean, var), the exact score of independent wrapped-normal angles (via autograd
    of :func:`wrapped_normal_logpdf`)."""
    with torch.enable_grad():
        y = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(wrapped_normal_logpdf(y, mean, var).sum(), y)
    return g


@dataclass(frozen=True)
class TorusVESDE(VESDE):
    """The VE SDE of the paper for angles: the same forward process in the covering space; the prior
    x_T mod 2π is the wrapped normal of variance Ξ(T), whose density :meth:`prior_logp` returns."""

    name = "ve-torus"

    def canonical(self, x: torch.Tensor) -> torch.Tensor:
        """Angles wrapped to [−π, π) (the torus point a covering-space sample stands for)."""
        return wrap(x)

    def prior_logp(self, x: torch.Tensor) -> torch.Tensor:
        """log WN(x; 0, Ξ(T)) summed over all but the batch axis ((2π)^{−n} for σ ≫ 2π)."""
        var = float(self.prior_std()) ** 2
        return wrapped_normal_logpdf(x, 0.0, var).flatten(1).sum(1)


SDES["ve-torus"] = TorusVESDE


class PlaquetteScoreNet(ScoreModel):
    r"""Gauge-invariant score network for U(1) links ``(batch, 2, L, L)`` (module docstring):
    features (cos θ_P, sin θ_P) → ``len(channels)`` circular 3×3 convolutions (each plus a dense
    projection of the time embedding, SiLU) → a 1×1 convolution to h_θ(x, t) per plaquette →
    s_θ = d^T h_θ / σ_t. Translation equivariant for every shift, periodic in every angle, gauge
    invariant; ``odd`` imposes the charge conjugation θ → −θ (s(−θ) = −s(θ))."""

    kind = "u1-plaquette"

    def __init__(self, sde, channels=(32, 32, 32, 32), embed_dim: int = 64, embed_scale: float = 16.0,
                 odd: bool = False, skip_var: float | None = None):
        super().__init__(sde, odd, skip_var)
        ch = tuple(int(c) for c in channels)
        if not ch or min(ch) < 1:
            raise ValueError(f"channels must be positive numbers, got {channels!r}")
        self._config = {"channels": list(ch), "embed_dim": int(embed_dim), "embed_scale": float(embed_scale)}
        self.embed = nn.Sequential(GaussianFourierEmbedding(embed_dim, embed_scale), nn.Linear(embed_dim, embed_dim))
        cin = (2,) + ch[:-1]
        self.convs = nn.ModuleList([nn.Conv2d(a, b, 3, padding=1, padding_mode="circular") for a, b in zip(cin, ch)])
        self.dense = nn.ModuleList([nn.Linear(embed_dim, b) for b in ch])
        self.out = nn.Conv2d(ch[-1], 1, 1)
        self.act = nn.SiLU()

    def raw(self, x, t):
        if x.ndim != 4 or x.shape[1] != 2 or x.shape[2] != x.shape[3]:
            raise ValueError(f"PlaquetteScoreNet expects links of shape (batch, 2, L, L), got {tuple(x.shape)}")
        p = plaquette_angles(x)
        h = torch.stack([torch.cos(p), torch.sin(p)], dim=1)
        emb = self.act(self.embed(t))
        for conv, dense in zip(self.convs, self.dense):
            h = self.act(conv(h) + dense(emb)[:, :, None, None])
        return plaquette_to_links(self.out(h)[:, 0])


NETWORKS["u1-plaquette"] = PlaquetteScoreNet


class GaussianPlaquetteScore(ScoreModel):
    r"""An analytic, approximate score for U(1) (not in the paper): the plaquettes as a Gaussian field
    of variance 1/β per plaquette (the small-angle limit of the Wilson action), smeared by the link
    noise. Noise of variance Ξ on every link gives the plaquettes the covariance Ξ d d^T, whose
    eigenvalues are the lattice momenta p̂² = 4 sin²(p₀/2) + 4 sin²(p₁/2), so in momentum space

    .. math:: \tilde h(p, t) = −\frac{β}{1 + βΞ(t)\,\hat p^2}\, \widetilde{\sin θ_P}(p), \qquad s = d^T h,

    with sin θ_P in place of θ_P to keep it periodic: exact at t = 0 (the force of the Wilson action),
    exact for all t in the Gaussian (large-β, small-angle) limit, gauge invariant, and wrong where the
    angles are not small (small β, large noise). The topological zero mode (p = 0) receives no noise:
    small noise cannot change Q. One parameter, β (trainable). The baseline against which
    :class:`PlaquetteScoreNet` is measured, and a poor-but-reasonable proposal for exactness tests."""

    kind = "u1-gaussian-plaquette"

    def __init__(self, sde, beta: float = 1.0, odd: bool = False, skip_var: float | None = None):
        super().__init__(sde, odd, skip_var)
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
        self._config = {"beta": float(beta)}
        self.beta = nn.Parameter(torch.tensor(float(beta)))

    def raw(self, x, t):
        if x.ndim != 4 or x.shape[1] != 2 or x.shape[2] != x.shape[3]:
            raise ValueError(f"GaussianPlaquetteScore expects links of shape (batch, 2, L, L), got {tuple(x.shape)}")
        xi = self.sde.Xi(t.double()).to(x.dtype)[:, None, None]
        b = self.beta.to(x.dtype)
        kernel = b / (1 + b * xi * momenta_squared(x.shape[-1], x.device, x.dtype))
        h = -torch.fft.ifft2(torch.fft.fft2(torch.sin(plaquette_angles(x))) * kernel).real
        return torch.sqrt(xi)[..., None] * plaquette_to_links(h)


NETWORKS["u1-gaussian-plaquette"] = GaussianPlaquetteScore


class ConditionedScore(nn.Module):
    r"""Physics conditioning (arXiv:2502.05504): a score model trained at β used at β′ by rescaling,

    .. math:: s_{β′}(x, t) = \frac{β′}{β}\, s_β(x, t),

    exact at t → 0, where the score is the force −∂S/∂θ ∝ β, and an approximation at larger t (the
    noise does not scale with β). Wraps ``model`` (its ``sde``, its parameters) for the samplers and
    :func:`lib.diffusion.dm_path_proposals`; exact DM-MC weights remove what the approximation gets wrong."""

    def __init__(self, model, beta_trained: float, beta: float):
        super().__init__()
        if not (beta_trained > 0 and beta >= 0 and math.isfinite(beta) and math.isfinite(beta_trained)):
            raise ValueError(f"need beta_trained > 0 and beta >= 0, got {beta_trained!r}, {beta!r}")
        self.model, self.sde, self.factor = model, model.sde, float(beta) / float(beta_trained)

    def forward(self, x, t):
        return self.factor * self.model(x, t)


__all__ = ["ConditionedScore", "TorusVESDE", "PlaquetteScoreNet", "GaussianPlaquetteScore", "plaquette_angles", "plaquette_to_links", "wrapped_normal_logpdf",
           "wrapped_normal_score"]
