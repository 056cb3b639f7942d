"""Failures a hostile user would provoke, one test per class (what the README's reliability paragraph
guarantees): derived results keyed on the content that produced them, two `train` runs on one
output, a failed `train --force`, degenerate or contradictory input, short or frozen DM-MC chains,
random-stream domains, held-out records on resume, inconsistent cache content, the environment,
the CPU's bf16 capability, and `make execute`'s checks."""
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


# ------------------------------------------------------------------ the classes of failures, one table each
@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    _, ens_path = data
    out = tmp_path_factory.mktemp("ckpt") / "m.pt"
    r = run("train", ens_path, "--out", out, "--epochs", 1, "--channels", "4,4,8,8", "--strides", "1,2,1,1", "--seed", 0,
            "--no-progress")
    assert r.returncode == 0, r.stderr
    return out


def _degenerate_files(data, tmp_path):
    ens, _ = data
    files = {}
    for name, configs in (("zeros", 0 * ens.configs), ("two", ens.configs[:2]), ("one", ens.configs[:1])):
        files[name] = tmp_path / f"{name}.npz"
        lib.storage.save_ensemble(files[name], configs, ens.metadata)
    other = lib.cached_hmc_ensemble(lib.Phi4(L=8, kappa=0.3, lam=0.022), 8, seed=1, n_burnin=2, n_spacing=2, eps=0.1,
                                    n_steps=10, cache_dir=tmp_path, progress_bar=False, verbose=False)
    files["kappa"] = tmp_path / "kappa.npz"
    lib.storage.save_ensemble(files["kappa"], other.configs, other.metadata)
    return files


