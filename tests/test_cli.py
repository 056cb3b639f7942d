"""The command line: a working round trip and one-line errors with non-zero exit on bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lib", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "ens.npz"
    r = run("hmc", "--L", 6, "--kappa", 0.2, "--lam", 0.0, "--n-configs", 400, "--seed", 3, "--out", out,
            "--n-burnin", 20, "--n-spacing", 4, "--eps", 0.2, "--n-steps", 5, "--no-progress")
    assert r.returncode == 0, r.stderr
    return out


def test_round_trip_json(ensemble):
    r = run("observables", ensemble, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    for k in ("M", "absM", "chi2", "binder"):
        assert len(d[k]) == 2 and d[k][1] > 0
    assert (d["n_configs"], d["L"], d["kappa"], d["lam"]) == (400, 6, 0.2, 0.0)
    # free field at kappa=0.2, d=2: chi2 = 1/(2 - 8*0.2) = 2.5 exactly; the ensemble must agree
    assert abs(d["chi2"][0] - 2.5) < 4 * d["chi2"][1]
    assert abs(d["M"][0]) < 4 * d["M"][1]


def test_metadata_written(ensemble):
    from lib.storage import load_ensemble

    ens = load_ensemble(ensemble)
    assert ens.configs.shape == (400, 6, 6)
    m = ens.metadata
    assert m["sampler"] == "hmc" and m["seed"] == 3 and m["theory"]["kappa"] == 0.2
    assert m["settings"]["n_steps"] == 5 and "lib_version" in m and 0 < m["acceptance"] <= 1


def _one_line_error(r):
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    return lines[0]


def test_refuses_to_overwrite(ensemble):
    before = ensemble.read_bytes()
    r = run("hmc", "--L", 4, "--kappa", 0.1, "--lam", 0.0, "--n-configs", 2, "--seed", 0, "--out", ensemble,
            "--no-progress")
    assert "exists" in _one_line_error(r)
    assert ensemble.read_bytes() == before


def test_force_overwrites(tmp_path):
    out = tmp_path / "e.npz"
    args = ["hmc", "--L", 4, "--kappa", 0.1, "--lam", 0.01, "--n-configs", 2, "--seed", 0, "--out", out,
            "--n-burnin", 1, "--n-spacing", 1, "--no-progress"]
    assert run(*args).returncode == 0
    assert run(*args).returncode != 0
    assert run(*args, "--force").returncode == 0


@pytest.mark.parametrize("bad", [
    ["--kappa", "-0.1", "--lam", "0.02"],  # kappa < 0
    ["--kappa", "0.2", "--lam", "-0.02"],  # lam < 0
    ["--kappa", "0.3", "--lam", "0"],  # free field beyond its stability bound 1/(2d)
    ["--kappa", "abc", "--lam", "0.02"],  # not a number
])
def test_bad_parameters(tmp_path, bad):
    out = tmp_path / "x.npz"
    r = run("hmc", "--L", 4, *bad, "--n-configs", 2, "--seed", 0, "--out", out, "--no-progress")
    _one_line_error(r)
    assert not out.exists()


def test_bad_lattice_size(tmp_path):
    r = run("hmc", "--L", 1, "--kappa", 0.1, "--lam", 0.02, "--n-configs", 2, "--seed", 0, "--out", tmp_path / "x.npz")
    assert "L must be" in _one_line_error(r)


def test_missing_file(tmp_path):
    assert "no such" in _one_line_error(run("observables", tmp_path / "missing.npz"))


def test_not_an_ensemble(tmp_path):
    txt = tmp_path / "text.npz"
    txt.write_text("hello")
    assert "not an ensemble" in _one_line_error(run("observables", txt))
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    assert "not an ensemble" in _one_line_error(run("observables", other))


def test_no_command_and_unknown_command():
    _one_line_error(run())
    _one_line_error(run("frobnicate"))


# ---------------------------------------------------------------- diffusion: train / sample
@pytest.fixture(scope="module")
def checkpoint(ensemble, tmp_path_factory):
    out = tmp_path_factory.mktemp("dm") / "model.pt"
    r = run("train", ensemble, "--out", out, "--epochs", 1, "--channels", "4,8,8,8", "--strides", "1,1,1,1",
            "--seed", 0, "--normalise", "maxabs", "--z2-augment", "--n-train", 128, "--no-progress")
    assert r.returncode == 0, r.stderr
    return out


def test_train_then_sample_round_trip(checkpoint, tmp_path):
    import torch

    state = torch.load(checkpoint, weights_only=False)
    assert state["settings"]["z2_augment"] and state["data_fingerprint"][0][0] == 128
    assert state["metadata"]["theory"]["L"] == 6  # the checkpoint knows what it was trained on
    out = tmp_path / "gen.npz"
    r = run("sample", checkpoint, "--n", 5, "--out", out, "--seed", 1, "--steps", 10, "--L", 8, "--no-progress")
    assert r.returncode == 0, r.stderr
    from lib.storage import load_ensemble

    ens = load_ensemble(out)
    assert ens.configs.shape == (5, 8, 8) and ens.metadata["sampler"] == "dm"
    assert ens.metadata["theory"]["L"] == 8 and ens.metadata["theory"]["kappa"] == 0.2
    r = run("observables", out, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["L"] == 8


def test_train_on_lattice_the_unet_cannot_take(ensemble, tmp_path):
    # L = 6 is not divisible by the down-sampling factor 8 of strides 1,2,2,2
    r = run("train", ensemble, "--out", tmp_path / "m.pt", "--epochs", 1, "--channels", "4,8,8,8",
            "--strides", "1,2,2,2", "--seed", 0, "--no-progress")
    assert "divisible" in _one_line_error(r)


def test_sample_errors(checkpoint, ensemble, tmp_path):
    assert "not a" in _one_line_error(run("sample", ensemble, "--n", 2, "--out", tmp_path / "a.npz", "--seed", 0))
    assert "no such" in _one_line_error(run("sample", tmp_path / "none.pt", "--n", 2, "--out", tmp_path / "a.npz",
                                            "--seed", 0))
    existing = tmp_path / "e.npz"
    existing.write_bytes(b"x")
    assert "exists" in _one_line_error(run("sample", checkpoint, "--n", 2, "--out", existing, "--seed", 0))


def test_train_errors(checkpoint, ensemble, tmp_path):
    assert "exists" in _one_line_error(run("train", ensemble, "--out", checkpoint, "--epochs", 1, "--seed", 0,
                                           "--channels", "4,8,8,8", "--strides", "1,1,1,1"))
    assert "symmetric" in _one_line_error(run("train", ensemble, "--out", tmp_path / "z.pt", "--epochs", 1,
                                              "--seed", 0, "--channels", "4,8,8,8", "--strides", "1,1,1,1",
                                              "--normalise", "minmax", "--z2-augment"))
    assert "other settings" in _one_line_error(run(
        "train", ensemble, "--out", checkpoint, "--epochs", 2, "--seed", 5, "--channels", "4,8,8,8",
        "--strides", "1,1,1,1", "--normalise", "maxabs", "--z2-augment", "--n-train", 128, "--resume"))


def test_hmc_ordered_start_and_several_configs_per_chain(tmp_path):
    out = tmp_path / "broken.npz"
    r = run("hmc", "--L", 6, "--kappa", 0.5, "--lam", 0.022, "--n-configs", 40, "--per-chain", 4, "--seed", 1,
            "--out", out, "--n-burnin", 5, "--n-spacing", 2, "--eps", 0.1, "--n-steps", 10, "--start", "ordered",
            "--no-progress")
    assert r.returncode == 0, r.stderr
    from lib.storage import load_ensemble

    ens = load_ensemble(out)
    assert ens.metadata["settings"]["start"] == "ordered" and ens.metadata["settings"]["n_per_chain"] == 4
    m = ens.configs.mean(axis=(1, 2)).reshape(10, 4)
    assert (np.sign(m) == np.sign(m[:, :1])).all()  # no tunnelling within a chain deep in the broken phase
    assert np.all(np.abs(m) > 3)  # near the classical vacuum 4.87, no domain walls
    bad = run("hmc", "--L", 6, "--kappa", 0.5, "--lam", 0.022, "--n-configs", 10, "--per-chain", 4, "--seed", 1,
              "--out", tmp_path / "x.npz")
    assert bad.returncode != 0 and "multiple" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_train_with_zero_mode_head(ensemble, tmp_path):
    import torch

    out = tmp_path / "zm.pt"
    r = run("train", ensemble, "--out", out, "--epochs", 1, "--channels", "4,8,8,8", "--strides", "1,1,1,1",
            "--seed", 0, "--zero-mode-head", "--n-train", 64, "--no-progress")
    assert r.returncode == 0, r.stderr
    cfg = torch.load(out, weights_only=False)["model_config"]
    assert cfg["zero_mode_head"] is True and 0 < cfg["zero_mode_sd"] < 0.5  # from the data
    r = run("train", ensemble, "--out", tmp_path / "w.pt", "--epochs", 1, "--channels", "4,8,8,8", "--seed", 0,
            "--zero-mode-weight", 0, "--no-progress")
    assert r.returncode == 2 and "zero-mode-weight" in r.stderr


def test_train_with_held_out_configurations_and_patience(ensemble, tmp_path):
    import torch

    out = tmp_path / "es.pt"
    r = run("train", ensemble, "--out", out, "--epochs", 2, "--channels", "4,8,8,8", "--strides", "1,1,1,1",
            "--seed", 0, "--n-train", 64, "--n-validation", 32, "--patience", 5, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "held-out loss" in r.stderr and "best at epoch" in r.stderr
    state = torch.load(out, weights_only=False)
    assert len(state["validation_history"]) == 2 and state["settings"]["patience"] == 5
    assert "n-validation" in _one_line_error(run("train", ensemble, "--out", tmp_path / "p.pt", "--epochs", 1,
                                                 "--seed", 0, "--patience", 3, "--channels", "4,8,8,8"))
    assert "only" in _one_line_error(run("train", ensemble, "--out", tmp_path / "q.pt", "--epochs", 1, "--seed", 0,
                                         "--n-train", 64, "--n-validation", 10 ** 6, "--channels", "4,8,8,8"))


def test_sample_at_bf16_records_its_precision(checkpoint, tmp_path):
    out = tmp_path / "gen16.npz"
    r = run("sample", checkpoint, "--n", 4, "--out", out, "--seed", 1, "--steps", 10, "--precision", "bf16",
            "--no-progress")
    assert r.returncode == 0, r.stderr
    from lib.storage import load_ensemble

    assert load_ensemble(out).metadata["settings"]["precision"] == "bf16"
    assert "invalid choice" in run("sample", checkpoint, "--n", 4, "--out", tmp_path / "x.npz", "--seed", 1,
                                   "--precision", "fp8").stderr


def test_sample_fast_takes_the_measured_winners_of_this_device(checkpoint, tmp_path):
    import lib.diffusion
    import lib.runtime

    out = tmp_path / "fast.npz"
    r = run("sample", checkpoint, "--n", 4, "--out", out, "--seed", 1, "--fast", "--device", "cpu", "--no-progress")
    assert r.returncode == 0, r.stderr
    from lib.storage import load_ensemble

    written = load_ensemble(out).metadata["settings"]
    assert lib.diffusion.fast_settings("cpu").key().items() <= written.items()
    native = lib.runtime.cpu_capability()["native_bf16"]
    assert (written["sampler"], written["n_steps"], written["precision"]) == ("dpm2", 48,
                                                                                "bf16" if native else "float32")
    r = run("sample", checkpoint, "--n", 4, "--out", tmp_path / "y.npz", "--seed", 1, "--fast", "--sampler", "em")
    assert "drop --sampler" in _one_line_error(r)


def test_every_settings_flag_takes_its_default_type_and_help_from_its_field():
    """The flags of hmc, ensemble, train, sample and dmmc that set a stage's settings are generated
    from the settings fields: no flag's default differs from its field's, and its help is the field's."""
    import argparse
    import dataclasses

    from lib import cli

    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    seen = set()
    for (command, flag), (cls, name) in cli.FLAG_FIELDS.items():
        field = {f.name: f for f in dataclasses.fields(cls)}[name]
        action = next(a for a in subs[command]._actions if flag in a.option_strings)
        assert action.default == field.default, (command, flag, action.default, field.default)
        assert field.metadata.get("doc") and field.metadata["doc"] in action.help, (command, flag)
        if field.metadata.get("choices"):
            assert tuple(action.choices) == field.metadata["choices"], (command, flag)
        seen.add(command)
    assert seen == {"hmc", "ensemble", "train", "sample", "dmmc"}
