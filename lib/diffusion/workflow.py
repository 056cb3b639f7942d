"""The diffusion-model workflow: train a score network on an ensemble, generate an ensemble
from a checkpoint (in the same file format as HMC ensembles), and their cached versions, keyed
by the stage settings (:class:`~lib.diffusion.training.TrainSettings`,
:class:`~lib.diffusion.samplers.SampleSettings`).

Generation draws the noise of configuration i from its own stream (seed, i)
(:class:`lib.rng.SampleStreams`), so the batch size, resuming and the device split change
nothing; the batch size is not part of any cache key.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..rng import SampleStreams, check_seed, default_block
from ..runtime import progress, resolve_device
from ..settings import positive_int
from ..storage.cache import cache_dir as _cache_dir
from ..storage.cache import cache_lock, cached_ensemble, move_aside, request_key, shown
from ..storage.ensembles import make_metadata
from ..storage.files import array_hash, content_hash, lib_version, load_checkpoint_file, save_checkpoint
from .likelihood import LikelihoodResult, LikelihoodSettings, log_likelihood
from .paths import PathSettings, path_sample
from .networks import LatticeUNet, MLPScore, build_score_model
from .samplers import SampleSettings, prior_sample, sample
from .shipped import shipped_checkpoint
from .training import Normaliser, Trainer, TrainSettings, load_checkpoint, load_model, save_epoch_seconds

STREAM_DOMAIN = "dm"
PROBE_DOMAIN = "dm-likelihood-probes"
PATH_DOMAIN = "dm-path"


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


def _batches(first: int, n: int, batch_size: int, block: int):
    """(start, size) of the batches covering samples first … first + n − 1, cut at multiples of
    the stream block so that each batch holds whole streams."""
    step = max(block, batch_size - batch_size % block)
    out, i = [], first
    while i < first + n:
        nb = min(step, first + n - i)
        out.append((i, nb))
        i += nb
    return out


@torch.no_grad()
def generate(model, n: int, seed: int, settings: SampleSettings | None = None, *, lattice_shape=None,
             normaliser: dict | None = None, batch_size: int = 1024, device=None, record_times=None,
             progress_bar: bool = True, first: int = 0, on_batch=None, **overrides):
    """Generate configurations ``first, …, first + n − 1`` with the sampler of ``settings``
    (:class:`SampleSettings`; keyword arguments override single settings, e.g. ``n_steps=100``),
    in batches of ``batch_size`` on ``device``, mapped back to physical fields.

    Configuration i is made from its own random stream (seed, i): the result does not depend on
    the batch size. ``on_batch(start, configs)`` is called after every finished batch (to keep
    it). Returns ``(configs (n, *lattice) float64 on the CPU, records)`` where records maps each
    requested diffusion time to the (physical) batch at that time (first batch, EM only).
    """
    settings = SampleSettings.build(settings, **overrides)
    seed = check_seed(seed)
    positive_int("n", n)
    positive_int("batch_size", batch_size)
    if lattice_shape is None:
        raise ValueError("generate needs the lattice shape")
    device = resolve_device(device)
    model = model.to(device).eval()
    dtype = next(model.parameters()).dtype
    shape = tuple(lattice_shape)
    norm = Normaliser.from_dict(normaliser) if normaliser else Normaliser("none")
    block = default_block(math.prod(shape))
    batches = _batches(first, n, batch_size, block)
    out, records = [], {}
    for b, (start, nb) in enumerate(progress(batches, desc="generating", disable=not progress_bar or len(batches) == 1)):
        streams = SampleStreams(STREAM_DOMAIN, seed, start, nb, device, block=block)
        x_T = prior_sample(model.sde, (nb, *shape), streams, device, dtype)
        res = sample(model, model.sde, x_T, settings, streams, progress_bar=progress_bar and len(batches) == 1,
                     record_times=record_times if b == 0 else None)
        if b == 0:
            records = {t: norm.inverse(v.double()).cpu() for t, v in res.records.items()}
        x = norm.inverse(res.x.double()).cpu()
        out.append(x)
        if on_batch is not None:
            on_batch(start, x)
    return torch.cat(out), records


@torch.no_grad()
def effective_action(score_fn, x_grid, t, device=None, dtype=None) -> np.ndarray:
    r"""The effective action of a one-component score, integrated along a grid (paper eqs. 3.11, 3.20):

    .. math:: S_{\rm DM}(φ, t) = -\int_{φ_0}^{φ} dφ'\, s(φ', t), \qquad ∂_φ S_{\rm DM} = -s,

    so that e^{−S_DM(·, t)} ∝ p_t, the density whose score is ``s`` at diffusion time t (the
    reverse-process time of the paper is τ = T − t). ``score_fn(x, t)`` takes x of shape (n, 1)
    and t of shape (n,) — a trained :class:`lib.diffusion.networks.MLPScore` with ``dim=1`` or an exact
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


