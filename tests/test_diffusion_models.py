"""lib.diffusion.models and lib.diffusion.derived on lattice ensembles: ordered HMC starts, several
configurations per chain, cached training and generation, Z2 augmentation, the RG view of the
forward process. CI scale: L = 8, a few epochs."""
import os

import numpy as np
import pytest
import torch

import lib
from lib import observables as obs
from lib.storage.files import content_hash as _request_hash
from lib.diffusion import (cached_dm_ensemble, cached_score_model, default_model, generate,
                           make_sde)
from lib.storage import Ensemble, make_metadata
from lib.diffusion.networks import build_score_model
from lib.diffusion import dsm_loss

from helpers import assert_stat

SMALL_UNET = dict(channels=(8, 8, 16, 16), strides=(1, 2, 2, 2))


# ---------------------------------------------------------------- HMC: ordered starts, chains
def test_classical_vacuum_minimises_constant_field_action():
    th = lib.Phi4(L=4, kappa=0.5, lam=0.022)
    v = th.classical_vacuum()
    phis = torch.linspace(0, 2 * v, 2001, dtype=torch.float64)
    s = th.action(phis[:, None, None] * torch.ones(1, 4, 4, dtype=torch.float64))
    assert abs(phis[s.argmin()].item() - v) < 2 * v / 2000
    # below the classical transition the minimum is φ = 0
    assert lib.Phi4(L=4, kappa=0.2, lam=0.022).classical_vacuum() == 0.0


def test_ordered_start_populates_both_vacua_and_chains_are_contiguous():
    th = lib.Phi4(L=8, kappa=0.5, lam=0.022)
    n_chains, per = 64, 3
    configs, info = lib.hmc_ensemble(th, n_chains * per, seed=3, n_burnin=10, n_spacing=2, eps=0.1, n_steps=10,
                                     start="ordered", n_per_chain=per, progress_bar=False)
    sign = np.sign(obs.magnetisation(configs)).reshape(n_chains, per)
    # deep in the broken phase no chain tunnels in 16 trajectories: a chain's samples share a sign
    assert (sign == sign[:, :1]).all()
    # the start signs are fair coin flips: 64 chains, binomial error
    frac = (sign[:, 0] > 0).mean()
    assert abs(frac - 0.5) < 4 * 0.5 / np.sqrt(n_chains)
    # the sampled field sits near the classical vacuum (quantum corrections are small at λ = 0.022)
    assert abs(obs.abs_magnetisation(configs).mean() / th.classical_vacuum() - 1) < 0.1
    assert info["settings"]["start"] == "ordered" and info["settings"]["n_per_chain"] == per


def test_several_configs_per_chain_resume_bitwise(tmp_path):
    th = lib.Phi4(L=4, kappa=0.3, lam=0.022)
    kw = dict(n_burnin=3, n_spacing=2, eps=0.1, n_steps=5, batch_size=4, n_per_chain=3, progress_bar=False)
    ref, _ = lib.hmc_ensemble(th, 24, seed=1, **kw)
    # interrupt after the first batch by running a smaller request into the same checkpoint dir
    lib.hmc_ensemble(th, 12, seed=1, checkpoint_dir=tmp_path, **kw)
    resumed, _ = lib.hmc_ensemble(th, 24, seed=1, checkpoint_dir=tmp_path, **kw)
    assert torch.equal(ref, resumed)
    with pytest.raises(ValueError, match="multiple"):
        lib.hmc_ensemble(th, 10, seed=1, **kw)


