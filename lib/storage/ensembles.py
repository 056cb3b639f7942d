"""Ensembles on disk: configurations plus the metadata that says how they were made.

Format: a NumPy ``.npz`` file with two entries, ``configs`` (float array ``(n, *lattice)``) and
``metadata`` (a JSON object). The metadata holds at least ``format``, ``theory``, ``sampler``,
``settings``, ``seed``, ``lib_version``, ``n_configs`` and ``shape``. Writes are atomic
(:func:`lib.storage.files.atomic_write`); reading checks the content against the metadata
(count, shape, finiteness), so a damaged file is refused rather than analysed.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .files import array_hash, atomic_write, check_writable, existing_file, lib_version

FORMAT = "dmsq-ensemble-v2"
# Earlier formats are still *read* (their configurations are valid data, e.g. for observables),
# but their metadata never matches a cache request of this version.
READABLE_FORMATS = ("dmsq-ensemble-v1", FORMAT)
#: the metadata entry holding the configurations' content hash (:func:`lib.storage.files.array_hash`);
#: not part of an ensemble's identity (:func:`lib.diffusion.models.ensemble_identity`)
CHECKSUM = "configs_sha256"


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


def make_metadata(theory, sampler: str, settings, seed: int, **extra) -> dict:
    """Canonical metadata of an ensemble request (JSON-serialisable). ``settings`` is a
    :class:`lib.settings.Settings` (stored whole) or a plain dict."""
    s = settings.to_dict() if hasattr(settings, "to_dict") else dict(settings)
    meta = {"format": FORMAT, "theory": theory.to_dict() if hasattr(theory, "to_dict") else dict(theory),
            "sampler": sampler, "settings": s, "seed": int(seed), "lib_version": lib_version()}
    meta.update(extra)
    return json.loads(json.dumps(meta, allow_nan=False))  # normalise (tuples -> lists); NaN is refused


def _as_array(configs) -> np.ndarray:
    arr = configs.detach().cpu().numpy() if isinstance(configs, torch.Tensor) else np.asarray(configs)
    if arr.dtype.kind != "f":
        raise ValueError(f"configurations must be a float array, got dtype {arr.dtype}")
    if arr.ndim < 2 or arr.shape[0] < 1 or arr.size == 0:
        raise ValueError(f"configurations must have shape (n >= 1, *lattice), got {arr.shape}")
    return arr


def save_ensemble(path, configs, metadata: dict, overwrite: bool = False, allow_nonfinite: bool = False) -> Path:
    """Write an ensemble atomically. Refuses to replace an existing file unless ``overwrite``
    (also when another process creates it meanwhile), and refuses NaN/inf configurations unless
    ``allow_nonfinite``, in which case the count of non-finite configurations is recorded."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    path = check_writable(path, ".npz", overwrite)
    for key in ("theory", "sampler", "seed"):
        if key not in metadata:
            raise ValueError(f"metadata lacks {key!r}")
    arr = _as_array(configs)
    bad = int((~np.isfinite(arr.reshape(arr.shape[0], -1))).any(axis=1).sum())
    if bad and not allow_nonfinite:
        raise ValueError(f"{bad} of {arr.shape[0]} configurations are not finite (NaN or inf); not written")
    meta = dict(metadata)
    meta.setdefault("format", FORMAT)
    meta.setdefault("lib_version", lib_version())
    meta["n_configs"] = int(arr.shape[0])
    meta["shape"] = list(arr.shape[1:])
    meta[CHECKSUM] = array_hash(arr)  # checked on every load: a file whose numbers changed is refused
    if bad:
        meta["n_nonfinite"] = bad
    blob = json.dumps(meta, sort_keys=True, allow_nan=False)
    return atomic_write(path, lambda fh: np.savez(fh, configs=arr, metadata=np.array(blob)), overwrite=overwrite)


def load_ensemble(path, allow_nonfinite: bool = False) -> Ensemble:
    """Read an ensemble written by :func:`save_ensemble`; a one-line ``ValueError`` for anything
    else: not an ensemble, metadata that is not a JSON object, configurations that are not a
    float array (n ≥ 1, *lattice), a count or shape that disagrees with the metadata, or NaN/inf
    configurations (unless ``allow_nonfinite``)."""
    path = existing_file(path, "ensemble file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "configs" not in z.files or "metadata" not in z.files:
                raise ValueError
            configs = z["configs"]
            meta = json.loads(str(z["metadata"]))
    except (ValueError, OSError, TypeError, EOFError, KeyError, zipfile.BadZipFile):  # .npy, truncated zip, ...
        raise ValueError(f"{path} is not an ensemble file (expected .npz with 'configs' and 'metadata')") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: the metadata is not a JSON object")
    if meta.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{path}: unknown ensemble format {meta.get('format')!r}")
    if configs.dtype.kind != "f" or configs.ndim < 2 or configs.shape[0] < 1 or configs.size == 0:
        raise ValueError(f"{path}: configurations must be a float array of shape (n >= 1, *lattice), "
                         f"got {configs.dtype} {configs.shape}")
    if meta.get("n_configs", len(configs)) != len(configs):
        raise ValueError(f"{path}: holds {len(configs)} configurations, its metadata says {meta['n_configs']}")
    if list(meta.get("shape", configs.shape[1:])) != list(configs.shape[1:]):
        raise ValueError(f"{path}: configurations have shape {list(configs.shape[1:])}, its metadata says "
                         f"{meta['shape']}")
    theory = meta.get("theory")
    if isinstance(theory, dict) and theory.get("name") == "u1":
        L = theory.get("L")
        if isinstance(L, bool) or not isinstance(L, int) or L < 2:
            raise ValueError(f"{path}: the theory in its metadata has L = {L!r}, not an integer >= 2")
        if list(configs.shape[1:]) != [2, L, L]:
            raise ValueError(f"{path}: configurations have shape {list(configs.shape[1:])}, but a U(1) gauge "
                             f"theory on L = {L} has links of shape [2, {L}, {L}]")
    elif isinstance(theory, dict) and "L" in theory:
        L, d = theory["L"], theory.get("d", configs.ndim - 1)
        for name, v in (("L", L), ("d", d)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{path}: the theory in its metadata has {name} = {v!r}, not a positive integer")
        if configs.ndim - 1 != d or any(n != L for n in configs.shape[1:]):  # (no list of d items: d may be huge)
            raise ValueError(f"{path}: configurations have shape {list(configs.shape[1:])}, but the theory in its "
                             f"metadata is L = {L}, d = {d}")
    if CHECKSUM in meta and array_hash(configs) != meta[CHECKSUM]:
        raise ValueError(f"{path}: its configurations do not match the checksum in its metadata (damaged or edited)")
    if not allow_nonfinite:
        bad = int((~np.isfinite(configs.reshape(configs.shape[0], -1))).any(axis=1).sum())
        if bad:
            raise ValueError(f"{path}: {bad} of {len(configs)} configurations are not finite (NaN or inf)")
    return Ensemble(configs, meta, path)


__all__ = ["FORMAT", "Ensemble", "make_metadata", "save_ensemble", "load_ensemble"]