# ---------------------------------------------------------------------------- cached workflow
def ensemble_identity(metadata: dict) -> str:
    """A hash of an ensemble's metadata (all of it but the device it was made on): names the
    training ensemble in a model's request."""
    return content_hash({k: v for k, v in metadata.items() if k != "device"})


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


def _model_request(state: dict) -> dict:
    """What identifies a checkpoint's model in a derived result's request: its own cache request,
    or, for a checkpoint trained by hand, its epoch, settings, seed and architecture."""
    return state["metadata"].get("request") or {"checkpoint_epoch": state["epoch"], "settings": state["settings"],
                                                "seed": state["seed"], "model": state["model_config"]}


def _trained_theory(state: dict, shape) -> dict:
    """The theory a checkpoint's model was trained on, with L set to the lattice ``shape``."""
    theory = dict(state["metadata"].get("training_ensemble", {}).get("theory") or {"name": "field"})
    if "L" in theory:
        theory["L"] = int(shape[0])
    return theory


def weights_hash(model) -> str:
    """16 hex digits of the SHA-256 of a network's parameters and buffers (names, shapes, dtypes and
    bytes, in the CPU's byte order): the identity of the weights a result was computed with."""
    import hashlib

    h = hashlib.sha256()
    for name, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def model_identity(model, state: dict) -> dict:
    """What a derived result's cache key says about the model it came from: the content that
    determines its output — the hash of the weights it samples with, the normaliser and the
    training data's fingerprint — beside the model's request (:func:`_model_request`). Retraining a
    checkpoint in place, or two models trained on different data with the same flags, therefore
    never share a cache entry; a shipped model and the same model trained on a CPU (bitwise equal
    weights) do."""
    return {"request": _model_request(state), "weights": weights_hash(model),
            "normaliser": state["metadata"].get("normaliser"), "data_fingerprint": state.get("data_fingerprint")}


def _derived_request(model, state: dict, theory: dict, sampler: str, settings, seed: int, **extra) -> dict:
    """The cache request of a result derived from a checkpoint's model (generated ensembles,
    log-likelihoods, DM-MC proposals): the hash of the model's identity (:func:`model_identity`:
    its weights, normaliser, training data and request), the stage's settings key, the seed and
    ``extra`` (size, data hashes, lattice); never the batch size or the device."""
    request = make_metadata(theory, sampler, settings, seed, model=content_hash(model_identity(model, state)),
                            **extra)
    request["settings"] = settings.key()
    return request


def dm_request(model, state: dict, n: int, seed: int, settings: SampleSettings, shape) -> dict:
    """The cache request of a generated ensemble: the model's identity, the sampling settings'
    key, the lattice, the size and the seed (not the batch size, not the device)."""
    request = _derived_request(model, state, _trained_theory(state, shape), "dm", settings, seed, n_configs=int(n),
                               lattice_shape=list(shape))
    return request, _model_request(state)


