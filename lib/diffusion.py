"""High-level diffusion-model workflow: train a score model on an ensemble, generate an
ensemble from a checkpoint (in the same file format as HMC ensembles).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .dm_sampling import euler_maruyama, predictor_corrector, probability_flow
from .networks import LatticeUNet, MLPScore, build_score_model
from .sde import VESDE, VPSDE
from .training import Normaliser, Trainer, load_model
from .utils import progress, resolve_device

SAMPLERS = ("em", "pc", "ode")


def make_sde(kind: str = "ve", sigma: float = 25.0, T: float = 1.0):
    """``"ve"`` (paper eq. 3.6) or ``"vp"`` with g(t) = σ^{t/T}."""
    if kind not in ("ve", "vp"):
        raise ValueError(f"unknown SDE {kind!r}; choose 've' or 'vp'")
    return (VESDE if kind == "ve" else VPSDE)(sigma=sigma, T=T)


def default_model(sde, lattice_shape, channels=(32, 64, 128, 256), strides=(1, 2, 2, 2), odd=False,
                  hidden=(64, 64), embed_dim=None):
    """A U-Net for 2D lattices, an MLP for flat inputs of few degrees of freedom."""
    if len(lattice_shape) == 2:
        return LatticeUNet(sde, channels=channels, strides=strides, odd=odd, embed_dim=embed_dim or 256)
    if len(lattice_shape) == 1:
        return MLPScore(sde, dim=lattice_shape[0], hidden=hidden, odd=odd, embed_dim=embed_dim or 32)
    raise ValueError(f"no default score network for lattice shape {lattice_shape}")


def train_score_model(configs, model, seed: int, epochs: int, batch_size: int = 64, lr: float = 1e-3,
                      ema_decay: float | None = None, z2_augment: bool = False, normalisation: str = "minmax",
                      checkpoint=None, device=None, amp: bool = False, metadata: dict | None = None,
                      dtype=torch.float32, progress_bar: bool = True):
    """Normalise ``configs`` (n, *lattice), train ``model`` with denoising score matching and
    return the :class:`lib.training.Trainer` (its checkpoint, if any, holds everything needed to
    sample: model configuration, weights, normaliser, training metadata, hyperparameters).
    """
    x = torch.as_tensor(np.asarray(configs) if not isinstance(configs, torch.Tensor) else configs)
    if x.ndim < 2:
        raise ValueError(f"expected configurations of shape (n, *lattice), got {tuple(x.shape)}")
    norm = Normaliser.fit(x, normalisation)
    if (z2_augment or getattr(model, "odd", False)) and not norm.symmetric:
        raise ValueError("Z2 augmentation / an odd network need a symmetric normalisation: use 'maxabs' or 'none'")
    data = norm.forward(x.double()).to(dtype)
    meta = {**(metadata or {}), "normaliser": norm.to_dict(), "lattice_shape": list(x.shape[1:])}
    trainer = Trainer(model.to(dtype), data, seed=seed, batch_size=batch_size, lr=lr, ema_decay=ema_decay,
                      z2_augment=z2_augment, checkpoint=checkpoint, device=device, amp=amp, metadata=meta)
    trainer.fit(epochs, progress_bar=progress_bar)
    return trainer


def check_lattice(model, state_metadata: dict, lattice_shape) -> tuple:
    """The lattice shape to generate, checked against what the model supports."""
    trained = tuple(state_metadata.get("lattice_shape", ()))
    shape = tuple(lattice_shape) if lattice_shape is not None else trained
    if not shape:
        raise ValueError("the checkpoint does not record a lattice shape; pass one")
    if isinstance(model, LatticeUNet):
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"this U-Net generates square 2D lattices, not {shape}")
        if shape[0] % model.factor:
            raise ValueError(f"L = {shape[0]} is not supported: the U-Net needs L divisible by {model.factor}")
    elif isinstance(model, MLPScore) and shape != (model.dim,):
        raise ValueError(f"this MLP score was trained for shape {(model.dim,)}, not {shape}")
    return shape


@torch.no_grad()
def generate(model, n: int, seed: int, lattice_shape=None, normaliser: dict | None = None, sampler: str = "em",
             n_steps: int = 500, eps: float = 1e-3, batch_size: int = 1024, device=None, record_times=None,
             progress_bar: bool = True):
    """Generate ``n`` configurations with the reverse SDE (``"em"``, eq. 3.9), the
    predictor–corrector sampler (``"pc"``) or the probability-flow ODE (``"ode"``, eq. 3.14),
    in batches of ``batch_size`` on ``device``, mapped back to physical fields.

    Returns ``(configs (n, *lattice) float64 on the CPU, records)`` where records maps each
    requested diffusion time to the (physical) batch at that time (EM only, first batch).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose from {SAMPLERS}")
    if n < 1 or batch_size < 1:
        raise ValueError("n and batch_size must be positive")
    device = resolve_device(device)
    model = model.to(device).eval()
    dtype = next(model.parameters()).dtype
    shape = tuple(lattice_shape)
    norm = Normaliser.from_dict(normaliser) if normaliser else Normaliser("none")
    gen = torch.Generator(device=device).manual_seed(seed)
    out, records = [], {}
    n_batches = math.ceil(n / batch_size)
    for b in progress(range(n_batches), desc="generating", disable=not progress_bar or n_batches == 1):
        nb = min(batch_size, n - b * batch_size)
        if sampler == "em":
            x, rec = euler_maruyama(model, model.sde, (nb, *shape), n_steps=n_steps, eps=eps, generator=gen,
                                    device=device, dtype=dtype, record_times=record_times if b == 0 else None,
                                    progress_bar=progress_bar and n_batches == 1)
            if b == 0:
                records = {t: norm.inverse(v.double()).cpu() for t, v in rec.items()}
        elif sampler == "pc":
            x = predictor_corrector(model, model.sde, (nb, *shape), n_steps=n_steps, eps=eps, generator=gen,
                                    device=device, dtype=dtype, progress_bar=progress_bar and n_batches == 1)
        else:
            x0 = model.sde.prior_sample((nb, *shape), generator=gen, device=device, dtype=dtype)
            x = probability_flow(model, model.sde, x0, model.sde.T, eps)
        out.append(norm.inverse(x.double()).cpu())
    return torch.cat(out), records


