"""Trained score models that ship with the book (``models/`` at the repository root).

Training the paper's U-Net for 250 epochs takes about an hour of two CPU cores, so the models
behind the book's paper-scale results are committed to the repository and found by the cache:
:func:`lib.diffusion.cached_score_model` looks up ``models/manifest.json`` for an entry whose
``cache_key`` is the hash of its training request (the name ``dm-<key>.pt`` the cache would give
the checkpoint) and loads that file instead of training. A chapter, the tests or a Colab reader
with the same request therefore skip training; any other request trains as before.

A shipped file is a trainer checkpoint (:data:`CHECKPOINT_FORMAT`, read with
``torch.load(weights_only=True)``) stripped to what sampling needs: the weights that are sampled
with (the EMA weights, or the best held-out epoch's with early stopping), the model configuration,
the training settings, the normaliser and the training data's metadata (inside the training
request), the loss history and the wall time per epoch. No optimiser or generator state: a
shipped model cannot be resumed, only used. Weights are stored in float32, bit-identical to the
checkpoint they were exported from.

``manifest.json`` is a list with one entry per model: ``file``, ``L``, ``kappa``, ``lam``,
``channels``, ``strides``, ``epochs``, ``sha256`` (of the file), ``cache_key`` and further
provenance (chapter, held-out loss, CPU seconds, the command that made it). A file whose SHA-256
differs from its entry is refused in one line, before anything in it is read.

``$DMSQ_MODELS`` names another directory; set to ``none`` it disables the lookup (every request
then trains or comes from the cache).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from ..storage.files import atomic_write, content_hash, save_checkpoint

MANIFEST = "manifest.json"
REQUIRED = ("file", "L", "kappa", "lam", "channels", "epochs", "sha256", "cache_key")


def models_dir() -> Path | None:
    """``$DMSQ_MODELS`` if set (``none`` or empty: no shipped models), else ``models/`` beside ``lib/``."""
    env = os.environ.get("DMSQ_MODELS")
    if env is not None:
        return None if env.strip().lower() in ("", "none") else Path(env)
    return Path(__file__).resolve().parents[2] / "models"


def sha256_file(path) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(directory=None) -> list[dict]:
    """The entries of ``<directory>/manifest.json`` ([] if there is none); a manifest that is not a
    list of entries with the required fields is a one-line error."""
    directory = models_dir() if directory is None else Path(directory)
    if directory is None or not (directory / MANIFEST).is_file():
        return []
    path = directory / MANIFEST
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not a readable JSON manifest: {str(exc).splitlines()[0][:100]}") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{path} must hold a JSON list of model entries")
    for e in entries:
        missing = [k for k in REQUIRED if k not in e]
        if missing:
            raise ValueError(f"{path}: the entry for {e.get('file', '?')} lacks {', '.join(missing)}")
    keys = [e["cache_key"] for e in entries]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{path} lists one cache key twice")
    return entries


def verified_file(entry: dict, directory=None) -> Path:
    """The path of a manifest entry's file, after checking that its bytes have the entry's SHA-256
    (one-line ``ValueError`` otherwise: a tampered or damaged file is never read)."""
    directory = models_dir() if directory is None else Path(directory)
    name = Path(entry["file"])
    if name.is_absolute() or ".." in name.parts:
        raise ValueError(f"manifest entry {entry['file']!r}: a model file must lie inside {directory}")
    path = directory / name
    if not path.is_file():
        raise ValueError(f"shipped model {path} is listed in {directory / MANIFEST} but missing "
                         "(restore it with `git checkout models/`)")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ValueError(f"shipped model {path} does not match its SHA-256 in {MANIFEST} (tampered with or damaged; "
                         "nothing in it was read): restore it with `git checkout models/`")
    return path


def shipped_checkpoint(cache_key: str, directory=None) -> Path | None:
    """The verified file of the shipped model whose training request hashes to ``cache_key``, or None."""
    directory = models_dir() if directory is None else Path(directory)
    if directory is None:
        return None
    for entry in read_manifest(directory):
        if entry["cache_key"] == cache_key:
            return verified_file(entry, directory)
    return None


def sampling_state(state: dict) -> dict:
    """A trainer checkpoint reduced to what sampling needs (see the module docstring): the weights
    :func:`lib.diffusion.training.load_model` would sample with by default, and no optimiser state."""
    settings = state["settings"]
    best = settings.get("patience") is not None
    keep = dict(state)
    keep.update(optimizer=None, generator=None, shipped=True,
                epoch_seconds=[float(s) for s in state.get("epoch_seconds", [])])
    if best:
        keep.update(model=None, ema=None)
    elif state.get("ema") is not None:
        keep.update(model=None, best_weights=None)
    else:
        keep.update(ema=None, best_weights=None)
    return keep


def ship(checkpoint, name: str, directory=None, **provenance) -> dict:
    """Export the finished cached checkpoint ``checkpoint`` as ``<directory>/<name>.pt`` and add (or
    replace) its entry in the manifest. ``provenance``: further fields of the entry (chapter,
    held-out loss, command, ...). Returns the entry."""
    from .training import load_checkpoint

    directory = models_dir() if directory is None else Path(directory)
    if directory is None:
        raise ValueError("DMSQ_MODELS is 'none': there is no models directory to ship into")
    state = load_checkpoint(checkpoint)
    request = state["metadata"].get("request")
    if not isinstance(request, dict):
        raise ValueError(f"{checkpoint} was not trained through the cache (no training request); it cannot be found "
                         "by one")
    if state["epoch"] < state["settings"]["epochs"] and not state.get("stopped_early"):
        raise ValueError(f"{checkpoint} is unfinished ({state['epoch']} of {state['settings']['epochs']} epochs)")
    path = directory / f"{name}.pt"
    save_checkpoint(sampling_state(state), path)
    theory = request.get("theory") or {}
    cfg = state["model_config"]
    seconds = [s for s in state.get("epoch_seconds", []) if not math.isnan(s)]
    entry = {"file": path.name, "L": theory.get("L"), "kappa": theory.get("kappa"), "lam": theory.get("lam"),
             "channels": cfg.get("channels"), "strides": cfg.get("strides"),
             "zero_mode_head": bool(cfg.get("zero_mode_head", False)), "epochs": int(state["epoch"]),
             "sha256": sha256_file(path), "cache_key": content_hash(request),
             "training_ensemble": request.get("training_ensemble"), "n_train": request.get("n_train"),
             "seed": request.get("seed"), "train_seconds": round(sum(seconds), 1),
             # the wall time of an epoch that overlapped other work or a pause is inflated; the median is not
             "median_epoch_seconds": round(float(np.median(seconds)), 2) if seconds else None,
             "device": state["device_type"], "lib_version": state.get("lib_version"), **provenance}
    entries = [e for e in read_manifest(directory) if e["file"] != entry["file"] and e["cache_key"] != entry["cache_key"]]
    entries.append(entry)
    entries.sort(key=lambda e: e["file"])
    atomic_write(directory / MANIFEST, lambda fh: fh.write((json.dumps(entries, indent=1) + "\n").encode()))
    return entry


def check_entry(entry: dict, directory=None) -> dict:
    """Load a manifest entry's model and check that it is what the entry says: the hash, the
    fields against the file, and the training request hashing to ``cache_key``. Returns the state."""
    from .training import load_model

    path = verified_file(entry, directory)
    model, state = load_model(path)
    request = state["metadata"].get("request") or {}
    if content_hash(request) != entry["cache_key"]:
        raise ValueError(f"{path}: its training request does not hash to the manifest's cache key")
    if request.get("settings") != _settings_key(state):
        raise ValueError(f"{path}: its training settings do not give the key recorded in its request")
    theory, cfg = request.get("theory") or {}, state["model_config"]
    for k, v in (("L", theory.get("L")), ("kappa", theory.get("kappa")), ("lam", theory.get("lam")),
                 ("channels", cfg.get("channels")), ("epochs", state["epoch"])):
        if entry[k] != v:
            raise ValueError(f"{path}: manifest says {k} = {entry[k]!r}, the file {v!r}")
    return state


def _settings_key(state: dict) -> dict:
    from .training import TrainSettings

    return TrainSettings.from_dict(state["settings"]).key()


__all__ = ["MANIFEST", "models_dir", "sha256_file", "read_manifest", "verified_file", "shipped_checkpoint",
           "sampling_state", "ship", "check_entry"]
