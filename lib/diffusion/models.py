"""Score models for lattices and their cached training: the default network for a lattice
(the paper's U-Net, App. A; an MLP for few degrees of freedom), the scales that precondition it
from the training data, training on an ensemble, and :func:`cached_score_model`, which trains a
model once per request (training ensemble, network, settings, seed), resumes an interrupted run,
continues a shorter one, and loads a model that ships with the book (:mod:`.shipped`) instead of
training it.
"""
from __future__ import annotations

import numpy as np
import torch

from ..rng import check_seed
from ..runtime import resolve_device
from ..storage.cache import cache_dir as _cache_dir
from ..storage.cache import cache_lock, move_aside, shown
from ..storage.ensembles import CHECKSUM
from ..storage.files import content_hash, lib_version, save_checkpoint
from .networks import LatticeUNet, MLPScore, build_score_model
from .shipped import shipped_checkpoint
from .training import Normaliser, Trainer, TrainSettings, load_checkpoint, load_model, save_epoch_seconds


def default_model(sde, lattice_shape, channels=(32, 64, 128, 256), strides=(1, 2, 2, 2), odd=False,
                  hidden=(64, 64), embed_dim=None, zero_mode_head: bool = False, zero_mode_sd: float = 0.5,
                  skip_var: float | None = None):
    """A U-Net for 2D lattices (optionally with a zero-mode head of scale ``zero_mode_sd``, see
    :class:`lib.diffusion.networks.LatticeUNet` and :func:`zero_mode_scale`), an MLP for flat inputs of few
    degrees of freedom."""
    if len(lattice_shape) == 2:
        return LatticeUNet(sde, channels=channels, strides=strides, odd=odd, embed_dim=embed_dim or 256,
                           zero_mode_head=zero_mode_head, zero_mode_sd=zero_mode_sd, skip_var=skip_var)
    if len(lattice_shape) == 1:
        return MLPScore(sde, dim=lattice_shape[0], hidden=hidden, odd=odd, embed_dim=embed_dim or 32,
                        skip_var=skip_var)
    raise ValueError(f"no default score network for lattice shape {lattice_shape}")


def zero_mode_scale(configs, normalisation: str = "minmax") -> float:
    r"""The scale s_d of the zero-mode head for a training set: the root mean square of the
    magnetisation in the network's units, s_d = ⟨(a M + b)²⟩^{1/2} with the normalisation
    y = a φ + b fitted to ``configs``. The head's preconditioning (see
    :class:`lib.diffusion.networks.LatticeUNet`) keeps the inputs and outputs of its MLP of order one when
    s_d is the scale of the data's zero mode: about 0.7 in the broken phase after min–max
    normalisation, a few hundredths in the symmetric phase, where M ≈ 0 ± √(χ₂/V)."""
    x = torch.as_tensor(np.asarray(configs) if not isinstance(configs, torch.Tensor) else configs).double()
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"expected configurations of shape (n, *lattice), got {tuple(x.shape)}")
    m = Normaliser.fit(x, normalisation).forward(x).mean(dim=tuple(range(1, x.ndim)))
    return float(m.pow(2).mean().sqrt())


def site_variance(configs, normalisation: str = "minmax") -> float:
    """The per-site variance of a training set in the network's units (after the normalisation
    fitted to it): the v of a score model's Gaussian skip (``skip_var``)."""
    x = torch.as_tensor(np.asarray(configs) if not isinstance(configs, torch.Tensor) else configs).double()
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"expected at least two configurations of shape (n, *lattice), got {tuple(x.shape)}")
    y = Normaliser.fit(x, normalisation).forward(x)
    return float(y.var())


