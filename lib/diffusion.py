"""High-level diffusion-model workflow: train a score model on an ensemble, generate an
ensemble from a checkpoint (in the same file format as HMC ensembles).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .dm_sampling import euler_maruyama, predictor_corrector, probability_flow
from .networks import LatticeUNet, MLPScore, build_score_model
from .sde import VESDE, VPSDE
from .training import Normaliser, Trainer, load_checkpoint, load_model
from .utils import progress, resolve_device

SAMPLERS = ("em", "pc", "ode")


def make_sde(kind: str = "ve", sigma: float = 25.0, T: float = 1.0):
    """``"ve"`` (paper eq. 3.6) or ``"vp"`` with g(t) = σ^{t/T}."""
    if kind not in ("ve", "vp"):
        raise ValueError(f"unknown SDE {kind!r}; choose 've' or 'vp'")
    return (VESDE if kind == "ve" else VPSDE)(sigma=sigma, T=T)


def default_model(sde, lattice_shape, channels=(32, 64, 128, 256), strides=(1, 2, 2, 2), odd=False,
                  hidden=(64, 64), embed_dim=None, zero_mode_head: bool = False, zero_mode_sd: float = 0.5):
    """A U-Net for 2D lattices (optionally with a zero-mode head of scale ``zero_mode_sd``, see
    :class:`lib.networks.LatticeUNet` and :func:`zero_mode_scale`), an MLP for flat inputs of few
    degrees of freedom."""
    if len(lattice_shape) == 2:
        return LatticeUNet(sde, channels=channels, strides=strides, odd=odd, embed_dim=embed_dim or 256,
                           zero_mode_head=zero_mode_head, zero_mode_sd=zero_mode_sd)
    if len(lattice_shape) == 1:
        return MLPScore(sde, dim=lattice_shape[0], hidden=hidden, odd=odd, embed_dim=embed_dim or 32)
    raise ValueError(f"no default score network for lattice shape {lattice_shape}")


def zero_mode_scale(configs, normalisation: str = "minmax") -> float:
    r"""The scale s_d of the zero-mode head for a training set: the root mean square of the
    magnetisation in the network's units, s_d = ⟨(a M + b)²⟩^{1/2} with the normalisation
    y = a φ + b fitted to ``configs``. The head's preconditioning (see
    :class:`lib.networks.LatticeUNet`) keeps the inputs and outputs of its MLP of order one when
    s_d is the scale of the data's zero mode: about 0.7 in the broken phase after min–max
    normalisation, a few hundredths in the symmetric phase, where M ≈ 0 ± √(χ₂/V)."""
    x = torch.as_tensor(np.asarray(configs) if not isinstance(configs, torch.Tensor) else configs).double()
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"expected configurations of shape (n, *lattice), got {tuple(x.shape)}")
    m = Normaliser.fit(x, normalisation).forward(x).mean(dim=tuple(range(1, x.ndim)))
    return float(m.pow(2).mean().sqrt())


def train_score_model(configs, model, seed: int, epochs: int, batch_size: int = 64, lr: float = 1e-3,
                      ema_decay: float | None = None, z2_augment: bool = False, normalisation: str = "minmax",
                      checkpoint=None, device=None, amp: bool = False, metadata: dict | None = None,
                      dtype=torch.float32, progress_bar: bool = True, zero_mode_weight: float = 1.0):
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
                      z2_augment=z2_augment, checkpoint=checkpoint, device=device, amp=amp, metadata=meta,
                      zero_mode_weight=zero_mode_weight)
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
           "check_lattice", "build_score_model", "effective_action", "score_model_request", "cached_score_model",
           "cached_dm_ensemble", "tweedie_denoise"]


# ---------------------------------------------------------------------------- cached workflow
def _request_hash(request: dict) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:16]


def score_model_request(ensemble, model, *, n_train: int, epochs: int, seed: int, batch_size: int = 64,
                        lr: float = 1e-3, ema_decay: float | None = None, z2_augment: bool = False,
                        normalisation: str = "minmax", amp: bool = False, dtype=torch.float32,
                        zero_mode_weight: float = 1.0) -> dict:
    """The JSON request that identifies a trained score model: the training ensemble (its own
    request key), how many of its configurations, the network and SDE, and every training
    setting. Two calls with equal requests train the same model (up to the device)."""
    from .ensemble import lib_version, request_key

    return {"kind": "dm-score-model", "training_ensemble": request_key(ensemble.metadata),
            "theory": ensemble.metadata.get("theory"), "n_train": int(n_train), "model": model.config,
            "epochs": int(epochs), "seed": int(seed), "batch_size": int(batch_size), "lr": float(lr),
            "ema_decay": ema_decay, "z2_augment": bool(z2_augment), "normalisation": normalisation,
            "amp": bool(amp), "dtype": str(dtype).replace("torch.", ""), "lib_version": lib_version(),
            # recorded only when not the paper's 1, so the requests of existing models are unchanged
            **({"zero_mode_weight": float(zero_mode_weight)} if zero_mode_weight != 1.0 else {})}


def cached_score_model(ensemble, model, *, epochs: int, seed: int, n_train: int | None = None, batch_size: int = 64,
                       lr: float = 1e-3, ema_decay: float | None = None, z2_augment: bool = False,
                       normalisation: str = "minmax", amp: bool = False, dtype=torch.float32, device=None,
                       cache_dir=None, progress_bar: bool = True, verbose: bool = True,
                       zero_mode_weight: float = 1.0):
    """Train a score network on the first ``n_train`` configurations of ``ensemble`` (an
    :class:`lib.ensemble.Ensemble`), or load it if a model with exactly these settings is cached.

    ``model`` gives the architecture only (``model.config``); the network is initialised afresh
    from ``seed``, which also seeds the training, so the request determines the result.

    The checkpoint ``dm-<hash>.pt`` in the cache directory (``$DMSQ_CACHE``) is written after
    every epoch, so an interrupted run resumes where it stopped; a finished checkpoint whose
    stored request equals this one is reused, anything else is refused, never overwritten.
    A cached run of the same model with fewer epochs is continued (into a new file; the shorter
    one is kept), which gives the same weights as training from scratch.

    ``zero_mode_weight`` (not in the paper) weights the zero mode in the loss, see
    :func:`lib.training.dsm_loss`.

    Returns ``(sampling_model, state, path)``: the model with EMA weights if EMA is on, in eval
    mode; the checkpoint dictionary (``state["history"]`` is the loss per epoch,
    ``state["metadata"]`` holds the normaliser, the lattice shape and the request).
    """
    from .ensemble import cache_lock, default_cache_dir

    n_train = len(ensemble) if n_train is None else int(n_train)
    if not 1 <= n_train <= len(ensemble):
        raise ValueError(f"n_train must lie between 1 and {len(ensemble)}, got {n_train}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    request = score_model_request(ensemble, model, n_train=n_train, epochs=epochs, seed=seed,
                                  batch_size=batch_size, lr=lr, ema_decay=ema_decay, z2_augment=z2_augment,
                                  normalisation=normalisation, amp=amp, dtype=dtype,
                                  zero_mode_weight=zero_mode_weight)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"dm-{_request_hash(request)}.pt"
    # the initial weights are part of the request through the seed: rebuild the network from its
    # configuration with the global RNG seeded by ``seed`` (and restored afterwards)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_score_model(model.config)
    with cache_lock(path):
        return _train_or_load(path, request, ensemble, model, n_train, epochs, seed, batch_size, lr, ema_decay,
                              z2_augment, normalisation, device, amp, dtype, progress_bar, verbose,
                              zero_mode_weight)


def _shorter_run(path, request, device):
    """A finished cached model whose request differs from ``request`` only by fewer epochs (and
    was trained on the same kind of device), or None. Training is deterministic epoch by epoch and
    has no schedule that depends on the total, so continuing it gives the longer model exactly."""
    want = {k: v for k, v in request.items() if k != "epochs"}
    best = None
    for other in sorted(path.parent.glob("dm-*.pt")):
        if other == path:
            continue
        try:
            state = load_checkpoint(other)
        except (ValueError, OSError):
            continue
        req = state.get("metadata", {}).get("request") or {}
        if ({k: v for k, v in req.items() if k != "epochs"} == want and req.get("epochs", 0) < request["epochs"]
                and state["epoch"] >= req["epochs"] and state["device_type"] == resolve_device(device).type
                and (best is None or state["epoch"] > best[1]["epoch"])):
            best = (other, state)
    return best


def _train_or_load(path, request, ensemble, model, n_train, epochs, seed, batch_size, lr, ema_decay, z2_augment,
                   normalisation, device, amp, dtype, progress_bar, verbose, zero_mode_weight=1.0):
    from .ensemble import atomic_torch_save

    if not path.exists():
        shorter = _shorter_run(path, request, device)
        if shorter is not None:  # continue a shorter cached run of the same model instead of starting afresh
            other, state = shorter
            state["metadata"] = {**state["metadata"], "request": request, "continued_from": other.name}
            atomic_torch_save(state, path)
            if verbose:
                print(f"continuing the cached {state['epoch']}-epoch model {other.name} to {epochs} epochs")
    if path.exists():
        state = load_checkpoint(path)
        if state.get("metadata", {}).get("request") != request:
            raise ValueError(f"cache file {path} holds a different model; it was not overwritten — remove it by hand")
        if state["epoch"] >= epochs:
            if verbose:
                print(f"loaded cached score model {path} ({state['epoch']} epochs)")
            model, state = load_model(path, device=device, ema=True)
            return model, state, path
        if verbose:
            print(f"resuming {path} at epoch {state['epoch']} of {epochs}")
    meta = {"request": request, "training_ensemble": ensemble.metadata}
    trainer = train_score_model(ensemble.configs[:n_train], model, seed=seed, epochs=epochs, batch_size=batch_size,
                                lr=lr, ema_decay=ema_decay, z2_augment=z2_augment, normalisation=normalisation,
                                checkpoint=path, device=device, amp=amp, metadata=meta, dtype=dtype,
                                progress_bar=progress_bar, zero_mode_weight=zero_mode_weight)
    if verbose:
        print(f"trained score model {path} ({epochs} epochs, {sum(trainer.epoch_seconds):.0f} s)")
    model, state = load_model(path, device=device, ema=True)
    return model, state, path


def cached_dm_ensemble(checkpoint, n: int, seed: int, lattice_shape=None, sampler: str = "em", n_steps: int = 500,
                       eps: float = 1e-3, batch_size: int = 1024, device=None, cache_dir=None,
                       progress_bar: bool = True, verbose: bool = True):
    """Generate ``n`` configurations from a checkpoint (:func:`generate`), or load them if an
    ensemble with exactly these settings was generated before from the same checkpoint.

    The ensemble's metadata names the sampler ``"dm"``, the theory the model was trained on
    (with L replaced when generating another lattice size), the checkpoint's request and the
    sampling settings. Batches already generated are kept next to the cache file, so an
    interrupted run resumes batch by batch. Returns an :class:`lib.ensemble.Ensemble`.
    """
    from .ensemble import atomic_torch_save, cached_ensemble, default_cache_dir, make_metadata

    model, state = load_model(checkpoint, device=device, ema=True)
    meta_in = state.get("metadata", {})
    shape = check_lattice(model, meta_in, lattice_shape)
    theory = dict(meta_in.get("training_ensemble", {}).get("theory") or {"name": "field"})
    if "L" in theory:
        theory["L"] = int(shape[0])
    model_request = meta_in.get("request") or {"checkpoint_epoch": state["epoch"],
                                               "hyperparameters": state["hyperparameters"]}
    settings = {"model": _request_hash(model_request), "n_configs": int(n), "sampler": sampler,
                "n_steps": int(n_steps), "eps": float(eps), "batch_size": int(batch_size),
                "lattice_shape": list(shape), "ema": True}
    meta = make_metadata(theory, "dm", settings, seed)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    partial = cache / f"dm-partial-{_request_hash(meta)}.pt"

    def make():
        done = torch.load(partial) if partial.exists() else []
        n_batches = math.ceil(n / batch_size)
        bar = progress(total=n_batches, desc="generating", initial=len(done), disable=not progress_bar, unit="batch")
        for b in range(len(done), n_batches):
            nb = min(batch_size, n - b * batch_size)
            x, _ = generate(model, nb, seed + b, lattice_shape=shape, normaliser=meta_in.get("normaliser"),
                            sampler=sampler, n_steps=n_steps, eps=eps, batch_size=nb, device=device,
                            progress_bar=False)
            done.append(x)
            cache.mkdir(parents=True, exist_ok=True)
            atomic_torch_save(done, partial)
            bar.update(1)
        bar.close()
        configs = torch.cat(done)
        return configs, {"model_request": model_request, "device": str(resolve_device(device))}

    ens = cached_ensemble(meta, make, cache_dir=cache, verbose=verbose)
    if partial.exists():
        partial.unlink()
    return ens


@torch.no_grad()
def tweedie_denoise(model, x_t: torch.Tensor, t) -> torch.Tensor:
    r"""The posterior mean of the clean field given a noisy one (Tweedie's formula), from the score:

    .. math:: \mathbb E[φ_0 \mid φ_t] = \frac{φ_t + Ξ(t)\, s_θ(φ_t, t)}{f(t, 0)}

    (VE: f = 1). With the exact score this is exact; applied to a trained model it shows, mode by
    mode, what the model has learned to denoise at time t. ``x_t`` is in the network's units.
    """
    sde = model.sde
    tt = torch.as_tensor(t, dtype=torch.float64)
    s = model(x_t, torch.full((x_t.shape[0],), float(tt), dtype=x_t.dtype, device=x_t.device))
    return (x_t + float(sde.Xi(tt)) * s) / float(sde.f(tt))
