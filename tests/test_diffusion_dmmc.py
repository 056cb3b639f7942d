"""DM-MC chains (lib.diffusion.dmmc, issue 13): the Metropolis step against a two-state toy with a
known transition matrix, a chain resumed after interruption equal to an uninterrupted one, and the
command line (`python -m lib dmmc`) with one-line refusals."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lib
from lib.analysis.stats import autocorrelation
from lib.mcmc.independence import independence_chain

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the Metropolis step, exactly
def test_two_state_independence_chain_has_the_exact_transition_matrix_and_stationary_law():
    """Target p = (1/4, 3/4), proposals from q = (0.7, 0.3). The independence Metropolis kernel is
    T(0→1) = q₁ min(1, p₁q₀/(p₀q₁)) = 0.3 and T(1→0) = q₀ p₀q₁/(p₁q₀) = 0.1, whose stationary law is
    p. The measured transition frequencies must match T within binomial errors, the occupation of
    state 1 must be 3/4 within Γ-method errors, and weighing with the wrong q (uniform) must miss."""
    p, q = np.array([0.25, 0.75]), np.array([0.7, 0.3])
    rng = np.random.default_rng(11)
    n = 60000
    states = (rng.random(n) < q[1]).astype(int)
    chain = independence_chain(np.log(p[states]) - np.log(q[states]), seed=5)
    s = chain.take(states)
    for a, b, exact in ((0, 1, 0.3), (1, 0, 0.1)):
        frm = s[:-1] == a
        freq = np.mean(s[1:][frm] == b)
        err = np.sqrt(exact * (1 - exact) / frm.sum())
        assert abs(freq - exact) < 4 * err, (a, b, freq, exact, err)
    ac = autocorrelation(s.astype(float), name="state")
    assert abs(ac.mean - 0.75) < 4 * ac.error, (ac.mean, ac.error)
    # acceptance = Σ_a p_a T(a → other) / Σ_a p_a q_other(a): the proposals of the other state
    # that are accepted, plus the proposals of the same state (always accepted)
    expected = 0.25 * (0.3 + 0.7) + 0.75 * (0.1 + 0.3)
    assert abs(chain.acceptance - expected) < 4 * np.sqrt(expected * (1 - expected) / n) * 2
    wrong = independence_chain(np.log(p[states]), seed=5).take(states)
    ac_w = autocorrelation(wrong.astype(float), name="wrong")
    # with q taken as uniform the chain targets p·q_true/q_uniform ∝ (0.175, 0.225): occupation 0.5625
    assert abs(ac_w.mean - 0.75) > 10 * ac_w.error


# ---------------------------------------------------------------- chains from a checkpoint
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small model trained for two epochs on an L = 8 free-field-like φ⁴ ensemble (cached in a
    temporary directory): the chain's mechanics, not its acceptance, are under test here."""
    from lib.diffusion import cached_score_model, default_model, make_sde

    cache = tmp_path_factory.mktemp("dmmc-cache")
    th = lib.Phi4(L=8, kappa=0.2, lam=0.01)
    ens = lib.cached_hmc_ensemble(th, 256, seed=1, n_burnin=30, n_spacing=5, eps=0.2, n_steps=5, cache_dir=cache,
                                  progress_bar=False, verbose=False)
    torch.manual_seed(0)
    net = default_model(make_sde("ve", 25.0), th.lattice_shape, channels=(4, 8, 8, 8), strides=(1, 2, 2, 2))
    _, _, ckpt = cached_score_model(ens, net, seed=0, epochs=2, batch_size=64, cache_dir=cache, progress_bar=False,
                                    verbose=False)
    return th, ens, ckpt, cache


