r"""Denoising score matching (paper eq. 3.4).

With the perturbation kernel x_t = f(t,0) x₀ + σ_t z (σ_t² = Ξ(t)), the σ_t²-weighted loss is

.. math:: \mathcal L(θ) = \mathbb E_{t∼U(ε,T)}\,\mathbb E_{x_0}\,\mathbb E_{z}
          \big\| σ_t\, s_θ(x_t, t) + z \big\|_2^2 ,

summed over the degrees of freedom and averaged over the batch (the authors' convention).
"""
from __future__ import annotations

import math

import torch

from ..runtime import per_sample


def sample_times(sde, n: int, generator=None, eps: float = 1e-5, t_sampling: str = "uniform",
                 p_mean: float = -1.2, p_std: float = 1.2, device=None, dtype=torch.float32,
                 u: torch.Tensor | None = None) -> torch.Tensor:
    r"""Diffusion times for the loss: ``"uniform"``, t ~ U(ε, T) (the paper's), or ``"lognormal"``,
    the noise level σ̃(t) = √Ξ/f log-normal, ln σ̃ ~ N(p_mean, p_std²) (Karras et al. 2022), mapped
    to t and clamped to [ε, T] — more weight where the denoising is hardest, none wasted at
    σ̃ ≫ the data's scale.

    ``u``: uniform numbers in [0, 1) to map instead of fresh draws (t = F⁻¹(u), the quantile
    function of the distribution; e.g. stratified u for a low-variance, reproducible estimate)."""
    if u is None:
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    else:
        u = torch.as_tensor(u, device=device, dtype=torch.float64)
        if u.shape != (n,) or bool(((u < 0) | (u > 1)).any()):
            raise ValueError(f"u must hold {n} numbers in [0, 1]")
    if t_sampling == "uniform":
        return (eps + (sde.T - eps) * u).to(dtype)
    if t_sampling != "lognormal":
        raise ValueError(f"t_sampling must be 'uniform' or 'lognormal', got {t_sampling!r}")
    z = math.sqrt(2) * torch.erfinv(2 * u.clamp(1e-12, 1 - 1e-12) - 1)  # standard normal from u
    t = sde.time_of_noise_level(torch.exp(p_mean + p_std * z))
    return t.clamp(eps, sde.T).to(dtype)


def dsm_loss(model, x0: torch.Tensor, generator: torch.Generator | None = None, eps: float = 1e-5,
             t: torch.Tensor | None = None, z: torch.Tensor | None = None, score_fn=None,
             zero_mode_weight: float = 1.0, t_sampling: str = "uniform",
             reduction: str = "mean") -> torch.Tensor:
    r"""Denoising score-matching loss of eq. (3.4) with σ_t² weighting, t ~ U(ε, T) (or the
    log-normal noise levels of :func:`sample_times`).

    ``model`` is a score network with an ``sde`` attribute (or pass ``score_fn(x, t)`` and an
    ``sde`` via ``model``). ``t`` and ``z`` may be given to evaluate the loss at fixed draws.

    ``zero_mode_weight`` w (not in the paper; 1 gives eq. 3.4) weights the zero mode of the
    residual r = σ_t s_θ + z by w instead of 1:

    .. math:: \|r\|^2 + (w - 1)\, V\, \bar r^2, \qquad \bar r = \frac1V \sum_x r(x),

    i.e. E‖W^{1/2} r‖² with W = 1 + (w − 1)P₀ and P₀ the projector on constant fields. For any
    positive-definite W the loss equals E‖W^{1/2} σ_t (s_θ − ∇ log p_t)‖² up to a θ-independent
    constant, so the minimiser is still the exact score; only the emphasis changes. In eq. (3.4)
    the zero mode is one of V modes, and it is the one that decides the vacuum (chapter 6).

    ``reduction="none"`` returns the loss of each configuration instead of the batch mean.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    if zero_mode_weight <= 0:
        raise ValueError(f"zero_mode_weight must be positive, got {zero_mode_weight}")
    sde = model.sde
    score_fn = score_fn or model
    n = x0.shape[0]
    if t is None:
        t = sample_times(sde, n, generator, eps, t_sampling, device=x0.device, dtype=x0.dtype)
    if z is None:
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    xt = sde.perturb(x0, t, z)
    std = per_sample(sde.marginal_std(t), x0)
    s = score_fn(xt, t)
    r = (std * s + z).flatten(1)
    loss = (r ** 2).sum(1)
    if zero_mode_weight != 1.0:
        loss = loss + (zero_mode_weight - 1.0) * r.shape[1] * r.mean(1) ** 2
    return loss.mean() if reduction == "mean" else loss
