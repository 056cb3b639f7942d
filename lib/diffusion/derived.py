"""Results derived from a trained model, through the cache: generated ensembles
(:func:`cached_dm_ensemble`), log q of configurations (:func:`cached_log_likelihood`) and DM-MC
proposals with path-space weights (:func:`cached_dm_path_proposals`).

All three are one mechanism, :func:`cached_derivation`: settings → request (the model's content,
:func:`model_identity`; the stage's settings key; the seed; the data) → a partial file of finished
batches beside the cache entry → resume from it after an interruption → the cache entry. The
batch size and the device never enter a request.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..rng import check_seed
from ..runtime import resolve_device
from ..settings import positive_int
from ..storage.cache import cache_dir as _cache_dir
from ..storage.cache import cached_ensemble, move_aside, request_key, shown
from ..storage.ensembles import make_metadata
from ..storage.files import array_hash, content_hash, load_checkpoint_file, save_checkpoint
from .generation import STREAM_DOMAIN, dm_path_proposals, generate, model_log_likelihood
from .likelihood import LikelihoodSettings
from .models import check_lattice
from .paths import PathSettings
from .samplers import SampleSettings
from .training import load_model


def _model_request(state: dict) -> dict:
    """What identifies a checkpoint's model in a derived result's request: its own cache request,
    or, for a checkpoint trained by hand, its epoch, settings, seed and architecture."""
    return state["metadata"].get("request") or {"checkpoint_epoch": state["epoch"], "settings": state["settings"],
                                                "seed": state["seed"], "model": state["model_config"]}


def _trained_theory(state: dict, shape) -> dict:
    """The theory a checkpoint's model was trained on, with L set to the lattice ``shape``."""
    theory = dict(state["metadata"].get("training_ensemble", {}).get("theory") or {"name": "field"})
    if "L" in theory:
        theory["L"] = int(shape[-1])
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


def dm_request(model, state: dict, n: int, seed: int, settings: SampleSettings, shape,
               domain: str = STREAM_DOMAIN) -> dict:
    """The cache request of a generated ensemble: the model's identity, the sampling settings'
    key, the lattice, the size, the seed and the stream domain when it is not the default (not
    the batch size, not the device)."""
    extra = {} if domain == STREAM_DOMAIN else {"stream_domain": domain}
    request = _derived_request(model, state, _trained_theory(state, shape), "dm", settings, seed, n_configs=int(n),
                               lattice_shape=list(shape), **extra)
    return request, _model_request(state)


def _load_partial(partial: Path, request: dict, keys=("configs",), shapes: dict | None = None) -> dict:
    """The batches made so far for ``request``: ``{key: list of tensors}`` for each of ``keys``,
    one entry per finished batch (empty lists if there is no partial file; a damaged or foreign
    file, or one whose lists are not finite tensors of one length per batch, or whose rows do not
    have the shape ``shapes[key]`` the request asks for, is moved aside)."""
    empty = {k: [] for k in keys}
    if not partial.exists():
        return empty
    try:
        saved = load_checkpoint_file(partial, "partial ensemble")
    except ValueError as exc:
        saved = str(exc)
    ok = (isinstance(saved, dict) and saved.get("request") == request
          and all(isinstance(saved.get(k), list) for k in keys)
          and len({len(saved[k]) for k in keys}) == 1
          and all(isinstance(x, torch.Tensor) and x.dim() >= 1 and bool(torch.isfinite(x).all())
              for k in keys for x in saved[k])
          and all(len({len(saved[k][i]) for k in keys}) == 1 for i in range(len(saved[keys[0]])))
          and all(tuple(x.shape[1:]) == tuple(want) for k, want in (shapes or {}).items() for x in saved[k]))
    if not ok:
        move_aside(partial, "not a partial ensemble of this request")
        return empty
    return {k: list(saved[k]) for k in keys}


