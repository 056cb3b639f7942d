"""Files: atomic and safe writes and reads (:mod:`.files`), ensemble files (:mod:`.ensembles`)
and the metadata-keyed cache (:mod:`.cache`)."""
from .cache import cache_lock, cached_ensemble, default_cache_dir, request_key
from .ensembles import FORMAT, Ensemble, load_ensemble, make_metadata, save_ensemble
from .files import atomic_write, check_writable, content_hash, lib_version, load_checkpoint_file, save_checkpoint

__all__ = ["cache_lock", "cached_ensemble", "default_cache_dir", "request_key", "FORMAT", "Ensemble",
           "load_ensemble", "make_metadata", "save_ensemble", "atomic_write", "check_writable", "content_hash",
           "lib_version", "load_checkpoint_file", "save_checkpoint"]
