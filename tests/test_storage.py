"""Ensemble files and the metadata-keyed cache: round trips, refusals, clear errors, and never
returning an ensemble made with other parameters."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import lib
from lib import HMC, Phi4, hmc_ensemble
from lib.storage import ensembles as ensemble
from lib.storage import (cached_ensemble, default_cache_dir, load_ensemble, make_metadata, request_key,
                          save_ensemble)

torch.set_num_threads(1)

TH = Phi4(L=4, kappa=0.21, lam=0.022)


def meta(theory=TH, sampler="hmc", settings=None, seed=1, **extra):
    return make_metadata(theory, sampler, settings or {"eps": 0.1, "n_steps": 10}, seed, **extra)


def configs(seed=0, n=7):
    return torch.randn((n, 4, 4), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------- files
def test_round_trip_preserves_configs_and_metadata(tmp_path):
    c = configs()
    m = meta(note="test", acceptance=0.93)
    path = save_ensemble(tmp_path / "sub" / "e.npz", c, m)
    assert path.exists()
    assert not [p for p in path.parent.iterdir() if p.name != "e.npz"]  # no temporaries left
    ens = load_ensemble(path)
    assert isinstance(ens.configs, np.ndarray) and ens.configs.dtype == np.float64
    np.testing.assert_array_equal(ens.configs, c.numpy())
    assert torch.equal(ens.tensor(), c)
    assert len(ens) == 7
    for k, v in m.items():
        assert ens.metadata[k] == v, k
    assert ens.metadata["n_configs"] == 7 and ens.metadata["shape"] == [4, 4]
    assert ens.metadata["format"] == ensemble.FORMAT and ens.metadata["lib_version"] == lib.__version__
    assert ens.theory == TH.to_dict() == {"name": "phi4", "L": 4, "kappa": 0.21, "lam": 0.022, "d": 2}
    # float32 configurations stay float32
    save_ensemble(tmp_path / "f.npz", c.float(), m)
    assert load_ensemble(tmp_path / "f.npz").configs.dtype == np.float32


def test_save_refuses_to_overwrite(tmp_path):
    p = tmp_path / "e.npz"
    save_ensemble(p, configs(0), meta())
    with pytest.raises(FileExistsError):
        save_ensemble(p, configs(1), meta())
    np.testing.assert_array_equal(load_ensemble(p).configs, configs(0).numpy())  # untouched
    save_ensemble(p, configs(1), meta(seed=2), overwrite=True)
    ens = load_ensemble(p)
    np.testing.assert_array_equal(ens.configs, configs(1).numpy())
    assert ens.metadata["seed"] == 2


def test_save_validates_input(tmp_path):
    with pytest.raises(ValueError):
        save_ensemble(tmp_path / "e.npy", configs(), meta())
    bad = meta()
    del bad["theory"]
    with pytest.raises(ValueError):
        save_ensemble(tmp_path / "e.npz", configs(), bad)
    assert not (tmp_path / "e.npz").exists()


def test_load_rejects_non_ensembles_clearly(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_ensemble(tmp_path / "missing.npz")
    np.savez(tmp_path / "random.npz", a=np.arange(3))
    (tmp_path / "text.npz").write_text("this is not an ensemble\n")
    np.savez(tmp_path / "badjson.npz", configs=np.zeros((2, 4, 4)), metadata=np.array("{not json"))
    np.savez(tmp_path / "otherformat.npz", configs=np.zeros((2, 4, 4)),
             metadata=np.array(json.dumps({"format": "something-else"})))
    np.savez(tmp_path / "pickled.npz", configs=np.zeros((2, 4, 4)), metadata=np.array([{"a": 1}], dtype=object))
    np.save(tmp_path / "array.npy", np.zeros((2, 4, 4)))
    good = save_ensemble(tmp_path / "good.npz", configs(), meta())
    blob = good.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(blob[: len(blob) // 2])  # what a non-atomic write could leave
    for name in ("random.npz", "text.npz", "badjson.npz", "otherformat.npz", "pickled.npz", "array.npy",
                 "truncated.npz"):
        with pytest.raises(ValueError):
            load_ensemble(tmp_path / name)


def test_metadata_is_canonical_json():
    m = make_metadata(TH, "hmc", {"shape": (4, 4), "eps": 0.1}, 3)
    assert m["settings"]["shape"] == [4, 4] and m["seed"] == 3
    assert json.loads(json.dumps(m)) == m
    # the request key depends on every field of the request; a cached file carries the key it was stored under
    assert request_key(dict(m, request_key="abc")) == "abc"
    for changed in (make_metadata(Phi4(L=4, kappa=0.22, lam=0.022), "hmc", {"shape": (4, 4), "eps": 0.1}, 3),
                    make_metadata(TH, "metropolis", {"shape": (4, 4), "eps": 0.1}, 3),
                    make_metadata(TH, "hmc", {"shape": (4, 4), "eps": 0.2}, 3),
                    make_metadata(TH, "hmc", {"shape": (4, 4), "eps": 0.1}, 4)):
        assert request_key(changed) != request_key(m)


# ---------------------------------------------------------------------------- cache
class Maker:
    def __init__(self, seed, extra=None):
        self.calls, self.seed, self.extra = 0, seed, extra

    def __call__(self):
        self.calls += 1
        c = configs(self.seed)
        return (c, self.extra) if self.extra is not None else c


def test_cache_makes_once_then_loads(tmp_path):
    make = Maker(0, extra={"acceptance": 0.9})
    a = cached_ensemble(meta(), make, cache_dir=tmp_path, verbose=False)
    assert make.calls == 1
    b = cached_ensemble(meta(), make, cache_dir=tmp_path, verbose=False)
    assert make.calls == 1, "make() was called although the ensemble is cached"
    np.testing.assert_array_equal(a.configs, b.configs)
    np.testing.assert_array_equal(b.configs, configs(0).numpy())
    assert b.metadata["acceptance"] == 0.9  # extra metadata is stored but not part of the request
    assert len(list(tmp_path.glob("*.npz"))) == 1


@pytest.mark.parametrize("change", [
    dict(theory=Phi4(L=4, kappa=0.22, lam=0.022)),
    dict(theory=Phi4(L=4, kappa=0.21, lam=0.03)),
    dict(seed=2),
    dict(settings={"eps": 0.05, "n_steps": 20}),
    dict(sampler="metropolis"),
])
def test_cache_never_returns_an_ensemble_made_with_other_parameters(tmp_path, change):
    first = Maker(0)
    a = cached_ensemble(meta(), first, cache_dir=tmp_path, verbose=False)
    second = Maker(1)
    req = meta(**change)
    b = cached_ensemble(req, second, cache_dir=tmp_path, verbose=False)
    assert second.calls == 1, "a different request was served from the cache"
    assert not np.array_equal(a.configs, b.configs)
    for k, v in req.items():
        assert b.metadata[k] == v
    assert len(list(tmp_path.glob("*.npz"))) == 2
    # and each request still gets its own ensemble back
    c = cached_ensemble(meta(), Maker(5), cache_dir=tmp_path, verbose=False)
    np.testing.assert_array_equal(c.configs, a.configs)


def test_cache_file_with_foreign_metadata_raises_and_is_kept(tmp_path):
    req = meta()
    name = f"phi4-hmc-{request_key(req)}.npz"
    # a file under the request's name whose stored metadata describes another ensemble
    save_ensemble(tmp_path / name, configs(3), meta(seed=99))
    before = (tmp_path / name).read_bytes()
    make = Maker(0)
    with pytest.raises(ValueError):
        cached_ensemble(req, make, cache_dir=tmp_path, verbose=False)
    assert make.calls == 0
    assert (tmp_path / name).read_bytes() == before


@pytest.mark.parametrize("damage", ["truncated", "nan", "fewer"])
def test_damaged_cache_file_is_moved_aside_and_made_again(tmp_path, damage):
    req = meta()
    first = cached_ensemble(req, Maker(0), cache_dir=tmp_path, verbose=False)
    path = first.path
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        c = first.configs.copy()
        if damage == "nan":
            c[2, 1, 1] = np.nan
        else:
            c = c[:3]  # fewer configurations than the metadata promises
        with open(path, "wb") as fh:
            np.savez(fh, configs=c, metadata=np.array(json.dumps({**first.metadata, "n_configs": 7})))
    make = Maker(0)
    with pytest.warns(RuntimeWarning, match="damaged"):
        again = cached_ensemble(req, make, cache_dir=tmp_path, verbose=False)
    assert make.calls == 1 and np.array_equal(again.configs, first.configs)
    assert path.with_name(path.name + ".damaged").exists()  # kept for inspection, not deleted


def test_a_second_writer_fails_at_the_rename_instead_of_replacing_the_first(tmp_path):
    from lib.storage.files import atomic_write

    p = tmp_path / "out.bin"
    atomic_write(p, lambda fh: fh.write(b"first"), overwrite=False)
    with pytest.raises(FileExistsError, match="another process"):
        atomic_write(p, lambda fh: fh.write(b"second"), overwrite=False)
    assert p.read_bytes() == b"first" and [q.name for q in tmp_path.iterdir()] == ["out.bin"]


def test_cache_directory_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DMSQ_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    cached_ensemble(meta(), Maker(0), verbose=False)
    assert len(list((tmp_path / "envcache").glob("*.npz"))) == 1


def test_cached_hmc_ensemble_reuses_exactly_the_same_run(tmp_path, monkeypatch):
    kw = dict(n_burnin=10, n_spacing=5, eps=0.1, n_steps=5, batch_size=4, progress_bar=False)
    direct, info = hmc_ensemble(TH, 6, seed=7, **kw)
    ens = lib.cached_hmc_ensemble(TH, 6, seed=7, cache_dir=tmp_path, verbose=False, **kw)
    np.testing.assert_array_equal(ens.configs, direct.numpy())
    assert ens.metadata["theory"] == TH.to_dict() and ens.metadata["seed"] == 7
    assert ens.metadata["acceptance"] == pytest.approx(info["acceptance"])

    def no_hmc(self):
        raise AssertionError("HMC ran although the ensemble is cached")

    monkeypatch.setattr(HMC, "update", no_hmc)
    again = lib.cached_hmc_ensemble(TH, 6, seed=7, cache_dir=tmp_path, verbose=False, **kw)
    np.testing.assert_array_equal(again.configs, direct.numpy())
    with pytest.raises(AssertionError, match="HMC ran"):  # another κ is not served from the cache
        lib.cached_hmc_ensemble(Phi4(L=4, kappa=0.22, lam=0.022), 6, seed=7, cache_dir=tmp_path, verbose=False, **kw)
    with pytest.raises(AssertionError, match="HMC ran"):  # nor another ε
        lib.cached_hmc_ensemble(TH, 6, seed=7, cache_dir=tmp_path, verbose=False, **{**kw, "eps": 0.11})


def test_cache_lock_serialises_two_processes(tmp_path):
    """A second process waits for the first to finish a cache entry instead of computing it again."""
    import subprocess
    import sys
    import time

    from lib.storage import cache_lock

    entry = tmp_path / "entry.npz"
    code = (f"import time, pathlib; from lib.storage import cache_lock\n"
            f"with cache_lock({str(entry)!r}):\n"
            f"    pathlib.Path({str(tmp_path / 'started')!r}).touch(); time.sleep(1.5)\n"
            f"    pathlib.Path({str(entry)!r}).write_text('done')\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    deadline = time.time() + 60
    while not (tmp_path / "started").exists():
        assert time.time() < deadline and proc.poll() is None, "the first process did not start"
        time.sleep(0.05)
    with cache_lock(entry):
        assert entry.read_text() == "done"  # we got the lock only after the other process wrote the entry
    assert proc.wait(timeout=60) == 0