def train_score_model(configs, model, settings: TrainSettings | None = None, *, seed: int, checkpoint=None,
                      device=None, metadata: dict | None = None, progress_bar: bool = True, resume: bool = True,
                      validation=None, **overrides) -> Trainer:
    """Normalise ``configs`` (n, *lattice) as ``settings.normalisation`` says, train ``model`` with
    denoising score matching for ``settings.epochs`` and return the :class:`Trainer` (its
    checkpoint, if any, holds everything needed to sample: model configuration, weights,
    normaliser, settings, training metadata). Keyword arguments override single settings.
    ``validation``: held-out configurations (physical units, normalised like ``configs``) whose DSM
    loss is recorded every epoch; needed for early stopping (``patience``).
    """
    settings = TrainSettings.build(settings, **overrides)
    x = torch.as_tensor(np.asarray(configs) if not isinstance(configs, torch.Tensor) else configs)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"expected configurations of shape (n, *lattice), got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("the training configurations contain NaN or inf")
    norm = Normaliser.fit(x, settings.normalisation)
    if (settings.z2_augment or getattr(model, "odd", False)) and not norm.symmetric:
        raise ValueError("Z2 augmentation / an odd network need a symmetric normalisation: use 'maxabs' or 'none'")
    data = norm.forward(x.double()).to(settings.torch_dtype)
    held_out = None
    if validation is not None:
        v = torch.as_tensor(np.asarray(validation) if not isinstance(validation, torch.Tensor) else validation)
        if v.ndim != x.ndim or tuple(v.shape[1:]) != tuple(x.shape[1:]) or v.shape[0] < 1:
            raise ValueError(f"held-out configurations must have shape (m, {', '.join(map(str, x.shape[1:]))}), "
                             f"got {tuple(v.shape)}")
        held_out = norm.forward(v.double()).to(settings.torch_dtype)
    meta = {**(metadata or {}), "normaliser": norm.to_dict(), "lattice_shape": list(x.shape[1:])}
    trainer = Trainer(model.to(settings.torch_dtype), data, settings, seed=seed, checkpoint=checkpoint,
                      device=device, metadata=meta, resume=resume, validation=held_out)
    trainer.fit(progress_bar=progress_bar)
    return trainer


def check_lattice(model, state_metadata: dict, lattice_shape) -> tuple:
    """The lattice shape to generate, checked against what the model supports."""
    trained = tuple(state_metadata.get("lattice_shape", ()))
    shape = tuple(int(v) for v in lattice_shape) if lattice_shape is not None else trained
    if any(v < 1 for v in shape):
        raise ValueError(f"lattice shape must be positive, got {shape}")
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


def ensemble_identity(metadata: dict) -> str:
    """A hash of an ensemble's metadata (all of it but the device it was made on and the checksum of
    its configurations, which files written before lib stored one lack): names the training
    ensemble in a model's request."""
    return content_hash({k: v for k, v in metadata.items() if k not in ("device", CHECKSUM)})


def score_model_request(ensemble, model, settings: TrainSettings, *, n_train: int, seed: int,
                        n_validation: int = 0) -> dict:
    """The JSON request that identifies a trained score model: the training ensemble (its own
    cache key), how many of its configurations (and how many after them are held out), the
    network and SDE, the training settings' key and the seed. Two calls with equal requests train
    the same model (up to the device)."""
    request = {"kind": "dm-score-model", "training_ensemble": ensemble_identity(ensemble.metadata),
               "theory": ensemble.metadata.get("theory"), "n_train": int(n_train), "model": model.config,
               "settings": settings.key(), "seed": int(seed), "lib_version": lib_version()}
    if n_validation:
        request["n_validation"] = int(n_validation)
    return request


def cached_score_model(ensemble, model, settings: TrainSettings | None = None, *, seed: int,
                       n_train: int | None = None, n_validation: int = 0, device=None, cache_dir=None,
                       progress_bar: bool = True, verbose: bool = True, **overrides):
    """Train a score network on the first ``n_train`` configurations of ``ensemble`` (an
    :class:`lib.storage.Ensemble`) with ``settings`` (:class:`TrainSettings`; keyword arguments
    override single settings), or load it if a model with exactly this request is cached.

    ``model`` gives the architecture only (``model.config``); the network is initialised afresh
    from ``seed``, which also seeds the training, so the request determines the result.

    ``n_validation``: hold out the next ``n_validation`` configurations of the ensemble (after the
    first ``n_train``) and record their DSM loss every epoch (:class:`HeldOutLoss`); with the
    setting ``patience`` training stops when it no longer improves, and the returned model carries
    the weights of its best epoch.

    The checkpoint ``dm-<hash>.pt`` in the cache directory (``$DMSQ_CACHE``) is written after
    every epoch, so an interrupted run resumes where it stopped; a finished checkpoint whose
    stored request equals this one is reused, a foreign one is refused, never overwritten. A
    cached run of the same model with fewer epochs is continued (into a new file; the shorter
    one is kept), which gives the same weights as training from scratch.

    A model that ships with the book (``models/manifest.json``, :mod:`lib.diffusion.shipped`) with
    exactly this request is loaded from ``models/`` instead, after checking its SHA-256.

    Returns ``(sampling_model, state, path)``: the model with EMA weights if EMA is on, in eval
    mode; the checkpoint dictionary (``state["history"]`` is the loss per epoch,
    ``state["metadata"]`` holds the normaliser, the lattice shape and the request).
    """
    settings = TrainSettings.build(settings, **overrides)
    seed = check_seed(seed)
    n_train = len(ensemble) if n_train is None else int(n_train)
    if not 1 <= n_train <= len(ensemble):
        raise ValueError(f"n_train must lie between 1 and {len(ensemble)}, got {n_train}")
    n_validation = int(n_validation)
    if not 0 <= n_validation <= len(ensemble) - n_train:
        raise ValueError(f"n_validation must lie between 0 and {len(ensemble) - n_train} (the configurations "
                         f"after the first n_train = {n_train}), got {n_validation}")
    if settings.patience is not None and not n_validation:
        raise ValueError("early stopping (patience) needs held-out configurations: pass n_validation > 0")
    request = score_model_request(ensemble, model, settings, n_train=n_train, seed=seed, n_validation=n_validation)
    path = _cache_dir(cache_dir) / f"dm-{content_hash(request)}.pt"
    shipped = shipped_checkpoint(content_hash(request))
    if shipped is not None:  # a model that ships with the book (models/): no training
        model, state = load_model(shipped, device=device, ema=True)
        if state["metadata"].get("request") != request:
            raise ValueError(f"shipped model {shipped} holds another training request than its manifest entry says")
        if verbose:
            print(f"loaded the shipped score model models/{shipped.name} ({state['epoch']} epochs, trained on "
                  f"{state['device_type']})")
        return model, state, shipped
    with cache_lock(path):
        return _train_or_load(path, request, ensemble, model.config, settings, n_train, seed, device, progress_bar,
                              verbose, n_validation)


