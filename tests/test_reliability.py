"""The three severe failures a hostile probe found (issue 27), each as its own test: derived
results keyed on the content that produced them, two `train` runs on one output, and a failed
`train --force` that must leave the old model intact."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lib
from lib.diffusion import cached_dm_ensemble, cached_log_likelihood, default_model, make_sde, train_score_model
from lib.storage.cache import exclusive_lock

ROOT = Path(__file__).resolve().parents[1]
UNET = dict(channels=(4, 4, 8, 8), strides=(1, 2, 1, 1))


def run(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lib", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("reliability")
    th = lib.Phi4(L=8, kappa=0.21, lam=0.022)
    ens = lib.cached_hmc_ensemble(th, 96, seed=4, n_burnin=10, n_spacing=2, eps=0.1, n_steps=10, cache_dir=d,
                                  progress_bar=False, verbose=False)
    path = d / "ens.npz"
    lib.storage.save_ensemble(path, ens.configs, ens.metadata)
    return ens, path


def _train(configs, out, epochs=1):
    model = lib.diffusion.build_score_model(default_model(make_sde("ve"), (8, 8), **UNET).config, seed=1)
    train_score_model(configs, model, epochs=epochs, seed=1, checkpoint=out, progress_bar=False, resume=False)


def test_derived_results_follow_the_weights_not_the_flags(data, tmp_path):
    """Retraining a checkpoint in place with the same flags on other data must not return the old
    model's generated ensemble or log q from a shared cache: the result on the shared cache equals
    the result on a fresh cache."""
    ens, _ = data
    ckpt, shared, fresh = tmp_path / "m.pt", tmp_path / "shared", tmp_path / "fresh"
    kw = dict(n_steps=10, progress_bar=False, verbose=False)
    _train(ens.configs[:48], ckpt)
    old = cached_dm_ensemble(ckpt, 4, seed=2, cache_dir=shared, **kw).configs
    old_lq = cached_log_likelihood(ckpt, ens.configs[:2], 1, cache_dir=shared, rtol=1e-3, atol=1e-3,
                                   progress_bar=False, verbose=False)
    _train(ens.configs[48:], ckpt)  # same flags, other data, same path
    new_shared = cached_dm_ensemble(ckpt, 4, seed=2, cache_dir=shared, **kw).configs
    new_fresh = cached_dm_ensemble(ckpt, 4, seed=2, cache_dir=fresh, **kw).configs
    assert torch.equal(torch.as_tensor(new_shared), torch.as_tensor(new_fresh))
    assert not torch.equal(torch.as_tensor(new_shared), torch.as_tensor(old))
    lq_shared = cached_log_likelihood(ckpt, ens.configs[:2], 1, cache_dir=shared, rtol=1e-3, atol=1e-3,
                                      progress_bar=False, verbose=False)
    lq_fresh = cached_log_likelihood(ckpt, ens.configs[:2], 1, cache_dir=fresh, rtol=1e-3, atol=1e-3,
                                     progress_bar=False, verbose=False)
    assert (lq_shared == lq_fresh).all() and not (lq_shared == old_lq).all()


def test_a_second_train_run_on_the_same_output_is_refused(data, tmp_path):
    _, ens_path = data
    out = tmp_path / "m.pt"
    with exclusive_lock(out, "checkpoint"):  # another run holds the output
        r = run("train", ens_path, "--out", out, "--epochs", 1, "--channels", "4,4,8,8", "--strides", "1,2,1,1",
                "--seed", 0, "--no-progress")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "another run" in r.stderr
    assert not out.exists()


def test_a_failed_forced_retraining_leaves_the_old_checkpoint_intact(data, tmp_path):
    _, ens_path = data
    out = tmp_path / "m.pt"
    common = ("--channels", "4,4,8,8", "--strides", "1,2,1,1", "--seed", 0, "--no-progress")
    r = run("train", ens_path, "--out", out, "--epochs", 1, *common)
    assert r.returncode == 0, r.stderr
    before = out.read_bytes()
    r = run("train", ens_path, "--out", out, "--epochs", 3, "--force", "--lr", "1e30", *common)  # diverges
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "left as it was" in r.stderr
    assert out.read_bytes() == before and not list(tmp_path.glob(".m.pt.new*"))
    # a forced run that succeeds replaces it, with its own wall times beside it
    r = run("train", ens_path, "--out", out, "--epochs", 2, "--force", *common)
    assert r.returncode == 0, r.stderr
    state = lib.diffusion.load_checkpoint(out)
    assert state["epoch"] == 2 and len(state["epoch_seconds"]) == 2 and out.read_bytes() != before
