"""The pipeline's contracts: one frozen settings object per stage that is also its cache
key, per-sample random streams (a result never depends on the batch size, two seeds never share
a sample), the sampler registry, and the refusal of files from before the redesign."""
import dataclasses
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lib
from lib.diffusion import SAMPLERS, SampleSettings, TrainSettings, generate, make_sde
from lib.diffusion.networks import build_score_model
from lib.diffusion.samplers import SampleResult, sample
from lib.rng import SampleStreams, default_block, stream_seed
from lib.settings import Settings
from lib.theories import GaussianMixture

ROOT = Path(__file__).resolve().parent.parent
HMC_KW = dict(n_burnin=3, n_spacing=2, eps=0.1, n_steps=5, progress_bar=False)


class ExactScore(torch.nn.Module):
    """A 'network' whose score is the exact diffused score of a Gaussian mixture: elementwise
    arithmetic per sample, so any difference between batch sizes can only come from the noise."""

    def __init__(self, mixture, sde):
        super().__init__()
        self.mixture, self.sde = mixture, sde
        self.dtype_carrier = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t):
        return self.mixture.score(x, self.sde, t)


def exact_model(dim):
    means = np.zeros((2, dim))
    means[0, 0], means[1, 0] = 1.0, -1.0
    return ExactScore(GaussianMixture(means, [0.3, 0.3]), make_sde("ve", 10.0))


# ---------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("cls", [lib.HMCSettings, TrainSettings, SampleSettings])
def test_settings_are_frozen_round_trip_and_key_every_field(cls):
    s = cls()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.eps = 1.0
    assert cls.from_dict(s.to_dict()) == s
    assert cls.build(s.to_dict()) == s
    with pytest.raises(TypeError, match="no setting"):
        cls.build(not_a_setting=1)
    # every field is part of the key: changing any one changes it
    alternatives = {"eps": 0.5, "n_steps": 7, "n_burnin": 5, "n_spacing": 3, "n_per_chain": 2, "start": "ordered",
                    "dtype": "float32" if s.to_dict().get("dtype") == "float64" else "float64", "epochs": 3,
                    "batch_size": 8, "lr": 0.01, "ema_decay": 0.9, "z2_augment": True, "normalisation": "maxabs",
                    "grad_clip": 1.0, "zero_mode_weight": 2.0, "amp": True, "sampler": "pc", "ema": False,
                    "snr": 0.2, "n_corrector": 2, "rtol": 1e-3, "atol": 1e-3, "method": "rk4", "rho": 5.0,
                    "churn": 2.0, "s_noise": 0.9, "sigma_max": 50.0, "t_sampling": "lognormal", "patience": 5,
                    "precision": "bf16", "algorithm": "cluster", "mass": 0.5, "n_hmc": 2, "delta": 0.5}
    for f in dataclasses.fields(cls):
        changed = s.replace(**{f.name: alternatives[f.name]})
        assert changed.key() != s.key(), f.name


def test_a_setting_declared_omit_at_default_leaves_the_key_while_at_its_default():
    from lib.settings import setting

    @dataclasses.dataclass(frozen=True)
    class Demo(Settings):
        stage = "demo"
        a: int = 1
        b: float = setting(0.5, omit_at_default=True)

    assert Demo().key() == {"stage": "demo", "a": 1}
    assert Demo(b=0.7).key() == {"stage": "demo", "a": 1, "b": 0.7}


@pytest.mark.parametrize("cls, bad", [
    (lib.HMCSettings, dict(eps=math.inf)), (lib.HMCSettings, dict(n_steps=0)), (lib.HMCSettings, dict(start="warm")),
    (TrainSettings, dict(lr=0)), (TrainSettings, dict(lr=math.nan)), (TrainSettings, dict(ema_decay=1.0)),
    (TrainSettings, dict(normalisation="zscore")), (SampleSettings, dict(sampler="nope")),
    (SampleSettings, dict(eps=1.5)), (SampleSettings, dict(n_steps=1))])
def test_settings_validate_once_with_a_one_line_message(cls, bad):
    with pytest.raises(ValueError) as info:
        cls(**bad)
    assert len(str(info.value).splitlines()) == 1