def test_cached_ensemble_key_separates_starts_and_ignores_the_batch_size(tmp_path):
    th = lib.Phi4(L=4, kappa=0.3, lam=0.022)
    kw = dict(n_burnin=2, n_spacing=2, eps=0.1, n_steps=5, cache_dir=tmp_path, progress_bar=False, verbose=False)
    hot = lib.cached_hmc_ensemble(th, 8, seed=1, **kw)
    ordered = lib.cached_hmc_ensemble(th, 8, seed=1, start="ordered", **kw)
    assert hot.metadata["settings"] == lib.HMCSettings(n_burnin=2, n_spacing=2, eps=0.1, n_steps=5).key()
    assert ordered.metadata["settings"]["start"] == "ordered"
    assert len(list(tmp_path.glob("*.npz"))) == 2
    # another batch size is the same request: the file is loaded, not made again
    again = lib.cached_hmc_ensemble(th, 8, seed=1, batch_size=3, **kw)
    assert again.path == hot.path and len(list(tmp_path.glob("*.npz"))) == 2


# ---------------------------------------------------------------- observables for the broken phase and RG view
def test_block_average_and_vacuum_fractions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8, 8))
    b = obs.block_average(x, 2)
    assert b.shape == (50, 4, 4)
    assert np.allclose(b.mean(axis=(1, 2)), x.mean(axis=(1, 2)))  # coarse-graining keeps M
    assert np.allclose(b[0, 0, 0], x[0, :2, :2].mean())
    with pytest.raises(ValueError):
        obs.block_average(x, 3)
    pure = np.concatenate([np.ones((30, 8, 8)), -np.ones((10, 8, 8))])
    wall = np.ones((5, 8, 8))
    wall[:, :, :3] = -1
    fr = obs.vacuum_fractions(np.concatenate([pure, wall]))
    assert fr["positive"][0] == pytest.approx(35 / 45)
    assert fr["domain_wall"][0] == pytest.approx(5 / 45)


def test_forward_ve_process_adds_white_noise_to_the_power_spectrum():
    """RG view (footnote 5): G̃_t(p) = G̃_0(p) + Ξ(t) for VE, at every momentum; checked on the
    free field with its exact propagator."""
    th = lib.Phi4(L=8, kappa=0.2, lam=0.0)
    sde = make_sde("ve", 25.0)
    g = torch.Generator().manual_seed(0)
    n = 4000
    gp = th.free_momentum_propagator()
    noise_p = torch.randn((n, 8, 8), generator=g, dtype=torch.float64)
    x0 = torch.fft.ifftn(torch.fft.fftn(noise_p, dim=(1, 2)) * gp.sqrt(), dim=(1, 2)).real  # exact free field
    for t in (0.0, 0.3, 0.6):
        xt = sde.perturb(x0, t, torch.randn((n, 8, 8), generator=g, dtype=torch.float64))
        per = np.abs(np.fft.fftn(xt.numpy(), axes=(1, 2))) ** 2 / 64
        mean, err = per.mean(0), per.std(0) / np.sqrt(n)
        expect = gp.numpy() + float(sde.Xi(t))
        z = np.abs(mean - expect) / err
        assert z.max() < 5, f"t={t}: worst momentum off by {z.max():.1f} sigma"


# ---------------------------------------------------------------- cached training and generation
@pytest.fixture(scope="module")
def broken_ensemble(tmp_path_factory):
    d = tmp_path_factory.mktemp("cache")
    th = lib.Phi4(L=8, kappa=0.5, lam=0.022)
    ens = lib.cached_hmc_ensemble(th, 256, seed=5, n_burnin=20, n_spacing=2, eps=0.1, n_steps=10, start="ordered",
                                  n_per_chain=4, cache_dir=d, progress_bar=False, verbose=False)
    return ens, d