def cached_dm_ensemble(checkpoint, n: int, seed: int, settings: SampleSettings | None = None, *, lattice_shape=None,
                       batch_size: int = 1024, device=None, cache_dir=None, progress_bar: bool = True,
                       verbose: bool = True, **overrides):
    """Generate ``n`` configurations from a checkpoint (:func:`generate`), or load them if an
    ensemble with exactly this request was generated before from the same model.

    The ensemble's metadata names the sampler ``"dm"``, the theory the model was trained on
    (with L replaced when generating another lattice size), the model's request and the
    sampling settings. Finished batches are kept next to the cache file, so an interrupted run
    resumes where it stopped, whatever the batch size. Returns an :class:`lib.storage.Ensemble`.
    """
    settings = SampleSettings.build(settings, **overrides)
    seed = check_seed(seed)
    positive_int("n", n)
    model, state = load_model(checkpoint, device=device, ema=settings.ema)
    shape = check_lattice(model, state["metadata"], lattice_shape)
    request, model_request = dm_request(model, state, n, seed, settings, shape)
    cache = _cache_dir(cache_dir)
    partial = cache / f"dm-partial-{request_key(request)}.pt"

    def make():
        done = _load_partial(partial, request)["configs"]
        count = sum(len(x) for x in done)

        def keep(start, x):
            done.append(x)
            save_checkpoint({"request": request, "configs": done}, partial)

        if count < n:
            generate(model, n - count, seed, settings, lattice_shape=shape, normaliser=state["metadata"].get("normaliser"),
                     batch_size=batch_size, device=device, progress_bar=progress_bar, first=count, on_batch=keep)
        configs = torch.cat(done)[:n]
        return configs, {"model_request": model_request, "device": str(resolve_device(device))}

    ens = cached_ensemble(request, make, cache_dir=cache, verbose=verbose)
    if partial.exists():
        partial.unlink()
    return ens


def _load_partial(partial: Path, request: dict, keys=("configs",)) -> dict:
    """The batches made so far for ``request``: ``{key: list of tensors}`` for each of ``keys``,
    one entry per finished batch (empty lists if there is no partial file; a damaged or foreign
    file, or one whose lists are not finite tensors of one length, is moved aside)."""
    empty = {k: [] for k in keys}
    if not partial.exists():
        return empty
    try:
        saved = load_checkpoint_file(partial, "partial ensemble")
        ok = (isinstance(saved, dict) and saved.get("request") == request
              and all(isinstance(saved.get(k), list) for k in keys)
              and len({len(saved[k]) for k in keys}) == 1
              and all(isinstance(x, torch.Tensor) and bool(torch.isfinite(x).all()) for k in keys for x in saved[k]))
    except ValueError as exc:
        ok, saved = False, str(exc)
    if not ok:
        move_aside(partial, "not a partial ensemble of this request")
        return empty
    return {k: list(saved[k]) for k in keys}


# ---------------------------------------------------------------------------- likelihood of configurations
def model_log_likelihood(model, configs, seed: int, settings: LikelihoodSettings | None = None, *,
                         normaliser: dict | None = None, batch_size: int = 64, device=None, first: int = 0,
                         progress_bar: bool = True, on_batch=None, **overrides) -> LikelihoodResult:
    r"""log q(φ) of physical configurations ``configs`` (n, *lattice) under a trained model, by the
    probability-flow ODE (:func:`lib.diffusion.likelihood.log_likelihood`, paper eq. 3.15) with
    ``settings`` (:class:`LikelihoodSettings`; keyword arguments override single settings).

    The network sees y = aφ + b (``normaliser``, as stored in the checkpoint), so the density of the
    physical field carries the Jacobian of that map:

    .. math:: \log q_φ(φ) = \log q_y(aφ + b) + V \log a .

    Configuration i's Hutchinson probes come from its own stream (seed, ``first`` + i). The
    adaptive solver takes one step size for a batch, so log q changes with the batch composition
    at the level of the solver tolerance (not bitwise). ``on_batch(start, log_q, nfe)`` is called
    after every batch. Returns a :class:`LikelihoodResult` with log_q (float64, CPU, nats), the
    encoded x_T (network units) and the solver's right-hand-side evaluations summed over batches.
    """
    settings = LikelihoodSettings.build(settings, **overrides)
    seed = check_seed(seed)
    positive_int("batch_size", batch_size)
    device = resolve_device(device)
    x = torch.as_tensor(configs)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"configs must have shape (n >= 1, *lattice), got {tuple(x.shape)}")
    model = model.to(device).eval()
    dtype = next(model.parameters()).dtype
    norm = Normaliser.from_dict(normaliser) if normaliser else Normaliser("none")
    jacobian = math.prod(x.shape[1:]) * math.log(norm.a)
    starts = list(range(0, x.shape[0], batch_size))
    log_q, x_T, nfes = [], [], []
    for start in progress(starts, desc="log q", disable=not progress_bar or len(starts) == 1):
        y = norm.forward(x[start:start + batch_size].to(device=device, dtype=torch.float64)).to(dtype)
        streams = SampleStreams(PROBE_DOMAIN, seed, first + start, y.shape[0], device)
        res = log_likelihood(model, model.sde, y, eps=settings.eps, n_probes=settings.n_probes, generator=streams,
                             rtol=settings.rtol, atol=settings.atol, method=settings.method, trace=settings.trace,
                             probe=settings.probe)
        lq = res.log_q.double().cpu() + jacobian
        log_q.append(lq), x_T.append(res.x_T.cpu()), nfes.append(res.nfe)
        if on_batch is not None:
            on_batch(start, lq, res.nfe)
    return LikelihoodResult(torch.cat(log_q), torch.cat(x_T), sum(nfes))