def test_a_resumed_chain_equals_an_uninterrupted_one(tiny_model, tmp_path, monkeypatch):
    """Interrupt the proposals after one batch, rerun: the chain (configurations, indices,
    acceptances, weights) must equal, bitwise, a chain made in one go in a fresh cache with another
    batch size."""
    from lib.diffusion import data_spectrum, dm_mc_chain, generation

    th, ens, ckpt, _ = tiny_model
    spec = data_spectrum(ens.configs, torch.load(ckpt, weights_only=False)["metadata"]["normaliser"])
    whole = dm_mc_chain(ckpt, 48, 3, n_steps=5, theory=th, spectrum=spec, batch_size=48, cache_dir=tmp_path / "a",
                        progress_bar=False, verbose=False)
    calls = {"n": 0}
    real = generation.path_sample

    def flaky(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(generation, "path_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        dm_mc_chain(ckpt, 48, 3, n_steps=5, theory=th, spectrum=spec, batch_size=16, cache_dir=tmp_path / "b",
                    progress_bar=False, verbose=False)
    assert list((tmp_path / "b").glob("dm-path-partial-*.pt")), "the finished batch should have been kept"
    monkeypatch.setattr(generation, "path_sample", real)
    resumed = dm_mc_chain(ckpt, 48, 3, n_steps=5, theory=th, spectrum=spec, batch_size=16, cache_dir=tmp_path / "b",
                          progress_bar=False, verbose=False)
    np.testing.assert_array_equal(resumed.configs, whole.configs)
    np.testing.assert_array_equal(resumed.chain.index, whole.chain.index)
    np.testing.assert_array_equal(resumed.chain.log_weight, whole.chain.log_weight)
    assert resumed.summary == whole.summary
    # another seed is another chain
    other = dm_mc_chain(ckpt, 48, 4, n_steps=5, theory=th, spectrum=spec, cache_dir=tmp_path / "a",
                        progress_bar=False, verbose=False)
    assert not np.array_equal(other.chain.log_weight, whole.chain.log_weight)


def test_chain_summary_and_theory_from_the_checkpoint(tiny_model, tmp_path):
    """Without a theory or spectrum, the chain takes the checkpoint's training theory and the
    spectrum of the model's own samples; its summary agrees with its history."""
    from lib.diffusion import dm_mc_chain

    th, _, ckpt, _ = tiny_model
    res = dm_mc_chain(ckpt, 32, 1, n_steps=4, cache_dir=tmp_path, progress_bar=False, verbose=False)
    s = res.summary
    assert res.configs.shape == (32, 8, 8) and s["exact"] and s["nfe_per_proposal"] == 4
    assert s["acceptance"] == pytest.approx(res.chain.accepted[1:].mean())
    moved = np.flatnonzero(res.chain.accepted[1:]) + 1
    np.testing.assert_array_equal(res.configs[moved], np.asarray(res.proposals.configs)[moved])
    # the paper's recipe: EM proposals weighed with −S − log q̂ (ODE, Hutchinson); labelled inexact
    paper = dm_mc_chain(ckpt, 8, 1, variant="paper", n_steps=5, n_probes=1, rtol=1e-3, cache_dir=tmp_path,
                        progress_bar=False, verbose=False)
    from lib.diffusion import cached_log_likelihood, LikelihoodSettings

    lq = cached_log_likelihood(ckpt, paper.proposals.configs, 1, LikelihoodSettings(rtol=1e-3, atol=1e-3, n_probes=1),
                               cache_dir=tmp_path, progress_bar=False, verbose=False)[:, 0]
    action = th.action(torch.as_tensor(paper.proposals.configs)).numpy()
    np.testing.assert_allclose(paper.chain.log_weight, -action - lq, rtol=0, atol=1e-9)
    assert not paper.summary["exact"] and paper.summary["nfe_per_proposal"] > 5
    # the proposals alone (lib.diffusion.dm_mc_proposals, from the cache): the chain's weights, S and log q
    from lib.diffusion import dm_mc_proposals

    quiet = dict(cache_dir=tmp_path, progress_bar=False, verbose=False)
    props = dm_mc_proposals(ckpt, 8, 1, variant="paper", n_steps=5, n_probes=1, rtol=1e-3, **quiet)
    np.testing.assert_array_equal(props.log_weight, paper.chain.log_weight)
    np.testing.assert_allclose(props.log_q, lq, rtol=0, atol=1e-12)
    np.testing.assert_allclose(props.action, action, rtol=1e-12)
    paths = dm_mc_proposals(ckpt, 32, 1, n_steps=4, **quiet)
    np.testing.assert_array_equal(paths.log_weight, res.chain.log_weight)
    assert paths.log_q is None and paths.nfe == 4 and paths.configs.shape == (32, 8, 8)
    with pytest.raises(ValueError, match="at least 2"):
        dm_mc_chain(ckpt, 1, 1, cache_dir=tmp_path, progress_bar=False, verbose=False)
    with pytest.raises(ValueError, match="variant"):
        dm_mc_chain(ckpt, 8, 1, variant="mala", cache_dir=tmp_path, progress_bar=False, verbose=False)


# ---------------------------------------------------------------- the command line
def _run(*args, cache):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DMSQ_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "lib", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300)