def test_training_lowers_the_loss(broken_ensemble):
    ens, d = broken_ensemble
    sde = make_sde("ve")
    model = default_model(sde, (8, 8), **SMALL_UNET)
    x = torch.as_tensor(ens.configs, dtype=torch.float32)
    x = x / x.abs().max()  # the maxabs normalisation used in training

    def losses(m):
        m.eval()
        with torch.no_grad():
            return np.array([dsm_loss(m, x, generator=torch.Generator().manual_seed(s)).item() for s in range(8)])

    torch.manual_seed(1)  # cached_score_model initialises the network from its seed, as here
    before = losses(build_score_model(model.config))
    trained, state, _ = cached_score_model(ens, model, epochs=6, seed=1, normalisation="maxabs", cache_dir=d,
                                           progress_bar=False, verbose=False)
    after = losses(trained)
    diff = before - after  # common random numbers: the same noise before and after
    assert diff.mean() > 5 * diff.std(ddof=1) / np.sqrt(len(diff)), (before, after)
    assert len(state["history"]) == 6
    # the initial weights follow from the seed alone: another template instance gives the same model
    again, _, _ = cached_score_model(ens, default_model(sde, (8, 8), **SMALL_UNET), epochs=6, seed=1,
                                     normalisation="maxabs", cache_dir=d / "fresh", progress_bar=False, verbose=False)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), again.state_dict().values()))


def test_cached_model_reused_only_for_identical_settings(broken_ensemble):
    ens, d = broken_ensemble
    sde = make_sde("ve")
    kw = dict(epochs=1, seed=2, normalisation="maxabs", cache_dir=d, progress_bar=False, verbose=False)
    _, s1, p1 = cached_score_model(ens, default_model(sde, (8, 8), **SMALL_UNET), **kw)
    mtime = os.path.getmtime(p1)
    _, s2, p2 = cached_score_model(ens, default_model(sde, (8, 8), **SMALL_UNET), **kw)
    assert p1 == p2 and os.path.getmtime(p1) == mtime  # loaded, not retrained
    # every setting that changes the model changes the cache entry
    others = [dict(kw, seed=3), dict(kw, z2_augment=True), dict(kw, n_train=128), dict(kw, lr=5e-4),
              dict(kw, normalisation="minmax"), dict(kw, zero_mode_weight=4.0)]
    paths = {cached_score_model(ens, default_model(sde, (8, 8), **SMALL_UNET), **o)[2] for o in others}
    paths.add(cached_score_model(ens, default_model(sde, (8, 8), channels=(8, 8, 8, 8), strides=(1, 2, 2, 2)),
                                 **kw)[2])
    assert p1 not in paths and len(paths) == len(others) + 1
    # another training ensemble (other seed) is another model
    other_ens = Ensemble(ens.configs[::-1].copy(), {**ens.metadata, "seed": 99})
    assert cached_score_model(other_ens, default_model(sde, (8, 8), **SMALL_UNET), **kw)[2] != p1
    # a file under this request's name that holds another model is refused, not overwritten
    victim = next(iter(paths))
    data = victim.read_bytes()
    p1.write_bytes(data)
    with pytest.raises(ValueError, match="different model"):
        cached_score_model(ens, default_model(sde, (8, 8), **SMALL_UNET), **kw)
    assert p1.read_bytes() == data


def test_longer_training_continues_a_shorter_cached_run(broken_ensemble, tmp_path, capsys):
    ens, _ = broken_ensemble
    sde = make_sde("ve")
    kw = dict(seed=4, normalisation="maxabs", ema_decay=0.9, progress_bar=False, verbose=False)
    a, b = tmp_path / "a", tmp_path / "b"
    _, s1, p1 = cached_score_model(ens, default_model(sde, (8, 8), **SMALL_UNET), epochs=1, cache_dir=a, **kw)
    short = p1.read_bytes()
    _, s2, p2 = cached_score_model(ens, default_model(sde, (8, 8), **SMALL_UNET), epochs=3, cache_dir=a,
                                   **dict(kw, verbose=True))
    assert f"continuing the cached 1-epoch model {p1.name}" in capsys.readouterr().out
    _, s3, p3 = cached_score_model(ens, default_model(sde, (8, 8), **SMALL_UNET), epochs=3, cache_dir=b, **kw)
    assert p2 != p1 and p1.read_bytes() == short          # the shorter model is kept as it was
    assert p2.name == p3.name and s2["epoch"] == 3
    assert s2["history"][:1] == s1["history"] and s2["history"] == s3["history"]
    assert all(torch.equal(s2[w][k], s3[w][k]) for w in ("model", "ema") for k in s3[w])  # = training from scratch
    # another setting (here the seed) is not a shorter run of the same model: trained afresh
    _, s4, _ = cached_score_model(ens, default_model(sde, (8, 8), **SMALL_UNET), epochs=3, cache_dir=a,
                                  **dict(kw, seed=5))
    assert s4["history"][0] != s1["history"][0]