def _without_epochs(request: dict) -> dict:
    return {**request, "settings": {k: v for k, v in request["settings"].items() if k != "epochs"}}


def _shorter_run(path, request, device):
    """A finished cached model whose request differs from ``request`` only by fewer epochs (and
    was trained on the same kind of device), or None. Training is deterministic epoch by epoch and
    has no schedule that depends on the total, so continuing it gives the longer model exactly."""
    want = _without_epochs(request)
    best = None
    for other in sorted(path.parent.glob("dm-*.pt")):
        if other == path or other.name.startswith("dm-partial-"):
            continue
        try:
            state = load_checkpoint(other)
        except (ValueError, OSError):
            continue
        req = state["metadata"].get("request") or {}
        if (isinstance(req.get("settings"), dict) and _without_epochs(req) == want
                and req["settings"].get("epochs", 0) < request["settings"]["epochs"]
                and state["epoch"] >= req["settings"]["epochs"] and not state.get("stopped_early")
                and state["device_type"] == resolve_device(device).type
                and (best is None or state["epoch"] > best[1]["epoch"])):
            best = (other, state)
    return best


def _train_or_load(path, request, ensemble, model_config, settings, n_train, seed, device, progress_bar, verbose,
                   n_validation=0):
    if not path.exists():
        shorter = _shorter_run(path, request, device)
        if shorter is not None:  # continue a shorter cached run of the same model instead of starting afresh
            other, state = shorter
            state["metadata"] = {**state["metadata"], "request": request, "continued_from": other.name}
            state["settings"] = settings.to_dict()
            seconds = state.pop("epoch_seconds")
            save_checkpoint(state, path)
            save_epoch_seconds(path, seconds)
            if verbose:
                print(f"continuing the cached {state['epoch']}-epoch model {other.name} to {settings.epochs} epochs")
    if path.exists():
        try:
            state = load_checkpoint(path)
        except ValueError as exc:
            move_aside(path, str(exc).split(" ", 1)[-1])
            state = None
        if state is not None:
            if state["metadata"].get("request") != request:
                raise ValueError(f"cache file {path} holds a different model; it was not overwritten — "
                                 "remove it by hand")
            if state["epoch"] >= settings.epochs or state.get("stopped_early"):
                if verbose:
                    print(f"loaded cached score model {shown(path)} ({state['epoch']} epochs)")
                model, state = load_model(path, device=device, ema=True)
                return model, state, path
            if verbose:
                print(f"resuming {shown(path)} at epoch {state['epoch']} of {settings.epochs}")
    meta = {"request": request, "training_ensemble": ensemble.metadata}
    model = build_score_model(model_config, seed=seed)
    validation = ensemble.configs[n_train:n_train + n_validation] if n_validation else None
    trainer = train_score_model(ensemble.configs[:n_train], model, settings, seed=seed, checkpoint=path,
                                device=device, metadata=meta, progress_bar=progress_bar, validation=validation)
    if verbose:
        print(f"trained score model {shown(path)} ({trainer.epoch} epochs, {sum(trainer.epoch_seconds):.0f} s"
              + (f"; stopped early, best held-out loss at epoch {trainer.best_epoch}" if trainer.stopped_early
                 else "") + ")")
    model, state = load_model(path, device=device, ema=True)
    return model, state, path