# ---------------------------------------------------------------------------------- streams
def test_streams_depend_only_on_seed_and_sample_index():
    a = SampleStreams("dm", 3, 0, 10).randn((5,))
    b = SampleStreams("dm", 3, 4, 6).randn((5,))
    assert torch.equal(a[4:], b)
    # two seeds, or two domains, never share a stream
    seeds = {stream_seed(d, s, i) for d in ("dm", "hmc") for s in range(4) for i in range(256)}
    assert len(seeds) == 2 * 4 * 256
    # blocked streams (tiny samples): a batch must start at a block boundary
    assert default_block(1) == 1024 and default_block(64) == 1
    with pytest.raises(ValueError, match="multiple of the stream block"):
        SampleStreams("dm", 0, 5, 3, block=4)
    c = SampleStreams("dm", 0, 0, 12, block=4).randn(())
    d = SampleStreams("dm", 0, 8, 4, block=4).randn(())
    assert torch.equal(c[8:], d)


def test_hmc_ensemble_is_identical_for_batch_sizes_1_7_64():
    th = lib.Phi4(L=4, kappa=0.27, lam=0.022)
    runs = [lib.hmc_ensemble(th, 20, seed=5, batch_size=b, **HMC_KW)[0] for b in (1, 7, 64)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    # several configurations per chain, ordered starts
    kw = dict(HMC_KW, n_per_chain=2, start="ordered")
    runs = [lib.hmc_ensemble(th, 12, seed=5, batch_size=b, **kw)[0] for b in (1, 5)]
    assert torch.equal(runs[0], runs[1])


def test_two_hmc_seeds_never_share_a_chain():
    th = lib.Phi4(L=4, kappa=0.21, lam=0.022)
    a, _ = lib.hmc_ensemble(th, 16, seed=0, batch_size=8, **HMC_KW)
    b, _ = lib.hmc_ensemble(th, 16, seed=1, batch_size=8, **HMC_KW)
    rows = {r.numpy().tobytes() for r in a}
    assert not any(r.numpy().tobytes() in rows for r in b)


@pytest.mark.parametrize("dim, n, batch_sizes", [(64, 20, (1, 7, 64)), (1, 1500, (1, 7, 64, 5000))])
@pytest.mark.parametrize("sampler", ["em", "pc"])
def test_generated_ensemble_is_identical_for_any_batch_size(dim, n, batch_sizes, sampler):
    """With an exact (elementwise) score the samples are bit-for-bit the same for every batch size:
    sample i uses only the random numbers of stream (seed, i)."""
    model = exact_model(dim)
    kw = dict(lattice_shape=(dim,), n_steps=10, sampler=sampler, progress_bar=False)
    runs = [generate(model, n, 3, batch_size=b, **kw)[0] for b in batch_sizes]
    for r in runs[1:]:
        assert torch.equal(runs[0], r)
    # resuming at any sample (a multiple of the stream block) continues the same ensemble
    cut = default_block(dim) * (2 if dim > 1 else 1)
    head = generate(model, cut, 3, batch_size=7, **kw)[0]
    tail = generate(model, n - cut, 3, batch_size=64, first=cut, **kw)[0]
    assert torch.equal(torch.cat([head, tail]), runs[0])
    # another seed shares no sample
    other = generate(model, n, 4, batch_size=64, **kw)[0]
    rows = {r.numpy().tobytes() for r in runs[0]}
    assert not any(r.numpy().tobytes() in rows for r in other)


def test_unet_generation_agrees_across_batch_sizes_to_round_off():
    """A U-Net's convolutions and matrix products are computed with blockings that depend on the
    batch size, so float32 results differ in the last bits; the random numbers are the same, so
    the samples agree to round-off amplified by 20 steps."""
    sde = make_sde("ve", 25.0)
    net = build_score_model(lib.diffusion.default_model(sde, (8, 8), channels=(4, 8, 8, 8)).config, seed=0).eval()
    runs = [generate(net, 9, 1, lattice_shape=(8, 8), n_steps=20, batch_size=b, progress_bar=False)[0]
            for b in (1, 7, 64)]
    scale = runs[0].abs().max()
    for r in runs[1:]:
        assert (r - runs[0]).abs().max() < 1e-4 * scale


def test_every_registered_sampler_runs_and_counts_network_evaluations():
    model = exact_model(2)
    x_T = SampleStreams("dm", 0, 0, 256, block=1024).randn((2,), torch.float64) * model.sde.prior_std()
    for name in SAMPLERS:
        settings = SampleSettings(sampler=name, n_steps=40, rtol=1e-4, atol=1e-4, churn=5.0 if name == "churn" else 0.0)
        res = sample(model, model.sde, x_T, settings, SampleStreams("dm", 0, 0, 256, block=1024))
        assert isinstance(res, SampleResult) and res.x.shape == (256, 2) and res.nfe > 0, name
        # the samples sit on the two peaks (±1 in the first coordinate)
        assert abs(res.x[:, 0].abs().mean().item() - 1.0) < 0.15, name
    assert SampleSettings(n_steps=40).n_steps == 40


# ---------------------------------------------------------------------------------- CLI = cached path
def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "lib", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    return r


def test_cli_and_cached_path_give_the_same_configurations(tmp_path):
    th = lib.Phi4(L=8, kappa=0.21, lam=0.022)
    cached = lib.cached_hmc_ensemble(th, 12, seed=2, cache_dir=tmp_path / "c", verbose=False, batch_size=5, **HMC_KW)
    _cli("hmc", "--L", 8, "--kappa", 0.21, "--lam", 0.022, "--n-configs", 12, "--seed", 2, "--n-burnin", 3,
         "--n-spacing", 2, "--eps", 0.1, "--n-steps", 5, "--batch-size", 12, "--out", tmp_path / "h.npz", "--no-progress")
    cli = lib.storage.load_ensemble(tmp_path / "h.npz")
    np.testing.assert_array_equal(cli.configs, cached.configs)
    assert cli.metadata["settings"] == lib.HMCSettings(n_burnin=3, n_spacing=2, eps=0.1, n_steps=5).to_dict()
    # a model trained by the CLI, sampled by the CLI and by the cached path
    _cli("train", tmp_path / "h.npz", "--out", tmp_path / "m.pt", "--epochs", 1, "--seed", 0, "--channels", "4,8,8,8",
         "--batch-size", 4, "--no-progress")
    _cli("sample", tmp_path / "m.pt", "--n", 6, "--seed", 9, "--steps", 10, "--batch-size", 4,
         "--out", tmp_path / "g.npz", "--no-progress")
    g_cli = lib.storage.load_ensemble(tmp_path / "g.npz").configs
    g_lib = lib.diffusion.cached_dm_ensemble(tmp_path / "m.pt", 6, seed=9, n_steps=10, batch_size=4,
                                             cache_dir=tmp_path / "c", progress_bar=False, verbose=False).configs
    np.testing.assert_array_equal(g_cli, g_lib)


# ---------------------------------------------------------------------------------- files from before
def test_checkpoints_and_chain_states_of_the_old_format_are_refused_with_what_to_do(tmp_path):
    old = tmp_path / "old.pt"
    torch.save({"format": "dmsq-checkpoint-v1", "model_config": {}}, old)
    with pytest.raises(ValueError, match="retrain"):
        lib.diffusion.load_checkpoint(old)
    th = lib.Phi4(L=4, kappa=0.21, lam=0.022)
    ck = tmp_path / "ck"
    lib.hmc_ensemble(th, 4, seed=1, checkpoint_dir=ck, **HMC_KW)
    # a checkpoint directory made with other settings is refused in one line, never reused
    for change in (dict(start="ordered"), dict(eps=0.05), dict(n_burnin=4)):
        with pytest.raises(ValueError, match="checkpoint") as info:
            lib.hmc_ensemble(th, 4, seed=1, checkpoint_dir=ck, **{**HMC_KW, **change})
        assert len(str(info.value).splitlines()) == 1
    with pytest.raises(ValueError, match="seed"):
        lib.hmc_ensemble(th, 4, seed=2, checkpoint_dir=ck, **HMC_KW)
    with pytest.raises(ValueError, match="made for"):
        lib.hmc_ensemble(lib.Phi4(L=4, kappa=0.3, lam=0.022), 4, seed=1, checkpoint_dir=ck, **HMC_KW)


def test_training_twice_with_one_seed_gives_bit_identical_checkpoints(tmp_path):
    th = lib.Phi4(L=8, kappa=0.21, lam=0.022)
    ens = lib.cached_hmc_ensemble(th, 8, seed=0, cache_dir=tmp_path, verbose=False, **HMC_KW)
    cfg = lib.diffusion.default_model(make_sde(), (8, 8), channels=(4, 8, 8, 8)).config
    for name in ("a.pt", "b.pt"):
        lib.diffusion.train_score_model(ens.configs, build_score_model(cfg, seed=3), seed=3, epochs=2, batch_size=4,
                                        checkpoint=tmp_path / name, progress_bar=False)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
