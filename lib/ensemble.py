"""Ensembles on disk: configurations plus the metadata that says how they were made.

Format: a NumPy ``.npz`` file with two entries, ``configs`` (float array ``(n, *lattice)``) and
``metadata`` (a JSON string). The metadata holds at least ``format``, ``theory``, ``sampler``,
``settings``, ``seed`` and ``lib_version``. Writes are atomic: a temporary file in the target
directory is renamed into place, so an interrupted write never leaves a truncated ensemble.

The cache (:func:`cached_ensemble`) stores each ensemble under a name derived from a hash of
its request (theory, sampler, settings, seed, library version), and reuses a file only when
the metadata inside it matches the request exactly.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FORMAT = "dmsq-ensemble-v1"


def lib_version() -> str:
    from . import __version__

    return __version__


def _atomic_write(path, write_fn) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write_fn(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` to a temporary file in the same directory, then rename (atomic on POSIX)."""
    _atomic_write(path, lambda fh: torch.save(obj, fh))


@dataclass
class Ensemble:
    """Configurations ``(n, *lattice)`` and their metadata dictionary."""

    configs: np.ndarray
    metadata: dict
    path: Path | None = None  # the file it was read from, if any

    @property
    def theory(self) -> dict:
        return self.metadata["theory"]

    def __len__(self):
        return len(self.configs)

    def tensor(self, device=None, dtype=torch.float64) -> torch.Tensor:
        return torch.as_tensor(self.configs, dtype=dtype, device=device)


def make_metadata(theory, sampler: str, settings: dict, seed: int, **extra) -> dict:
    """Canonical metadata of an ensemble request (JSON-serialisable)."""
    meta = {"format": FORMAT, "theory": theory.to_dict() if hasattr(theory, "to_dict") else dict(theory),
            "sampler": sampler, "settings": dict(settings), "seed": int(seed), "lib_version": lib_version()}
    meta.update(extra)
    return json.loads(json.dumps(meta))  # normalise (tuples -> lists, numpy scalars rejected early)


def save_ensemble(path, configs, metadata: dict, overwrite: bool = False) -> Path:
    """Write an ensemble atomically. Refuses to replace an existing file unless ``overwrite``."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"ensemble files end in .npz, got {path.name}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (or --force) to replace it")
    for key in ("theory", "sampler", "seed"):
        if key not in metadata:
            raise ValueError(f"metadata lacks {key!r}")
    arr = configs.detach().cpu().numpy() if isinstance(configs, torch.Tensor) else np.asarray(configs)
    meta = dict(metadata)
    meta.setdefault("format", FORMAT)
    meta.setdefault("lib_version", lib_version())
    meta["n_configs"] = int(arr.shape[0])
    meta["shape"] = list(arr.shape[1:])
    blob = json.dumps(meta, sort_keys=True)
    _atomic_write(path, lambda fh: np.savez(fh, configs=arr, metadata=np.array(blob)))
    return path


def load_ensemble(path) -> Ensemble:
    """Read an ensemble written by :func:`save_ensemble`; a clear error for anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such ensemble file: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "configs" not in z.files or "metadata" not in z.files:
                raise ValueError
            configs = z["configs"]
            meta = json.loads(str(z["metadata"]))
    except (ValueError, OSError, TypeError, EOFError, zipfile.BadZipFile) as exc:  # .npy, truncated zip, ...
        raise ValueError(f"{path} is not an ensemble file (expected .npz with 'configs' and 'metadata')") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown ensemble format {meta.get('format')!r}")
    return Ensemble(configs, meta, path)


def request_key(metadata: dict) -> str:
    """Hash of the canonical JSON of a request; names the cache file."""
    keep = {k: metadata[k] for k in ("format", "theory", "sampler", "settings", "seed", "lib_version") if k in metadata}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """``$DMSQ_CACHE`` if set, else ``~/.cache/dmsq``."""
    return Path(os.environ.get("DMSQ_CACHE", Path.home() / ".cache" / "dmsq"))


def _matches(meta: dict, request: dict) -> bool:
    return all(meta.get(k) == v for k, v in request.items())


@contextlib.contextmanager
def cache_lock(path):
    """Hold an exclusive lock on ``<path>.lock`` while making or reading the cache entry ``path``,
    so that two processes sharing a cache (two chapters run side by side) do not compute the same
    entry twice or write it concurrently: the second waits, then finds the entry made. The lock
    is released when the block ends or the process dies (``fcntl.flock``; without ``fcntl``,
    e.g. on Windows, no locking)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock = Path(str(path) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def cached_ensemble(metadata: dict, make, cache_dir=None, verbose: bool = True) -> Ensemble:
    """Load the ensemble described by ``metadata`` from the cache, or make and store it.

    ``make()`` must return the configurations (tensor or array) and may return
    ``(configs, extra_metadata)``; the extra metadata (e.g. the measured acceptance) is stored
    too but is not part of the request. A cached file is used only if every field of the
    request matches the metadata stored inside it.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = f"{metadata.get('theory', {}).get('name', 'ensemble')}-{metadata.get('sampler', 'x')}-{request_key(metadata)}.npz"
    path = cache_dir / name
    with cache_lock(path):
        if path.exists():
            ens = load_ensemble(path)
            if _matches(ens.metadata, metadata):
                if verbose:
                    print(f"loaded cached ensemble {path} ({len(ens)} configurations)")
                return ens
            raise ValueError(f"cache file {path} holds a different ensemble; it was not overwritten — "
                             "remove it by hand")
        out = make()
        configs, extra = (out if isinstance(out, tuple) else (out, {}))
        meta = {**metadata, **extra}
        save_ensemble(path, configs, meta)
        if verbose:
            print(f"saved ensemble {path}")
        return load_ensemble(path)