def generate_from_checkpoint(path, n: int, seed: int, lattice_shape=None, device=None, ema: bool = True, **kw):
    """Load a checkpoint and :func:`generate`; returns ``(configs, records, state)``."""
    model, state = load_model(path, device=device, ema=ema)
    meta = state.get("metadata", {})
    shape = check_lattice(model, meta, lattice_shape)
    configs, records = generate(model, n, seed, lattice_shape=shape, normaliser=meta.get("normaliser"),
                                device=device, **kw)
    return configs, records, state


@torch.no_grad()
def effective_action(score_fn, x_grid, t, device=None, dtype=None) -> np.ndarray:
    r"""The effective action of a one-component score, integrated along a grid (paper eqs. 3.11, 3.20):

    .. math:: S_{\rm DM}(φ, t) = -\int_{φ_0}^{φ} dφ'\, s(φ', t), \qquad ∂_φ S_{\rm DM} = -s,

    so that e^{−S_DM(·, t)} ∝ p_t, the density whose score is ``s`` at diffusion time t (the
    reverse-process time of the paper is τ = T − t). ``score_fn(x, t)`` takes x of shape (n, 1)
    and t of shape (n,) — a trained :class:`lib.networks.MLPScore` with ``dim=1`` or an exact
    score. The integral is the cumulative trapezoidal rule on ``x_grid`` (strictly increasing;
    error O(h²) per unit length). The additive constant is fixed so that min S_DM = 0 on the grid;
    the paper's shift ΔS₀ is then min S. ``device``/``dtype`` default to those of the
    network's parameters (float64 on the CPU for a plain function).

    Returns a numpy array of the same length as ``x_grid``.
    """
    x = np.asarray(x_grid, dtype=np.float64)
    if x.ndim != 1 or x.size < 2 or not np.all(np.diff(x) > 0):
        raise ValueError("x_grid must be a strictly increasing 1D grid of at least two points")
    params = list(score_fn.parameters()) if isinstance(score_fn, torch.nn.Module) else []
    if device is None:
        device = params[0].device if params else torch.device("cpu")
    if dtype is None:
        dtype = params[0].dtype if params else torch.float64
    xt = torch.as_tensor(x, dtype=dtype, device=device).reshape(-1, 1)
    tt = torch.full((x.size,), float(t), dtype=dtype, device=device)
    s = score_fn(xt, tt).reshape(-1).double().cpu().numpy()
    S = -np.concatenate([[0.0], np.cumsum(0.5 * (s[1:] + s[:-1]) * np.diff(x))])
    return S - S.min()


__all__ = ["make_sde", "default_model", "train_score_model", "generate", "generate_from_checkpoint",
           "check_lattice", "build_score_model", "effective_action"]
