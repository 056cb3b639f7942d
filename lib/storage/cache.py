"""The cache of expensive results (HMC ensembles, trained networks, generated ensembles).

Each entry is a file in ``$DMSQ_CACHE`` (default ``~/.cache/dmsq``) named by
:func:`request_key`, the hash of its request: theory, sampler, the stage's settings key
(:meth:`lib.settings.Settings.key`), seed, size, file format and library version. An entry is reused
only when the request stored inside it equals the new request. A file that cannot be read or
whose content disagrees with its metadata is moved aside (``*.damaged``, with a message) and
made again; a readable file holding another request is refused, never overwritten.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

from .ensembles import Ensemble, load_ensemble, save_ensemble
from .files import content_hash

def request_key(request: dict) -> str:
    """The cache key of a request: the hash of the whole request (for the metadata of a cached
    ensemble, the key it was stored under)."""
    if "request_key" in request:
        return request["request_key"]
    return content_hash(request)


def default_cache_dir() -> Path:
    """``$DMSQ_CACHE`` if set and not empty, else ``~/.cache/dmsq`` (an empty value never means the
    current directory)."""
    return Path(os.environ.get("DMSQ_CACHE", "").strip() or Path.home() / ".cache" / "dmsq")


def shown(path) -> str:
    """A cache path as a reader should see it: relative to the cache directory ($DMSQ_CACHE or
    ~/.cache/dmsq), not the author's absolute path."""
    path = Path(path)
    base = default_cache_dir()
    try:
        rel = path.resolve().relative_to(base.resolve())
    except ValueError:
        return path.name
    return f"{'$DMSQ_CACHE' if 'DMSQ_CACHE' in os.environ else '~/.cache/dmsq'}/{rel}"


def cache_dir(path=None) -> Path:
    d = Path(path) if path is not None else default_cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def cache_lock(path, wait: bool = True, what: str = "output"):
    """Hold an exclusive lock on ``<path>.lock`` while making or reading the cache entry ``path``,
    so that two processes sharing a cache do not compute the same entry twice or write it
    concurrently: the second waits, then finds the entry made (``fcntl.flock``; released when
    the block ends or the process dies; no locking where ``fcntl`` is missing).

    With ``wait=False`` a lock held by another process is a one-line ``ValueError`` instead (naming
    ``what``): for outputs that a run writes for a long time (a training checkpoint), where the
    second of two runs must be refused at once rather than overwrite the first one's work."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    lock = Path(str(path) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise ValueError(f"another run is writing the {what} {path}; wait for it to finish or choose another "
                             "output") from None
        try:
            yield
        finally:
            if not wait:  # nobody waits on a non-blocking lock: leave no lock file beside the user's output
                lock.unlink(missing_ok=True)
            fcntl.flock(fh, fcntl.LOCK_UN)


def exclusive_lock(path, what: str = "output"):
    """:func:`cache_lock` without waiting: refuse at once if another run holds ``path``."""
    return cache_lock(path, wait=False, what=what)


def move_aside(path: Path, why: str) -> None:
    """Rename a damaged cache file to ``<name>.damaged`` (kept for inspection) and say so."""
    target = path.with_name(path.name + ".damaged")
    os.replace(path, target)
    warnings.warn(f"cache file {path} is damaged ({why}); moved to {target.name} and made again", RuntimeWarning,
                  stacklevel=3)


def _matches(meta: dict, request: dict) -> bool:
    return meta.get("request_key") == request_key(request) and all(meta.get(k) == v for k, v in request.items())


def cached_ensemble(request: dict, make, cache_dir=None, verbose: bool = True) -> Ensemble:
    """Load the ensemble described by ``request`` from the cache, or make and store it.

    ``make()`` returns the configurations, or ``(configs, extra_metadata)``; the extra metadata
    (e.g. the measured acceptance) is stored but is not part of the request.
    """
    from . import cache as _self

    directory = _self.cache_dir(cache_dir)
    name = f"{request.get('theory', {}).get('name', 'ensemble')}-{request.get('sampler', 'x')}-{request_key(request)}.npz"
    path = directory / name
    with cache_lock(path):
        if path.exists():
            try:
                ens = load_ensemble(path)
            except ValueError as exc:
                move_aside(path, str(exc).split(": ", 1)[-1])
            else:
                if _matches(ens.metadata, request):
                    if verbose:
                        print(f"loaded cached ensemble {shown(path)} ({len(ens)} configurations)")
                    return ens
                raise ValueError(f"cache file {path} holds a different ensemble; it was not overwritten — "
                                 "remove it by hand")
        out = make()
        configs, extra = (out if isinstance(out, tuple) else (out, {}))
        save_ensemble(path, configs, {**request, **extra, "request_key": request_key(request)})
        if verbose:
            print(f"saved ensemble {shown(path)}")
        return load_ensemble(path)


__all__ = ["request_key", "default_cache_dir", "cache_dir", "cache_lock", "exclusive_lock", "cached_ensemble", "move_aside", "shown"]