def cached_log_likelihood(checkpoint, configs, seed: int, settings: LikelihoodSettings | None = None, *,
                          batch_size: int = 64, device=None, cache_dir=None, progress_bar: bool = True,
                          verbose: bool = True, **overrides) -> np.ndarray:
    """:func:`model_log_likelihood` of ``configs`` under the model in ``checkpoint``, or the cached
    result of exactly this request: the model's request, the configurations' content hash, the
    likelihood settings' key and the seed (not the batch size, not the device). Finished batches
    are kept next to the cache file, so an interrupted run resumes. Returns an array (n, 2):
    log q in nats and the network evaluations of the batch each configuration was in."""
    settings = LikelihoodSettings.build(settings, **overrides)
    seed = check_seed(seed)
    model, state = load_model(checkpoint, device=device, ema=settings.ema)
    x = torch.as_tensor(configs).double()
    shape = check_lattice(model, state["metadata"], tuple(x.shape[1:]))
    # stored as an "ensemble" of rows (log q, nfe); the theory of the configurations is kept aside
    request = _derived_request(model, state, {"name": "loglik"}, "dm", settings, seed, n_configs=int(x.shape[0]),
                               configs=array_hash(x), columns=["log_q", "nfe"],
                               config_theory=_trained_theory(state, shape))
    cache = _cache_dir(cache_dir)
    partial = cache / f"loglik-partial-{request_key(request)}.pt"

    def make():
        done = _load_partial(partial, request)["configs"]
        count = sum(len(r) for r in done)

        def keep(start, lq, nfe):
            done.append(torch.stack([lq, torch.full_like(lq, float(nfe))], 1))
            save_checkpoint({"request": request, "configs": done}, partial)

        if count < len(x):
            model_log_likelihood(model, x[count:], seed, settings, normaliser=state["metadata"].get("normaliser"),
                                 batch_size=batch_size, device=device, first=count, progress_bar=progress_bar,
                                 on_batch=keep)
        return torch.cat(done), {"device": str(resolve_device(device))}

    out = cached_ensemble(request, make, cache_dir=cache, verbose=False)
    if partial.exists():
        partial.unlink()
    if verbose:
        print(f"log q of {len(x)} configurations ({settings.trace} trace"
              f"{'' if settings.trace == 'exact' else f', {settings.n_probes} {settings.probe} probes'}, "
              f"rtol {settings.rtol:g}): {shown(out.path)}")
    return out.configs


# ---------------------------------------------------------------------------- path-space proposals (DM-MC)
def data_spectrum(configs, normaliser: dict | None = None) -> torch.Tensor:
    """The power spectrum C(p) = ⟨|ỹ(p)|²⟩/V of an ensemble in the network's units y = aφ + b
    (:meth:`lib.theories.GaussianField.fit`): the per-mode scale of the path kernels."""
    from ..theories import GaussianField

    norm = Normaliser.from_dict(normaliser) if normaliser else Normaliser("none")
    return GaussianField.fit(norm.forward(torch.as_tensor(configs, dtype=torch.float64))).spectrum