def test_held_out_configurations_and_early_stopping_in_the_cached_workflow(broken_ensemble, tmp_path):
    """n_validation holds out the configurations after the first n_train: it enters the request
    (and only then), the checkpoint records a held-out loss per epoch, equal to the one computed
    from those configurations; patience without held-out data is refused in one line."""
    from lib.diffusion import held_out_loss, load_model

    ens, _ = broken_ensemble
    sde = make_sde("ve")
    kw = dict(seed=4, normalisation="maxabs", epochs=2, cache_dir=tmp_path, progress_bar=False, verbose=False)
    _, s0, p0 = cached_score_model(ens, default_model(sde, (8, 8), **SMALL_UNET), n_train=192, **kw)
    _, s1, p1 = cached_score_model(ens, default_model(sde, (8, 8), **SMALL_UNET), n_train=192, n_validation=64,
                                   **kw)
    assert p0 != p1 and "n_validation" not in s0["metadata"]["request"]
    assert s1["metadata"]["request"]["n_validation"] == 64 and s0["history"] == s1["history"]
    assert len(s1["validation_history"]) == 2 and s1["best_epoch"] in (1, 2)
    last, _ = load_model(p1, best=False)
    norm = lib.diffusion.Normaliser.from_dict(s1["metadata"]["normaliser"])
    held = norm.forward(torch.as_tensor(ens.configs[192:256])).float()
    settings = lib.diffusion.TrainSettings.from_dict(s1["settings"])
    assert held_out_loss(last, held, settings, seed=4) == pytest.approx(s1["validation_history"][-1], rel=1e-5)
    with pytest.raises(ValueError, match="n_validation > 0"):
        cached_score_model(ens, default_model(sde, (8, 8), **SMALL_UNET), n_train=192, patience=2, **kw)
    with pytest.raises(ValueError, match="n_validation must lie"):
        cached_score_model(ens, default_model(sde, (8, 8), **SMALL_UNET), n_train=192, n_validation=65, **kw)


def test_generated_ensemble_shape_metadata_and_cache(broken_ensemble):
    ens, d = broken_ensemble
    sde = make_sde("ve")
    _, state, path = cached_score_model(ens, default_model(sde, (8, 8), **SMALL_UNET), epochs=2, seed=4,
                                        normalisation="minmax", cache_dir=d, progress_bar=False, verbose=False)
    kw = dict(n_steps=20, batch_size=6, cache_dir=d, progress_bar=False, verbose=False)
    g = cached_dm_ensemble(path, 10, seed=1, **kw)
    assert g.configs.shape == (10, 8, 8) and g.configs.dtype == np.float64 and np.isfinite(g.configs).all()
    meta = g.metadata
    assert meta["sampler"] == "dm" and meta["seed"] == 1 and meta["n_configs"] == 10
    assert meta["theory"] == ens.metadata["theory"]
    # the model is named by its content (weights, normaliser, training data) beside its request
    model, _ = lib.diffusion.load_model(path)
    assert meta["model"] == _request_hash(lib.diffusion.model_identity(model, state))
    assert meta["model_request"] == state["metadata"]["request"]
    assert meta["settings"]["n_steps"] == 20 and meta["lib_version"] == lib.__version__
    # the same request loads the same file; another seed or L is another ensemble
    assert np.array_equal(cached_dm_ensemble(path, 10, seed=1, **kw).configs, g.configs)
    assert not np.array_equal(cached_dm_ensemble(path, 10, seed=2, **kw).configs, g.configs)
    big = cached_dm_ensemble(path, 3, seed=1, lattice_shape=(16, 16), **kw)
    assert big.configs.shape == (3, 16, 16) and big.metadata["theory"]["L"] == 16
    # the minmax normaliser maps the generated fields back to physical units (|φ| ~ vacuum, not ≤ 1)
    assert np.abs(g.configs).max() > 1.5
    with pytest.raises(ValueError, match="divisible"):
        cached_dm_ensemble(path, 3, seed=1, lattice_shape=(12, 12), **kw)
    assert not list(d.glob("dm-partial-*"))  # partial batches are removed once the ensemble is stored


