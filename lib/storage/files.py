"""Writing and reading files safely.

* Writes are atomic: a temporary file in the target directory is renamed into place, so an
  interrupted write never leaves a truncated file. Files are created with mode 0600 whatever the
  umask. With ``overwrite=False`` the rename is refused if the target appeared meanwhile (two
  runs writing the same output): one of them fails, none is silently lost.
* Checkpoints hold only tensors, numbers, strings, lists and dicts, and are read with
  ``torch.load(..., weights_only=True)``: a file whose pickle would run code is refused before
  anything in it executes.
* :func:`content_hash` is the one hash that names cache entries; :func:`lib_version` the one
  version string written into files.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch


def lib_version() -> str:
    from .. import __version__

    return __version__


def content_hash(obj) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of ``obj`` (names cache files)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def array_hash(arr) -> str:
    """16 hex digits of the SHA-256 of an array's shape and float64 bytes: the identity of a set of
    configurations in a cache request (names the data a derived result was computed from)."""
    import numpy as np

    a = np.ascontiguousarray(arr.detach().cpu().numpy() if hasattr(arr, "detach") else np.asarray(arr),
                             dtype=np.float64)
    h = hashlib.sha256(json.dumps(list(a.shape)).encode())
    h.update(a.tobytes())
    return h.hexdigest()[:16]


def check_writable(path, suffix: str | None = None, overwrite: bool = False) -> Path:
    """Refuse, before any computation, an output path that cannot be written: a wrong suffix, a
    missing or unwritable directory, a directory in its place, or an existing file without
    ``overwrite``. Returns the path."""
    path = Path(path)
    if suffix is not None and path.suffix != suffix:
        raise ValueError(f"output must be a {suffix} file, got {path}")
    if path.is_dir():
        raise ValueError(f"output {path} is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"directory {parent} is not writable")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --force (overwrite=True) to replace it")
    return path


def atomic_write(path, write_fn, overwrite: bool = True) -> Path:
    """Write ``path`` through ``write_fn(filehandle)`` atomically, mode 0600.

    With ``overwrite=False`` the final step is a hard link, which fails if ``path`` exists, so of
    two concurrent writers exactly one succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            write_fn(fh)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path} was created by another process meanwhile; nothing was overwritten") \
                    from None
            os.unlink(tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_checkpoint(obj, path, overwrite: bool = True) -> Path:
    """``torch.save`` atomically; ``obj`` must hold only tensors, numbers, strings, lists, dicts."""
    return atomic_write(path, lambda fh: torch.save(obj, fh), overwrite=overwrite)


def existing_file(path, what: str) -> Path:
    """``path`` as a Path if it is an existing file; ``FileNotFoundError`` or a one-line
    ``ValueError`` (a directory) otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such {what}: {path}")
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a {what}")
    return path


def load_checkpoint_file(path, what: str = "checkpoint") -> dict:
    """Read a file written by :func:`save_checkpoint` with ``weights_only=True``: no code in the
    file can run. Any failure is a one-line ``ValueError`` (``FileNotFoundError`` if missing)."""
    path = existing_file(path, what)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for a foreign or malicious pickle, EOFError, zip errors, ...
        raise ValueError(f"{path} is not a valid {what}: {_load_failure(exc)}") from None
    return obj


def _load_failure(exc: BaseException) -> str:
    """Why the safe loader refused a file, in a few words (torch's own message is many lines and
    suggests the unsafe ``weights_only=False``, which must not be followed for untrusted files)."""
    import pickle
    import re

    text = str(exc).strip()
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return (f"it holds a Python object ({m.group(1)}) that the safe loader refuses to create, so it was not "
                "written by this library or was tampered with (nothing in it was run)")
    if isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in text:
        return "the safe loader cannot read it (not written by this library, or damaged; nothing in it was run)"
    text = re.sub(r"^\[enforce fail at [^\]]*\][\s.]*", "", text)  # torch's C++ source location
    first = (text.splitlines() or [""])[0].split(". ")[0][:120]
    if not re.search(r"[A-Za-z]{4}", first):  # e.g. the bare "101" of a KeyError
        first = type(exc).__name__
    return f"it cannot be read as a torch file (damaged, truncated or another kind of file: {first})"


__all__ = ["lib_version", "content_hash", "check_writable", "atomic_write", "save_checkpoint", "existing_file",
           "load_checkpoint_file"]