def dm_path_proposals(model, n: int, seed: int, settings: PathSettings | None = None, *, theory, spectrum,
                      normaliser: dict | None = None, batch_size: int = 256, device=None, first: int = 0,
                      progress_bar: bool = True, on_batch=None, **overrides):
    r"""Proposals ``first, …, first + n − 1`` for DM-MC with exact path-space weights
    (:mod:`lib.diffusion.paths`): configurations φ (physical, float64, CPU) and

    .. math:: \log W = -S(φ) - V\log a + \sum_k \log F - \log π - \sum_k \log Q

    (log p of the field in network units y = aφ + b, up to −log Z), so that the independence
    chain :func:`lib.mcmc.independence_chain` ``(log_w, 0)`` is exact for e^{−S}. Path i draws
    from its own stream (seed, i) and costs ``settings.n_steps`` network evaluations.
    ``on_batch(start, configs, log_w)`` after every batch. Returns ``(configs, log_w)``."""
    settings = PathSettings.build(settings, **overrides)
    seed = check_seed(seed)
    positive_int("n", n)
    positive_int("batch_size", batch_size)
    device = resolve_device(device)
    model = model.to(device).eval()
    dtype = next(model.parameters()).dtype
    shape = tuple(theory.lattice_shape)
    norm = Normaliser.from_dict(normaliser) if normaliser else Normaliser("none")
    jacobian = math.prod(shape) * math.log(norm.a)
    out, weights = [], []
    starts = list(range(first, first + n, batch_size))
    for start in progress(starts, desc="DM-MC proposals", disable=not progress_bar or len(starts) == 1):
        nb = min(batch_size, first + n - start)
        streams = SampleStreams(PATH_DOMAIN, seed, start, nb, device)
        res = path_sample(model, model.sde, (nb, *shape), settings, spectrum=spectrum, noise=streams, device=device,
                          dtype=dtype, progress_bar=progress_bar and len(starts) == 1)
        phi = norm.inverse(res.x)
        log_w = (-theory.action(phi) - jacobian + res.log_path).cpu()
        out.append(phi.cpu()), weights.append(log_w)
        if on_batch is not None:
            on_batch(start, phi.cpu(), log_w)
    return torch.cat(out), torch.cat(weights)


def cached_dm_path_proposals(checkpoint, n: int, seed: int, settings: PathSettings | None = None, *, theory,
                             spectrum, batch_size: int = 256, device=None, cache_dir=None, progress_bar: bool = True,
                             verbose: bool = True, **overrides):
    """:func:`dm_path_proposals` from a checkpoint, or the cached result of exactly this request:
    the model's request, the target theory, the path settings' key, the spectrum's content hash,
    n and the seed (not the batch size, not the device). Finished batches are kept, so an
    interrupted run resumes. Returns an :class:`lib.storage.Ensemble` whose metadata holds the
    log weights (``metadata["log_weight"]``) and the network evaluations per proposal."""
    settings = PathSettings.build(settings, **overrides)
    seed = check_seed(seed)
    positive_int("n", n)
    model, state = load_model(checkpoint, device=device, ema=settings.ema)
    shape = check_lattice(model, state["metadata"], tuple(theory.lattice_shape))
    spectrum = torch.as_tensor(spectrum, dtype=torch.float64)
    request = _derived_request(model, state, theory.to_dict(), "dm-path", settings, seed, n_configs=int(n),
                               spectrum=array_hash(spectrum), lattice_shape=list(shape))
    cache = _cache_dir(cache_dir)
    partial = cache / f"dm-path-partial-{request_key(request)}.pt"

    def make():
        saved = _load_partial(partial, request, ("configs", "log_weight"))
        done, weights = saved["configs"], saved["log_weight"]
        count = sum(len(x) for x in done)

        def keep(start, phi, log_w):
            done.append(phi), weights.append(log_w)
            save_checkpoint({"request": request, "configs": done, "log_weight": weights}, partial)

        if count < n:
            dm_path_proposals(model, n - count, seed, settings, theory=theory, spectrum=spectrum,
                              normaliser=state["metadata"].get("normaliser"), batch_size=batch_size, device=device,
                              first=count, progress_bar=progress_bar, on_batch=keep)
        log_w = torch.cat(weights)[:n]
        if not bool(torch.isfinite(log_w).all()):
            raise ValueError("some proposals have a non-finite log weight; the network's output is not finite")
        return torch.cat(done)[:n], {"log_weight": [float(v) for v in log_w], "nfe_per_proposal": settings.n_steps,
                                     "device": str(resolve_device(device))}

    ens = cached_ensemble(request, make, cache_dir=cache, verbose=verbose)
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
    tt = torch.as_tensor(t, dtype=torch.float64)  # a scalar time
    s = model(x_t, torch.full((x_t.shape[0],), float(tt), dtype=x_t.dtype, device=x_t.device))
    return (x_t + float(sde.Xi(tt)) * s) / float(sde.f(tt))