def cached_derivation(request: dict, kind: str, n: int, compute, *, keys=("configs",), shapes: dict | None = None,
                      finish=None, cache_dir=None, verbose: bool = True):
    """The one cached-derivation mechanism: the ensemble of ``n`` rows stored under ``request``,
    made in batches by ``compute(first, keep)`` if it is not cached yet.

    ``compute(first, keep)`` makes rows ``first, …, n − 1`` and calls ``keep(start, *tensors)``
    after every finished batch, one tensor per name in ``keys`` (the first is stored as the
    ensemble's configurations); each finished batch is saved at once in
    ``<cache>/<kind>-partial-<key>.pt``, so an interrupted run resumes with the next batch.
    ``finish(tensors)`` turns the concatenated ``{key: tensor}`` into ``(configs, extra metadata)``
    (default: the first key's rows, no extra metadata). ``shapes``: the shape of one row per key,
    checked on resume. Returns the :class:`lib.storage.Ensemble`."""
    cache = _cache_dir(cache_dir)
    partial = cache / f"{kind}-partial-{request_key(request)}.pt"

    def make():
        saved = _load_partial(partial, request, keys, shapes)
        count = sum(len(x) for x in saved[keys[0]])

        def keep(start, *tensors):
            for k, v in zip(keys, tensors):
                saved[k].append(v)
            save_checkpoint({"request": request, **saved}, partial)

        if count < n:
            compute(count, keep)
        rows = {k: torch.cat(v)[:n] for k, v in saved.items()}
        return finish(rows) if finish is not None else (rows[keys[0]], {})

    ens = cached_ensemble(request, make, cache_dir=cache, verbose=verbose)
    partial.unlink(missing_ok=True)
    return ens


# ---------------------------------------------------------------------------- the three derivations
def cached_dm_ensemble(checkpoint, n: int, seed: int, settings: SampleSettings | None = None, *, lattice_shape=None,
                       batch_size: int = 1024, device=None, cache_dir=None, progress_bar: bool = True,
                       verbose: bool = True, domain: str = STREAM_DOMAIN, **overrides):
    """Generate ``n`` configurations from a checkpoint (:func:`lib.diffusion.generate`), or load
    them if an ensemble with exactly this request was generated before from the same model.

    The ensemble's metadata names the sampler ``"dm"``, the theory the model was trained on
    (with L replaced when generating another lattice size), the model's identity and request and
    the sampling settings. Finished batches are kept (:func:`cached_derivation`), so an
    interrupted run resumes where it stopped, whatever the batch size. Returns an
    :class:`lib.storage.Ensemble`.
    """
    settings = SampleSettings.build(settings, **overrides)
    seed = check_seed(seed)
    positive_int("n", n)
    model, state = load_model(checkpoint, device=device, ema=settings.ema)
    shape = check_lattice(model, state["metadata"], lattice_shape)
    request, model_request = dm_request(model, state, n, seed, settings, shape, domain)

    def compute(first, keep):
        generate(model, n - first, seed, settings, lattice_shape=shape, normaliser=state["metadata"].get("normaliser"),
                 batch_size=batch_size, device=device, progress_bar=progress_bar, first=first, on_batch=keep,
                 domain=domain)

    return cached_derivation(request, "dm", n, compute, shapes={"configs": shape}, cache_dir=cache_dir,
                             verbose=verbose,
                             finish=lambda r: (r["configs"], {"model_request": model_request,
                                                              "device": str(resolve_device(device))}))