def test_an_interrupted_generation_resumes_from_its_finished_batches(broken_ensemble, tmp_path, monkeypatch):
    """Generation keeps each finished batch; a rerun after an interruption starts from them (no
    warning, nothing moved aside) and gives, bitwise, the ensemble made in one go with the same batch
    size; with another batch size the same random numbers give the same fields up to the float32
    rounding of the network, which depends on the batch."""
    import warnings

    from lib.diffusion import derived

    ens, d = broken_ensemble
    _, _, path = cached_score_model(ens, default_model(make_sde("ve"), (8, 8), **SMALL_UNET), epochs=2, seed=4,
                                    cache_dir=d, progress_bar=False, verbose=False)
    kw = dict(n_steps=10, progress_bar=False, verbose=False)
    whole = cached_dm_ensemble(path, 10, seed=3, batch_size=4, cache_dir=tmp_path / "a", **kw)
    other_batch = cached_dm_ensemble(path, 10, seed=3, batch_size=10, cache_dir=tmp_path / "c", **kw)
    real, kept = derived.generate, []

    def interrupted(*args, on_batch, **kwargs):
        def keep(start, *tensors):  # the second finished batch is stored, then the run is interrupted
            on_batch(start, *tensors)
            kept.append(start)
            if len(kept) == 2:
                raise KeyboardInterrupt

        return real(*args, on_batch=keep, **kwargs)

    monkeypatch.setattr(derived, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cached_dm_ensemble(path, 10, seed=3, batch_size=4, cache_dir=tmp_path / "b", **kw)
    assert len(list((tmp_path / "b").glob("dm-partial-*.pt"))) == 1
    starts = []
    monkeypatch.setattr(derived, "generate", lambda *a, first=0, **k: starts.append(first) or real(*a, first=first, **k))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a partial file moved aside warns: that must not happen here
        resumed = cached_dm_ensemble(path, 10, seed=3, batch_size=4, cache_dir=tmp_path / "b", **kw)
    assert starts == [8], "the rerun should generate only the rows after the two kept batches"
    np.testing.assert_array_equal(resumed.configs, whole.configs)
    scale = np.abs(whole.configs).max()
    np.testing.assert_allclose(other_batch.configs, whole.configs, rtol=0, atol=1e-5 * scale)
    assert not list((tmp_path / "b").glob("dm-partial-*")) and not list((tmp_path / "b").glob("*.damaged"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_generation_on_cuda(broken_ensemble):
    ens, d = broken_ensemble
    sde = make_sde("ve")
    model, state, _ = cached_score_model(ens, default_model(sde, (8, 8), **SMALL_UNET), epochs=1, seed=4,
                                         cache_dir=d, progress_bar=False, verbose=False, device="cuda")
    x, _ = generate(model, 4, seed=0, lattice_shape=(8, 8), normaliser=state["metadata"]["normaliser"],
                    n_steps=10, device="cuda", progress_bar=False)
    assert x.shape == (4, 8, 8) and x.device.type == "cpu" and x.dtype == torch.float64


@pytest.mark.slow
def test_z2_augmentation_makes_the_magnetisation_symmetric(tmp_path):
    """Train on configurations of one vacuum only (M > 0). Without augmentation the DM generates
    that vacuum; with Z2 augmentation it generates both, each with probability ½ (binomial error)."""
    rng = np.random.default_rng(0)
    n, dim = 2048, 4
    data = 1.0 + 0.25 * rng.normal(size=(n, dim))  # a 4-site 'lattice' in the M > 0 vacuum
    meta = make_metadata({"name": "two-vacua-toy", "dim": dim}, "exact", {"n": n}, 0)
    ens = Ensemble(data, meta)
    sde = make_sde("ve", 10.0)
    frac = {}
    for aug in (False, True):
        torch.manual_seed(0)
        model = default_model(sde, (dim,), hidden=(64, 64))
        _, _, path = cached_score_model(ens, model, epochs=60, seed=0, batch_size=128, z2_augment=aug,
                                        normalisation="maxabs", cache_dir=tmp_path, progress_bar=False,
                                        verbose=False)
        g = cached_dm_ensemble(path, 1024, seed=1, n_steps=200, cache_dir=tmp_path, progress_bar=False,
                               verbose=False)
        frac[aug] = obs.vacuum_fractions(g.configs.reshape(-1, dim))["positive"]
    assert frac[False][0] > 0.97
    assert_stat(*frac[True], 0.5, "fraction with M > 0 after Z2 augmentation")


def test_mode_correlation_of_the_forward_process_is_exact():
    """c(p, t) between φ_t and φ_0 for the VE forward process equals √(G̃₀/(G̃₀ + Ξ(t))) (free field)."""
    th = lib.Phi4(L=8, kappa=0.2, lam=0.0)
    sde = make_sde("ve", 25.0)
    g = torch.Generator().manual_seed(1)
    n = 4000
    gp = th.free_momentum_propagator()
    x0 = torch.fft.ifftn(torch.fft.fftn(torch.randn((n, 8, 8), generator=g, dtype=torch.float64), dim=(1, 2))
                         * gp.sqrt(), dim=(1, 2)).real
    t = 0.2
    xt = sde.perturb(x0, t, torch.randn((n, 8, 8), generator=g, dtype=torch.float64))
    p, c = obs.mode_correlation(xt, x0)
    p_ref, g0 = obs.radial_power_spectrum(x0)
    exact = np.sqrt(g0 / (g0 + float(sde.Xi(t))))
    assert np.allclose(p, p_ref)
    # each bin averages ≥ 4 modes of 4000 samples: statistical error of c well below 0.02
    assert np.abs(c - exact).max() < 0.03
    assert c[1] > c[-1] + 0.2  # infrared modes survive the noise longer than ultraviolet ones


def test_zero_mode_scale_is_the_rms_magnetisation_in_network_units():
    from lib.diffusion import zero_mode_scale

    rng = np.random.default_rng(0)
    # two vacua ±2 with small fluctuations: min-max maps them to about ±0.9, so s_d ≈ 0.9
    signs = rng.choice([-1.0, 1.0], size=64)
    broken = signs[:, None, None] * 2.0 + 0.1 * rng.standard_normal((64, 8, 8))
    y = 2 * (broken - broken.min()) / (broken.max() - broken.min()) - 1
    assert zero_mode_scale(broken) == pytest.approx(np.sqrt(np.mean(y.mean(axis=(1, 2)) ** 2)), rel=1e-12)
    assert 0.8 < zero_mode_scale(broken) < 1.0
    # white noise: M has width 1/√V in units where the field has width 1
    noise = rng.standard_normal((4000, 8, 8))
    assert zero_mode_scale(noise, "none") == pytest.approx(1 / 8, rel=0.05)
    net = default_model(make_sde("ve"), (8, 8), **SMALL_UNET, zero_mode_head=True, zero_mode_sd=0.03)
    assert net.config["zero_mode_sd"] == 0.03
    with pytest.raises(ValueError, match="positive"):
        default_model(make_sde("ve"), (8, 8), **SMALL_UNET, zero_mode_head=True, zero_mode_sd=0.0)


@pytest.mark.parametrize("kind", ["ve", "vp"])
def test_zero_mode_head_keeps_symmetries_and_is_exact_for_a_gaussian_zero_mode(kind):
    sde = make_sde(kind, 10.0)
    plain = default_model(sde, (8, 8), **SMALL_UNET)
    assert "zero_mode_head" not in plain.config  # cache keys of plain U-Nets are unchanged
    torch.manual_seed(0)
    net = default_model(sde, (16, 16), **SMALL_UNET, zero_mode_head=True, odd=True).double()
    assert build_score_model(net.config).zero_mode is not None
    x = torch.randn(3, 16, 16, dtype=torch.float64) + 0.3
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    with torch.no_grad():
        s = net(x, t)
        shifted = net(torch.roll(x, (8, 8), dims=(1, 2)), t)
        assert torch.allclose(shifted, torch.roll(s, (8, 8), dims=(1, 2)), atol=1e-12)
        assert torch.allclose(net(-x, t), -s, atol=1e-12)
        # with F_θ = 0 the zero mode of the score is exactly that of a Gaussian zero mode of
        # variance s_d²: s̄ = −M_t/(σ_t² + f² V s_d²), whatever the U-Net does
        net.odd = False
        net.zero_mode[-1].weight.zero_()
        net.zero_mode[-1].bias.zero_()
        sd, V = net.config["zero_mode_sd"], 256
        exact = -x.mean(dim=(1, 2)) / (sde.Xi(t) + sde.f(t) ** 2 * V * sd ** 2)
        assert torch.allclose(net(x, t).mean(dim=(1, 2)), exact, rtol=1e-10)


@pytest.mark.parametrize("kind", ["ve", "vp"])
def test_tweedie_denoise_is_the_exact_posterior_mean_for_a_gaussian(kind):
    """For φ₀ ~ N(0, v): E[φ₀ | φ_t] = f v φ_t / (f² v + Ξ). Tweedie's formula with the exact score gives it."""
    from lib.diffusion import tweedie_denoise
    from lib.theories import GaussianMixture

    sde = make_sde(kind, 10.0)
    v = 0.7
    target = GaussianMixture(torch.zeros(1, 1, dtype=torch.float64), torch.tensor([v**0.5], dtype=torch.float64))

    class Exact(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sde = sde

        def forward(self, x, t):
            return target.score(x, sde, float(t[0]))

    x = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    for t in (0.1, 0.5, 0.9):
        f, xi = float(sde.f(torch.tensor(t))), float(sde.Xi(torch.tensor(t)))
        assert torch.allclose(tweedie_denoise(Exact(), x, t), f * v * x / (f * f * v + xi), atol=1e-10)


@pytest.mark.parametrize("strides", [(1, 2, 2, 2), (1, 1, 1, 1)])
def test_unet_diagram_shows_the_shapes_the_network_produces(strides):
    """The Fig. 10 drawing reads its shapes from hooks on a real forward pass: channels follow
    the configuration, each stride-2 level halves L, the decoder mirrors the encoder (its inputs
    carry the concatenated skips), the output has the field's shape; no hook is left behind."""
    import matplotlib

    matplotlib.use("Agg")
    from lib.display import unet_diagram, unet_layer_shapes

    ch = (4, 8, 8, 16)
    net = default_model(make_sde("ve"), (16, 16), channels=ch, strides=strides)
    shapes = unet_layer_shapes(net, 16)
    sizes = [16 // int(np.prod(strides[:i + 1])) for i in range(4)]
    assert [shapes[f"enc{i}"][1] for i in range(4)] == [(ch[i], sizes[i], sizes[i]) for i in range(4)]
    assert [shapes[f"dec{k}"][1] for k in range(3)] == [(ch[2 - k], sizes[2 - k], sizes[2 - k]) for k in range(3)]
    assert shapes["dec1"][0][0] == 2 * ch[2] and shapes["final"] == ((2 * ch[0], 16, 16), (1, 16, 16))
    ax = unet_diagram(net, 16)
    assert any("parameters" in t.get_text() for t in ax.texts)
    assert not any(m._forward_hooks for m in net.modules())