@pytest.mark.slow
def test_bad_or_degenerate_input_ends_in_one_line_before_any_work(data, checkpoint, tmp_path):
    """Each row: a command on degenerate, foreign or contradictory input must end in one line on
    stderr naming the problem, with a non-zero status (no traceback, no numpy warning, no nan)."""
    f = _degenerate_files(data, tmp_path)
    out = tmp_path / "out.npz"
    cases = [
        (("observables", f["zeros"]), "M = 0"),
        (("observables", f["zeros"], "--json"), "M = 0"),
        (("observables", f["two"]), "not a usable error"),
        (("observables", f["two"], "--json"), "not a usable error"),
        (("dmmc", checkpoint, "--n", 8, "--seed", 1, "--out", out, "--data", f["kappa"]), "kappa=0.3"),
        (("dmmc", checkpoint, "--n", 8, "--seed", 1, "--out", out, "--data", f["zeros"]), "all zero"),
        (("dmmc", checkpoint, "--n", 8, "--seed", 1, "--out", out, "--data", f["one"]), "1 configuration"),
        (("sample", checkpoint, "--n", 2, "--seed", 1, "--out", out, "--fast", "--churn", 5), "--churn"),
        (("sample", checkpoint, "--n", 2, "--seed", 1, "--out", out, "--steps", 20, "--rho", 3), "--rho"),
        (("sample", checkpoint, "--n", 2, "--seed", 1, "--out", out, "--sampler", "heun", "--rho", "1e-3"), "rho"),
    ]
    for args, match in cases:
        r = run(*args, "--no-progress") if args[0] != "observables" else run(*args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1 and match in lines[0], (args, r.stderr)
        assert not out.exists(), args


def test_short_or_frozen_dm_mc_chains_finish_and_warn(checkpoint, tmp_path):
    """A chain of 4 proposals used to fail after computing them all (the Γ-method needs five
    measurements); a chain that never moves must say so."""
    r = run("dmmc", checkpoint, "--n", 4, "--seed", 1, "--out", tmp_path / "c4.npz", "--steps", 5, "--no-progress")
    assert r.returncode == 0 and "fewer than 5" in r.stderr, r.stderr
    for seed in range(1, 6):  # an untrained model: some short chain accepts nothing
        r = run("dmmc", checkpoint, "--n", 3, "--seed", seed, "--out", tmp_path / f"c{seed}.npz", "--steps", 5,
                "--no-progress")
        assert r.returncode == 0, r.stderr
        if "acceptance 0.000" in r.stderr:
            assert "warning: the DM-MC chain never moved" in r.stderr
            break
    else:
        pytest.fail("no frozen chain among five seeds")


def test_stages_draw_from_their_own_streams(checkpoint, tmp_path):
    """`sample --seed s` and the proposals of `dmmc --variant paper --seed s` are different draws."""
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert run("sample", checkpoint, "--n", 5, "--seed", 3, "--out", a, "--steps", 10, "--no-progress").returncode == 0
    r = run("dmmc", checkpoint, "--n", 5, "--seed", 3, "--out", b, "--variant", "paper", "--steps", 10, "--probes", 1,
            "--rtol", "1e-3", "--no-progress")
    assert r.returncode == 0, r.stderr
    sampled = lib.storage.load_ensemble(a).configs
    for proposal in lib.storage.load_ensemble(b).configs:
        assert not any(torch.equal(torch.as_tensor(proposal), torch.as_tensor(x)) for x in sampled)


def test_resume_keeps_one_held_out_record(data, tmp_path):
    _, ens_path = data
    out = tmp_path / "v.pt"
    common = ("--out", out, "--channels", "4,4,8,8", "--strides", "1,2,1,1", "--seed", 0, "--n-train", 48,
              "--no-progress")
    assert run("train", ens_path, "--epochs", 1, "--n-validation", 8, *common).returncode == 0
    for other in (("--n-validation", 12), ()):  # another held-out set, or none: refused
        r = run("train", ens_path, "--epochs", 2, "--resume", *other, *common)
        assert r.returncode == 1 and "same held-out set" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run("train", ens_path, "--epochs", 2, "--resume", "--n-validation", 8, *common)
    assert r.returncode == 0, r.stderr
    assert len(lib.diffusion.load_checkpoint(out)["validation_history"]) == 2


def test_a_partial_file_with_columns_of_unequal_length_is_moved_aside(tmp_path):
    from lib.diffusion.derived import _load_partial
    from lib.storage.files import save_checkpoint

    request = {"kind": "test"}
    partial = tmp_path / "dm-path-partial-x.pt"
    save_checkpoint({"request": request, "configs": [torch.zeros(4, 2, 2)], "log_weight": [torch.zeros(3)]}, partial)
    with pytest.warns(RuntimeWarning, match="damaged"):
        saved = _load_partial(partial, request, ("configs", "log_weight"))
    assert saved == {"configs": [], "log_weight": []} and not partial.exists()
    # rows of another lattice than the request's: moved aside as well, not an internal error on every rerun
    save_checkpoint({"request": request, "configs": [torch.zeros(4, 3, 3)]}, partial)
    with pytest.warns(RuntimeWarning, match="damaged"):
        assert _load_partial(partial, request, ("configs",), {"configs": (2, 2)}) == {"configs": []}


def test_environment_and_device_choices(monkeypatch):
    from lib.storage.cache import default_cache_dir

    monkeypatch.setenv("DMSQ_CACHE", "")
    assert default_cache_dir() == Path.home() / ".cache" / "dmsq"  # never the current directory
    import lib.runtime

    for native, precision in ((True, "bf16"), (False, "float32")):  # bf16 only where the CPU has it natively
        monkeypatch.setattr(lib.runtime, "cpu_capability", lambda n=native: {"capability": "X", "native_bf16": n})
        assert lib.diffusion.fast_settings("cpu").precision == precision


@pytest.mark.parametrize("params, match", [("-p EPOCH 40", "no parameter(s) EPOCH"),
                                           ('-y "CHANEL: [8, 8, 8, 8]"', "no parameter(s) CHANEL")])
def test_make_execute_checks_the_chapter_and_its_parameters_first(params, match):
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("needs the Makefile's .venv")
    chapter = ROOT / "book" / "07_phi4_symmetric_phase.ipynb"
    before = chapter.read_bytes()
    r = subprocess.run(["make", "-s", "execute", "CHAPTER=book/07_phi4_symmetric_phase.ipynb", f"PARAMS={params}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and match in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(["make", "-s", "execute", "CHAPTER=book/99_missing.ipynb"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "no chapter" in r.stdout + r.stderr and "Traceback" not in r.stderr
    assert chapter.read_bytes() == before


def test_an_ensemble_whose_numbers_changed_is_refused_and_a_cached_one_made_again(tmp_path):
    import numpy as np

    th = lib.Phi4(L=4, kappa=0.2, lam=0.0)
    kw = dict(n_burnin=2, n_spacing=2, eps=0.1, n_steps=5, cache_dir=tmp_path, progress_bar=False, verbose=False)
    ens = lib.cached_hmc_ensemble(th, 8, seed=1, **kw)
    with np.load(ens.path) as z:
        configs, meta = z["configs"].copy(), str(z["metadata"])
    configs[3, 1, 2] += 1.0  # one number edited, the metadata left as it was
    with open(ens.path, "wb") as fh:
        np.savez(fh, configs=configs, metadata=np.array(meta))
    with pytest.raises(ValueError, match="checksum"):
        lib.storage.load_ensemble(ens.path)
    with pytest.warns(RuntimeWarning, match="damaged"):
        again = lib.cached_hmc_ensemble(th, 8, seed=1, **kw)
    assert np.array_equal(again.configs, ens.configs) and list(tmp_path.glob("*.damaged"))


@pytest.mark.parametrize("cls, field, value", [
    ("SampleSettings", "rho", 1e-3), ("SampleSettings", "snr", 1e3), ("SampleSettings", "rtol", 2.0),
    ("SampleSettings", "s_noise", 1e3), ("PathSettings", "rho", 1e-3), ("LikelihoodSettings", "atol", 5.0),
    ("DMMCSettings", "rtol", 10.0)])
def test_float_settings_out_of_their_range_are_refused_in_one_line(cls, field, value):
    """Not only the sign: a value that would overflow or make the computation meaningless is refused
    where the settings are built (before any work), naming the setting and its range."""
    settings = getattr(lib.diffusion, cls)
    with pytest.raises(ValueError, match=f"{field} must lie between") as exc:
        settings(**{field: value})
    assert "\n" not in str(exc.value)