def _one_line_error(r):
    assert r.returncode != 0 and r.stderr.startswith("error:") and r.stderr.count("\n") == 1, r.stderr
    return r.stderr


def test_cli_dmmc_writes_an_ensemble_the_observables_command_reads(tiny_model, tmp_path):
    _, ens, ckpt, _ = tiny_model
    out = tmp_path / "chain.npz"
    r = _run("dmmc", ckpt, "--n", 40, "--seed", 2, "--out", out, "--steps", 4, "--data", ens.path, "--no-progress",
             cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    assert "acceptance" in r.stderr
    from lib.storage import load_ensemble

    chain = load_ensemble(out)
    meta = chain.metadata
    assert chain.configs.shape == (40, 8, 8) and meta["sampler"] == "dm-mc" and meta["exact"]
    assert 0 <= meta["acceptance"] <= 1 and meta["theory"]["kappa"] == 0.2 and meta["settings"]["n_steps"] == 4
    assert meta["spectrum"] == "training data"
    r = _run("observables", out, "--json", cache=tmp_path / "cache")
    assert r.returncode == 0 and json.loads(r.stdout)["n_configs"] == 40
    # the same command again: refused (no silent overwrite); with --force the same chain, from the cache
    assert "exists" in _one_line_error(_run("dmmc", ckpt, "--n", 40, "--seed", 2, "--out", out, "--steps", 4,
                                            "--data", ens.path, cache=tmp_path / "cache"))
    r = _run("dmmc", ckpt, "--n", 40, "--seed", 2, "--out", out, "--steps", 4, "--data", ens.path, "--force",
             "--no-progress", cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(load_ensemble(out).configs, chain.configs)


def test_cli_dmmc_refuses_bad_input_in_one_line(tiny_model, tmp_path):
    _, ens, ckpt, _ = tiny_model
    c = tmp_path / "cache"
    o = tmp_path / "o.npz"
    assert "at least 2" in _one_line_error(_run("dmmc", ckpt, "--n", 1, "--seed", 0, "--out", o, cache=c))
    assert "--steps" in _one_line_error(_run("dmmc", ckpt, "--n", 8, "--seed", 0, "--out", o, "--steps", 1, cache=c))
    assert "does not go" in _one_line_error(_run("dmmc", ckpt, "--n", 8, "--seed", 0, "--out", o, "--sampler", "em",
                                                 cache=c))
    assert "not a" in _one_line_error(_run("dmmc", ens.path, "--n", 8, "--seed", 0, "--out", o, cache=c))
    assert "no such" in _one_line_error(_run("dmmc", tmp_path / "none.pt", "--n", 8, "--seed", 0, "--out", o,
                                             cache=c))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    _one_line_error(_run("dmmc", bad, "--n", 8, "--seed", 0, "--out", o, cache=c))
    assert "seed" in _one_line_error(_run("dmmc", ckpt, "--n", 8, "--seed", -1, "--out", o, cache=c))
    assert not o.exists()


# ---------------------------------------------------------------- the hybrid HMC/DM chain
@pytest.mark.slow
def test_hybrid_chain_is_exact_with_a_wrong_score_when_hmc_barely_moves():
    """Free field (L = 8, κ = 0.2, λ = 0) with a deliberately wrong score (0.95 × the exact one) and
    isotropic kernels of 6 steps: the proposals alone miss χ₂ by many standard errors. With HMC
    steps too small to move the field (ε = 10⁻⁴), the chain's only moves are the refreshed-path
    independence jumps, so keeping the exact χ₂ (within 4 Γ-method errors over 32 replicas,
    started from exact draws of the field) tests the refresh and the jump, not HMC."""
    from lib.diffusion import make_sde
    from lib.diffusion.dmmc import hybrid_chain
    from lib.diffusion.paths import PathSettings, path_sample

    sde = make_sde("ve", 25.0)
    th = lib.Phi4(L=8, kappa=0.2, lam=0.0)
    field = th.free_field()
    exact = field.score_fn(sde)

    def wrong(x, t):
        return 0.95 * exact(x, t)

    path = PathSettings(n_steps=6, variance="isotropic")
    res = hybrid_chain(wrong, sde, th, 600, 5, n_chains=32, spectrum=field.spectrum, hmc_per_cycle=1, eps=1e-4,
                       n_steps=1, path=path, start=field.sample(32, seed=9), dtype=torch.float64)
    chi_exact = th.free_susceptibility()
    m2 = 64 * res.measurements ** 2
    ac = autocorrelation(m2, name="chi2")
    assert 0.02 < res.accepted.mean() < 0.9 and res.nfe == 600 * 12 and res.trajectories == 600
    assert abs(ac.mean - chi_exact) < 4 * ac.error, (ac.mean, ac.error, chi_exact)
    raw = path_sample(wrong, sde, (4096, 8, 8), path, spectrum=field.spectrum, noise=torch.Generator().manual_seed(1),
                      dtype=torch.float64).x
    m2_raw = (raw.sum((1, 2)) ** 2 / 64).numpy()
    assert abs(m2_raw.mean() - chi_exact) > 6 * m2_raw.std() / np.sqrt(len(m2_raw)), "the proposals should be biased"


def test_the_chain_and_the_ema_do_not_follow_the_default_device(monkeypatch):
    """Found on a GPU machine: the chain's uniforms were drawn by a generator on the *default*
    device (CUDA when present) and a resumed EMA stayed on the CPU beside a model on the GPU.
    The uniforms live on the CPU whatever is visible; loaded averages go to the model's device
    (the meta device stands in for a GPU here)."""
    from lib.diffusion.training import EMA

    w = np.random.default_rng(0).normal(size=64)
    ref = independence_chain(w, seed=3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # resolve_device(None) would say cuda
    assert lib.rng.generator(3).device.type == "cpu"
    again = independence_chain(w, seed=3)
    assert np.array_equal(ref.index, again.index)
    monkeypatch.undo()
    net = torch.nn.Linear(3, 2)
    saved = EMA(net).state_dict()
    ema = EMA(torch.nn.Linear(3, 2, device="meta"))
    ema.load_state_dict(saved)
    assert all(v.device.type == "meta" for v in ema.shadow.values())


@pytest.mark.parametrize("variant", ["paths", "paper"])
def test_sharded_proposals_merge_to_the_unsharded_chain(tiny_model, tmp_path, monkeypatch, capsys, variant):
    """dmmc --shard K/N makes one range of the proposals with their weights; merged, --proposals runs
    the chain the unsharded command runs (to the network's round-off between batch sizes); proposals
    of another request are refused in one line."""
    from lib.cli import main
    from lib.storage import load_ensemble

    _, ens, ckpt, _ = tiny_model
    monkeypatch.setenv("DMSQ_CACHE", str(tmp_path / "cache"))
    common = ["--seed", "2", "--steps", "4", "--variant", variant, "--no-progress", "--batch-size", "8"]
    if variant == "paths":
        common += ["--data", str(ens.path)]
    else:
        common += ["--probes", "1", "--rtol", "1e-3"]
    n = "24"

    def run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        return code, capsys.readouterr().err

    code, err = run("dmmc", ckpt, "--n", n, "--out", tmp_path / "whole.npz", *common)
    assert code == 0, err
    for k in range(3):
        code, err = run("dmmc", ckpt, "--n", n, "--out", tmp_path / f"p{k}.npz", "--shard", f"{k}/3", *common)
        assert code == 0, err
    code, err = run("merge", tmp_path / "props.npz", *[tmp_path / f"p{k}.npz" for k in (2, 0, 1)])
    assert code == 0, err
    code, err = run("dmmc", ckpt, "--n", n, "--out", tmp_path / "sharded.npz", "--proposals", tmp_path / "props.npz",
                    *common)
    assert code == 0, err
    whole, sharded = load_ensemble(tmp_path / "whole.npz"), load_ensemble(tmp_path / "sharded.npz")
    np.testing.assert_allclose(sharded.configs, whole.configs, rtol=0, atol=1e-4)
    assert sharded.metadata["n_accepted"] == whole.metadata["n_accepted"]
    # proposals of another seed are not this chain's
    code, err = run("dmmc", ckpt, "--n", n, "--out", tmp_path / "x.npz", "--proposals", tmp_path / "props.npz",
                    *[c if c != "2" else "3" for c in common])
    assert code == 2 and err.startswith("error:") and err.count("\n") == 1 and "seed" in err, err
    # a single shard is not a merged set
    code, err = run("dmmc", ckpt, "--n", n, "--out", tmp_path / "y.npz", "--proposals", tmp_path / "p0.npz", *common)
    assert code == 2 and "merged" in err, err