def cached_log_likelihood(checkpoint, configs, seed: int, settings: LikelihoodSettings | None = None, *,
                          batch_size: int = 64, device=None, cache_dir=None, progress_bar: bool = True,
                          verbose: bool = True, **overrides):
    """:func:`lib.diffusion.model_log_likelihood` of ``configs`` under the model in ``checkpoint``,
    or the cached result of exactly this request: the model's identity, the configurations' content
    hash, the likelihood settings' key and the seed (not the batch size, not the device). Finished
    batches are kept, so an interrupted run resumes. Returns an array (n, 2): log q in nats and the
    network evaluations of the batch each configuration was in."""
    settings = LikelihoodSettings.build(settings, **overrides)
    seed = check_seed(seed)
    model, state = load_model(checkpoint, device=device, ema=settings.ema)
    x = torch.as_tensor(configs).double()
    shape = check_lattice(model, state["metadata"], tuple(x.shape[1:]))
    # stored as an "ensemble" of rows (log q, nfe); the theory of the configurations is kept aside
    request = _derived_request(model, state, {"name": "loglik"}, "dm", settings, seed, n_configs=int(x.shape[0]),
                               configs=array_hash(x), columns=["log_q", "nfe"],
                               config_theory=_trained_theory(state, shape))

    def compute(first, keep):
        model_log_likelihood(model, x[first:], seed, settings, normaliser=state["metadata"].get("normaliser"),
                             batch_size=batch_size, device=device, first=first, progress_bar=progress_bar,
                             on_batch=lambda start, lq, nfe: keep(start, torch.stack(
                                 [lq, torch.full_like(lq, float(nfe))], 1)))

    out = cached_derivation(request, "loglik", len(x), compute, shapes={"configs": (2,)}, cache_dir=cache_dir,
                            verbose=False,
                            finish=lambda r: (r["configs"], {"device": str(resolve_device(device))}))
    if verbose:
        print(f"log q of {len(x)} configurations ({settings.trace} trace"
              f"{'' if settings.trace == 'exact' else f', {settings.n_probes} {settings.probe} probes'}, "
              f"rtol {settings.rtol:g}): {shown(out.path)}")
    return out.configs


def cached_dm_path_proposals(checkpoint, n: int, seed: int, settings: PathSettings | None = None, *, theory,
                             spectrum, batch_size: int = 256, device=None, cache_dir=None, progress_bar: bool = True,
                             verbose: bool = True, **overrides):
    """:func:`lib.diffusion.dm_path_proposals` from a checkpoint, or the cached result of exactly
    this request: the model's identity, the target theory, the path settings' key, the spectrum's
    content hash, n and the seed (not the batch size, not the device). Finished batches are kept,
    so an interrupted run resumes. Returns an :class:`lib.storage.Ensemble` whose metadata holds
    the log weights (``metadata["log_weight"]``) and the network evaluations per proposal."""
    settings = PathSettings.build(settings, **overrides)
    seed = check_seed(seed)
    positive_int("n", n)
    model, state = load_model(checkpoint, device=device, ema=settings.ema)
    shape = check_lattice(model, state["metadata"], tuple(theory.lattice_shape))
    if settings.variance == "forward":  # the kernels need no spectrum (lib.diffusion.paths.VARIANCES)
        spectrum, spectrum_id = None, None
    else:
        spectrum = torch.as_tensor(spectrum, dtype=torch.float64)
        spectrum_id = array_hash(spectrum)
    request = _derived_request(model, state, theory.to_dict(), "dm-path", settings, seed, n_configs=int(n),
                               spectrum=spectrum_id, lattice_shape=list(shape))

    def compute(first, keep):
        dm_path_proposals(model, n - first, seed, settings, theory=theory, spectrum=spectrum,
                          normaliser=state["metadata"].get("normaliser"), batch_size=batch_size, device=device,
                          first=first, progress_bar=progress_bar, on_batch=keep)

    def finish(rows):
        log_w = rows["log_weight"]
        if not bool(torch.isfinite(log_w).all()):
            raise ValueError("some proposals have a non-finite log weight; the network's output is not finite")
        return rows["configs"], {"log_weight": [float(v) for v in log_w], "nfe_per_proposal": settings.n_steps,
                                 "device": str(resolve_device(device))}

    return cached_derivation(request, "dm-path", n, compute, keys=("configs", "log_weight"),
                             shapes={"configs": shape, "log_weight": ()}, finish=finish, cache_dir=cache_dir,
                             verbose=verbose)
