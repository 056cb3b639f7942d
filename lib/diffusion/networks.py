r"""Score networks s_θ(x, t) ≈ ∇_x log p_t(x).

* :class:`MLPScore` — a time-embedded multilayer perceptron for few degrees of freedom
  (the toy model, Gaussian mixtures).
* :class:`LatticeUNet` — the U-Net of the paper's App. A (Song's ScoreNet layout: channels
  32, 64, 128, 256, Gaussian-Fourier time embedding, GroupNorm, swish, output divided by the
  kernel width σ_t) adapted to lattice fields: every convolution pads *circularly*, so the
  network commutes with lattice translations (all translations for stride 1 everywhere; shifts
  by multiples of the total down-sampling factor otherwise), and an option makes it odd under
  φ → −φ, the Z₂ symmetry of the φ⁴ action.

Both divide their output by σ_t = √Ξ(t) of their SDE, so the network learns the O(1) quantity
−σ_t s ≈ z of the denoising loss (eq. 3.4).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..runtime import per_sample
from .sde import sde_from_dict


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features of time, [sin 2πWt, cos 2πWt] with fixed W ~ N(0, scale²)."""

    def __init__(self, dim: int = 256, scale: float = 30.0, seed: int = 0):
        super().__init__()
        if dim % 2:
            raise ValueError("embedding dimension must be even")
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("W", torch.randn(dim // 2, generator=g) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * t[:, None] * self.W[None, :].to(t.dtype)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal embedding of t ∈ [0, 1] (frequencies 1 … max_freq)."""

    def __init__(self, dim: int = 32, max_freq: float = 1000.0):
        super().__init__()
        if dim % 2:
            raise ValueError("embedding dimension must be even")
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(max_freq), dim // 2)))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        proj = t[:, None] * self.freqs[None, :].to(t.dtype)
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)


def _times(t, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


class ScoreModel(nn.Module):
    """Base class: stores its constructor configuration (for checkpoints) and its SDE."""

    kind = "base"

    def __init__(self, sde, odd: bool = False, skip_var: float | None = None):
        super().__init__()
        self.sde = sde
        self.odd = bool(odd)
        if skip_var is not None and not (math.isfinite(skip_var) and skip_var > 0):
            raise ValueError(f"skip_var must be a positive number, got {skip_var!r}")
        self.skip_var = None if skip_var is None else float(skip_var)

    @property
    def config(self) -> dict:
        skip = {} if self.skip_var is None else {"skip_var": self.skip_var}  # recorded only when on
        return {"kind": self.kind, "sde": self.sde.to_dict(), "odd": self.odd, **skip, **self._config}

    def raw(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise TypeError("subclasses implement raw()")

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""Score s_θ(x, t) = h_θ(x, t)/σ_t; with ``odd``, h_θ is replaced by ½[h_θ(x) − h_θ(−x)].

        With ``skip_var`` v (not in the paper) the network learns the correction to the score of
        independent Gaussian sites of variance v (in the network's units),

        .. math:: s_θ(x, t) = -\frac{f(t,0)\, x}{f(t,0)^2 v + Ξ(t)} + \frac{h_θ(x, t)}{σ_t},

        which is exact for h = 0 on such data and, at large t, where every field is nearly
        Gaussian, leaves the network only a small residual to learn (see
        :func:`lib.diffusion.site_variance`)."""
        t = _times(t, x)
        h = self.raw(x, t)
        if self.odd:
            h = 0.5 * (h - self.raw(-x, t))
        td = t.double()
        std = self.sde.marginal_std(td).to(x.dtype)
        out = h / per_sample(std, x)
        if self.skip_var is not None:
            f = self.sde.f(td)
            out = out - per_sample(f / (f * f * self.skip_var + self.sde.Xi(td)), x) * x
        return out


class MLPScore(ScoreModel):
    """MLP score for inputs of shape (batch, dim): [x, emb(t)] → hidden layers (SiLU) → dim."""

    kind = "mlp"

    def __init__(self, sde, dim: int = 1, hidden=(64, 64), embed_dim: int = 32, embedding: str = "sinusoidal",
                 odd: bool = False, skip_var: float | None = None):
        super().__init__(sde, odd, skip_var)
        hidden = tuple(int(h) for h in hidden)
        if dim < 1 or not hidden or min(hidden) < 1:
            raise ValueError("dim and hidden sizes must be positive")
        self._config = {"dim": dim, "hidden": list(hidden), "embed_dim": embed_dim, "embedding": embedding}
        self.dim = dim
        self.embed = (SinusoidalEmbedding(embed_dim) if embedding == "sinusoidal"
                      else GaussianFourierEmbedding(embed_dim, scale=16.0))
        layers, n_in = [], dim + embed_dim
        for h in hidden:
            layers += [nn.Linear(n_in, h), nn.SiLU()]
            n_in = h
        layers.append(nn.Linear(n_in, dim))
        self.net = nn.Sequential(*layers)

    def raw(self, x, t):
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"MLPScore expects inputs of shape (batch, {self.dim}), got {tuple(x.shape)}")
        return self.net(torch.cat([x, self.embed(t)], dim=1))


def _groups(c: int, pref: int) -> int:
    g = min(pref, c)
    while c % g:
        g -= 1
    return g


class _GroupNorm(nn.GroupNorm):
    """GroupNorm that also takes a batch of one when a group holds a single value (one channel per
    group on a 1×1 bottleneck, as in small U-Nets at small L): the normalised value is then 0 and
    the output is the affine bias — what ``nn.GroupNorm`` computes for larger batches, where for
    a batch of one it raises instead."""

    def forward(self, x):
        if (x.shape[1] // self.num_groups) * math.prod(x.shape[2:]) == 1:
            out = torch.zeros_like(x)
            if self.affine:
                out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
            return out
        return super().forward(x)


class LatticeUNet(ScoreModel):
    r"""U-Net score network for 2D lattice fields of shape (batch, L, L) (paper App. A).

    Encoding: four 3×3 circular convolutions (1 → c₁ → c₂ → c₃ → c₄) with strides
    ``strides``, each followed by a dense projection of the time embedding (added per channel),
    GroupNorm and swish. Decoding: mirror image with skip connections (concatenation); a stride-2
    level is undone by a 2×2 transposed convolution of stride 2, a stride-1 level by a circular
    3×3 convolution. The output is divided by σ_t.

    ``strides=(1, 2, 2, 2)`` (the default: Song's ScoreNet, the layout App. A of the paper describes,
    and :func:`lib.diffusion.default_model`'s) needs L divisible by 8 and commutes with translations
    by multiples of 8; ``(1, 1, 1, 1)`` (as in the authors' public code) commutes with every lattice
    translation and accepts any L, at many times the cost per evaluation.

    ``zero_mode_head=True`` (not in the paper) gives the zero mode of the score its own path.
    In the DSM loss the zero mode is one of V modes, yet in the broken phase it decides the vacuum,
    and a U-Net trained briefly leaves it unlearned (chapter 6 measures this). With the head, the
    U-Net output is projected on mean-free fields and the zero mode of h_θ = σ_t s_θ comes from
    a Tweedie estimate of the clean magnetisation from the noisy one, y = M_t/f(t,0) with
    M_t = (1/V) Σ_x φ_t(x), whose noise has width s₀ = σ_t/(f√V):

    .. math:: \hat μ(y, t) = c_\mathrm{skip} y + c_\mathrm{out} F_θ(c_\mathrm{in} y, \tfrac14\ln s_0),
              \qquad \bar h = \frac{f\,\hat μ - M_t}{σ_t},

    with c_skip = s_d²/(s₀² + s_d²), c_out = s₀s_d/√(s₀² + s_d²), c_in = 1/√(s₀² + s_d²) (the
    preconditioning of Karras et al. 2022, applied to the zero mode's own noise level s₀, not the
    per-site σ_t) and F_θ a small MLP. For F_θ = 0 this is the exact score of a Gaussian zero mode
    of variance s_d² (``zero_mode_sd``, in the network's units): s̄ = −M_t/(σ_t² + f²V s_d²).
    The zero mode of the score then depends on (M_t, t) only: exact when the zero mode decouples
    from the other modes (the free field), an approximation otherwise. The head keeps translation
    invariance and, under ``odd``, oddness.
    """

    kind = "unet"

    def __init__(self, sde, channels=(32, 64, 128, 256), strides=(1, 2, 2, 2), embed_dim: int = 256,
                 embed_scale: float = 30.0, odd: bool = False, zero_mode_head: bool = False,
                 zero_mode_sd: float = 0.5, skip_var: float | None = None):
        super().__init__(sde, odd, skip_var)
        ch = tuple(int(c) for c in channels)
        st = tuple(int(s) for s in strides)
        if len(ch) != 4 or len(st) != 4 or min(ch) < 1 or any(s not in (1, 2) for s in st):
            raise ValueError("need four positive channel numbers and four strides in {1, 2}")
        self._config = {"channels": list(ch), "strides": list(st), "embed_dim": embed_dim, "embed_scale": embed_scale}
        if zero_mode_head not in (False, True):
            raise ValueError(f"zero_mode_head must be True or False, got {zero_mode_head!r}")
        if zero_mode_head:  # recorded only when on: the configuration of a plain U-Net is the paper's
            if not (math.isfinite(zero_mode_sd) and zero_mode_sd > 0):
                raise ValueError(f"zero_mode_sd must be positive, got {zero_mode_sd}")
            self._config.update(zero_mode_head=True, zero_mode_sd=float(zero_mode_sd))
        self.zero_mode = (nn.Sequential(nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1))
                          if zero_mode_head else None)
        self.factor = math.prod(st)
        self.embed = nn.Sequential(GaussianFourierEmbedding(embed_dim, embed_scale), nn.Linear(embed_dim, embed_dim))
        act = nn.SiLU()
        self.act = act

        def down(cin, cout, s):
            return nn.Conv2d(cin, cout, 3, stride=s, padding=1, padding_mode="circular", bias=False)

        def up(cin, cout, s):
            if s == 2:
                return nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False)
            return nn.Conv2d(cin, cout, 3, stride=1, padding=1, padding_mode="circular", bias=False)

        cin = (1,) + ch[:3]
        self.convs = nn.ModuleList([down(cin[i], ch[i], st[i]) for i in range(4)])
        self.dense = nn.ModuleList([nn.Linear(embed_dim, ch[i]) for i in range(4)])
        self.norms = nn.ModuleList([_GroupNorm(_groups(ch[0], 4), ch[0])] +
                                   [_GroupNorm(_groups(ch[i], 32), ch[i]) for i in range(1, 4)])
        # decoder: tconv4: c4 -> c3 ; tconv3: 2c3 -> c2 ; tconv2: 2c2 -> c1 ; tconv1: 2c1 -> 1
        self.tconvs = nn.ModuleList([up(ch[3], ch[2], st[3]), up(2 * ch[2], ch[1], st[2]),
                                     up(2 * ch[1], ch[0], st[1])])
        self.tdense = nn.ModuleList([nn.Linear(embed_dim, c) for c in (ch[2], ch[1], ch[0])])
        self.tnorms = nn.ModuleList([_GroupNorm(_groups(c, 32), c) for c in (ch[2], ch[1], ch[0])])
        if st[0] == 2:
            self.final = nn.ConvTranspose2d(2 * ch[0], 1, 2, stride=2)
        else:
            self.final = nn.Conv2d(2 * ch[0], 1, 3, stride=1, padding=1, padding_mode="circular")

    def raw(self, x, t):
        if x.ndim != 3 or x.shape[1] != x.shape[2]:
            raise ValueError(f"LatticeUNet expects fields of shape (batch, L, L), got {tuple(x.shape)}")
        if x.shape[1] % self.factor:
            raise ValueError(f"lattice size {x.shape[1]} is not divisible by the U-Net's down-sampling factor "
                             f"{self.factor} (strides {self._config['strides']})")
        emb = self.act(self.embed(t))
        h = x[:, None]
        skips = []
        for conv, dense, norm in zip(self.convs, self.dense, self.norms):
            h = self.act(norm(conv(h) + dense(emb)[:, :, None, None]))
            skips.append(h)
        h = skips[-1]
        for i, (tconv, dense, norm) in enumerate(zip(self.tconvs, self.tdense, self.tnorms)):
            h = self.act(norm(tconv(h) + dense(emb)[:, :, None, None]))
            h = torch.cat([h, skips[2 - i]], dim=1)
        out = self.final(h)[:, 0]
        if self.zero_mode is not None:
            out = out - out.mean(dim=(1, 2), keepdim=True) + self.zero_mode_output(x, t)[:, None, None]
        return out

    def zero_mode_output(self, x, t):
        """The zero mode h̄ = (f μ̂ − M_t)/σ_t of the head (see the class docstring), per configuration."""
        td = t.double()
        std = self.sde.marginal_std(td).to(x.dtype)
        f = self.sde.f(td).to(x.dtype)
        m = x.mean(dim=(1, 2))
        y = m / f
        s0 = std / (f * math.sqrt(x.shape[1] * x.shape[2]))
        sd = self._config["zero_mode_sd"]
        r = torch.sqrt(s0 ** 2 + sd ** 2)
        F = self.zero_mode(torch.stack([y / r, torch.log(s0) / 4], dim=1))[:, 0]
        mu = (sd ** 2 / r ** 2) * y + (s0 * sd / r) * F
        return (f * mu - m) / std


NETWORKS = {"mlp": MLPScore, "unet": LatticeUNet}


def build_score_model(config: dict, seed: int | None = None) -> ScoreModel:
    """Instantiate a score network from its ``config`` (as stored in checkpoints). With ``seed``
    the initial weights are a function of the seed alone (the global RNG is seeded inside a
    ``fork_rng`` block and left as it was)."""
    from ..rng import check_seed

    if not isinstance(config, dict) or not isinstance(config.get("sde"), dict):
        raise ValueError("a score-model configuration must be a dict with 'kind' and 'sde'")
    c = dict(config)
    cls = NETWORKS.get(c.pop("kind", None))
    if cls is None:
        raise ValueError(f"unknown score model kind {config.get('kind')!r}; known: {', '.join(NETWORKS)}")
    sde = sde_from_dict(c.pop("sde"))
    if seed is None:
        return cls(sde, **c)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(check_seed(seed))
        return cls(sde, **c)
