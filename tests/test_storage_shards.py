"""lib.storage.shards and `--shard K/N` / `python -m lib merge`: shards of one request merge to the
ensemble one run makes (HMC bit for bit, acceptance included; generated ensembles to the network's
round-off), and a missing, duplicated or foreign shard is refused in one line."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lib
from lib.storage.shards import parse_shard, shard_range

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lib", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_shard_ranges_tile_the_indices():
    for total in (1, 7, 64):
        for n in range(1, min(total, 5) + 1):
            ranges = [shard_range(total, k, n) for k in range(n)]
            assert ranges[0][0] == 0 and ranges[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_sharded_hmc_merges_to_the_unsharded_ensemble_bit_for_bit(tmp_path):
    common = ("--L", 6, "--kappa", 0.25, "--lam", 0.022, "--n-configs", 24, "--per-chain", 2, "--seed", 4,
              "--n-burnin", 6, "--n-spacing", 3, "--eps", 0.1, "--n-steps", 5, "--batch-size", 5, "--no-progress")
    whole = tmp_path / "whole.npz"
    assert run("hmc", *common, "--out", whole).returncode == 0
    shards = []
    for k in (2, 0, 1):  # a job array, in any order
        out = tmp_path / f"s{k}.npz"
        r = run("hmc", *common, "--shard", f"{k}/3", "--out", out)
        assert r.returncode == 0, r.stderr
        shards.append(out)
    merged = tmp_path / "merged.npz"
    r = run("merge", merged, *shards)
    assert r.returncode == 0, r.stderr
    a, b = lib.storage.load_ensemble(whole), lib.storage.load_ensemble(merged)
    assert np.array_equal(a.configs, b.configs)
    assert a.metadata["acceptance"] == b.metadata["acceptance"]
    for key in ("theory", "sampler", "settings", "seed", "n_configs"):
        assert a.metadata[key] == b.metadata[key], key
    # refusals, one line each: a missing shard, a shard given twice, a foreign shard, not a shard
    other = tmp_path / "other.npz"
    foreign = [7 if (i > 0 and common[i - 1] == "--n-burnin") else v for i, v in enumerate(common)]
    assert run("hmc", *foreign, "--shard", "1/3", "--out", other).returncode == 0
    for args, match in (((shards[0], shards[1]), "missing"), ((shards[0], shards[0], shards[1], shards[2]), "twice"),
                        ((shards[0], shards[1], other), "another request"), ((whole,), "not a shard")):
        r = run("merge", tmp_path / "bad.npz", *args)
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and match in r.stderr, (args, r.stderr)
        assert not (tmp_path / "bad.npz").exists()


def test_sharded_generation_merges_to_the_unsharded_ensemble(tmp_path):
    ens = tmp_path / "e.npz"
    assert run("hmc", "--L", 8, "--kappa", 0.2, "--lam", 0.022, "--n-configs", 32, "--seed", 1, "--n-burnin", 5,
               "--n-spacing", 2, "--eps", 0.1, "--n-steps", 5, "--no-progress", "--out", ens).returncode == 0
    ckpt = tmp_path / "m.pt"
    assert run("train", ens, "--out", ckpt, "--epochs", 1, "--channels", "4,4,8,8", "--seed", 0,
               "--no-progress").returncode == 0
    whole = tmp_path / "g.npz"
    assert run("sample", ckpt, "--n", 10, "--seed", 2, "--steps", 10, "--out", whole, "--no-progress").returncode == 0
    parts = [tmp_path / f"g{k}.npz" for k in range(2)]
    for k, p in enumerate(parts):
        r = run("sample", ckpt, "--n", 10, "--seed", 2, "--steps", 10, "--shard", f"{k}/2", "--out", p,
                "--no-progress")
        assert r.returncode == 0, r.stderr
    merged = tmp_path / "gm.npz"
    assert run("merge", merged, *parts).returncode == 0
    a, b = lib.storage.load_ensemble(whole).configs, lib.storage.load_ensemble(merged).configs
    assert a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-4 * np.abs(a).max())
