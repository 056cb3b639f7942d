"""Diffusion core: SDEs, exact mixture scores, denoising score matching, networks, trainer,
samplers, likelihood. Every stochastic check uses a fixed seed and a tolerance from its own
statistical error."""
import math

import numpy as np
import pytest
import torch

from lib.diffusion import euler_maruyama, log_likelihood, predictor_corrector, probability_flow
from lib.theories import GaussianMixture
from lib.diffusion.networks import LatticeUNet, MLPScore, build_score_model
from lib.analysis.observables import cumulants_from_moments
from lib.diffusion.sde import VESDE, VPSDE
from lib.analysis.stats import jackknife
from lib.diffusion import Normaliser, Trainer, dsm_loss, load_checkpoint, load_model

from helpers import assert_stat

TWO_PEAKS_EXACT = {2: 1.0625, 4: -2.0, 6: 16.0, 8: -272.0}


def sample_cumulants(x, orders=(2, 4), n_blocks=200):
    m = np.stack([x**n for n in range(max(orders) + 1)], axis=1)
    return {n: jackknife(lambda mm, n=n: cumulants_from_moments(mm.mean(0))[n], m, n_blocks=n_blocks) for n in orders}


# ---------------------------------------------------------------- SDEs
def test_ve_kernel_matches_paper_eq_3_6():
    sde = VESDE(25.0)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    expect = (25.0 ** (2 * t) - 1) / (2 * math.log(25.0))
    assert torch.allclose(sde.Xi(t), expect)
    # Ξ(t) = ∫0^t g² ds, checked by quadrature
    s = torch.linspace(0, 0.3, 20001, dtype=torch.float64)
    assert abs(torch.trapezoid(sde.g(s) ** 2, s).item() - sde.Xi(0.3).item()) < 1e-8
    assert abs(sde.prior_std() - 9.85) < 0.01  # reference facts: prior std ≈ 9.85


def test_vp_decay_and_noise_variance():
    sde = VPSDE(10.0)
    # Ξ(t) = ∫0^t f²(t,s) g²(s) ds
    t = 0.4
    s = torch.linspace(0, t, 40001, dtype=torch.float64)
    xi_quad = torch.trapezoid(sde.f(t, s) ** 2 * sde.g(s) ** 2, s).item()
    assert abs(xi_quad - sde.Xi(t).item()) < 1e-6
    # κ2(t) = κ2(0) f² + Ξ, and f²+Ξ = 1 (variance preserving)
    assert abs(sde.f(t).item() ** 2 + sde.Xi(t).item() - 1) < 1e-12


@pytest.mark.parametrize("sde", [VESDE(10.0), VPSDE(10.0)], ids=["ve", "vp"])
def test_forward_cumulants_kappa_n_f_power_n(sde):
    """κ_n(t) = κ_n(0) f(t,0)^n for n > 2 (talk), on samples of the forward process."""
    g = GaussianMixture.two_peaks()
    gen = torch.Generator().manual_seed(1)
    x0 = g.sample(400_000, generator=gen)
    t = 0.15
    xt = sde.perturb(x0, torch.full((x0.shape[0],), t, dtype=torch.float64), torch.randn(x0.shape, generator=gen,
                                                                                         dtype=torch.float64))
    f = sde.f(t).item()
    k = sample_cumulants(xt[:, 0].numpy(), orders=(2, 4))
    assert abs(k[2][0] - (1.0625 * f**2 + sde.Xi(t).item())) < 4 * k[2][1]
    assert abs(k[4][0] - (-2.0) * f**4) < 4 * k[4][1]
    # the exact diffused mixture obeys the same law for every n
    ex = g.cumulants(8, sde, t)
    for n in (4, 6, 8):
        assert ex[n] == pytest.approx(TWO_PEAKS_EXACT[n] * f**n, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------- exact scores
@pytest.mark.parametrize("sde", [VESDE(25.0), VPSDE(10.0)], ids=["ve", "vp"])
def test_mixture_score_is_gradient_of_log_density(sde):
    g = GaussianMixture([[0.0, 1.0], [2.0, -1.0], [-1.5, -0.5]], [0.3, 0.5, 0.2], [0.2, 0.5, 0.3])
    x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    t = torch.rand(50, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    xr = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(g.log_prob(xr, sde, t).sum(), xr)
    assert torch.allclose(grad, g.score(x, sde, t), atol=1e-10)


def test_two_peak_score_closed_form():
    """−x/v + (fμ/v) tanh(x fμ/v) (reference facts) for the symmetric two-peak mixture."""
    g, sde, t = GaussianMixture.two_peaks(), VPSDE(10.0), 0.2
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)[:, None]
    f, xi = sde.f(t).item(), sde.Xi(t).item()
    v = f * f * 0.25**2 + xi
    assert torch.allclose(g.score(x, sde, t), -x / v + (f / v) * torch.tanh(x * f / v), atol=1e-12)


@pytest.mark.parametrize("sde", [VESDE(10.0), VPSDE(10.0)], ids=["ve", "vp"])
def test_exact_score_reverse_sde_reproduces_cumulants(sde):
    g = GaussianMixture.two_peaks()
    gen = torch.Generator().manual_seed(2)
    x, _ = euler_maruyama(g.score_fn(sde), sde, (50_000, 1), n_steps=1000, generator=gen, dtype=torch.float64,
                          progress_bar=False)
    k = sample_cumulants(x[:, 0].numpy(), orders=(2, 4, 6))
    # 4 standard errors, plus 1% for the O(Δt) bias of Euler–Maruyama at 1000 steps
    for n in (2, 4, 6):
        assert abs(k[n][0] - TWO_PEAKS_EXACT[n]) < 4 * k[n][1] + 0.01 * abs(TWO_PEAKS_EXACT[n]), (n, k[n])


def test_reverse_sde_records_and_pc_and_ode():
    g, sde = GaussianMixture.two_peaks(), VESDE(10.0)
    gen = torch.Generator().manual_seed(3)
    x, rec = euler_maruyama(g.score_fn(sde), sde, (4000, 1), n_steps=300, generator=gen, dtype=torch.float64,
                            record_times=[1.0, 0.5, 0.1], progress_bar=False)
    assert set(rec) == {1.0, 0.5, 0.1}
    # at t = 0.5 the reverse process has the forward marginal's variance κ2(0) + Ξ(0.5)
    var = rec[0.5].var().item()
    assert abs(var - (1.0625 + sde.Xi(0.5).item())) < 5 * var * math.sqrt(2 / 4000)
    y, _ = predictor_corrector(g.score_fn(sde), sde, (4000, 1), n_steps=300, generator=gen, dtype=torch.float64,
                               progress_bar=False)
    z = probability_flow(g.score_fn(sde), sde, sde.prior_sample((4000, 1), generator=gen, dtype=torch.float64),
                         sde.T, 1e-3)
    for s in (y, z):
        assert abs(s.var().item() - 1.0625) < 0.1
        assert abs((s.abs().mean() - 1.0).item()) < 0.05  # samples sit on the two peaks ±1


def test_likelihood_of_exact_model_equals_density():
    """Probability-flow log-likelihood (eq. 3.15) with the exact VP score equals log p0."""
    g, sde = GaussianMixture.two_peaks(), VPSDE(10.0)
    gen = torch.Generator().manual_seed(4)
    x = g.sample(8, generator=gen)
    lq, _ = log_likelihood(g.score_fn(sde), sde, x, exact_divergence=True)
    assert torch.allclose(lq, g.log_prob(x), atol=2e-3)
    lh, _ = log_likelihood(g.score_fn(sde), sde, x, n_probes=200, generator=gen)
    assert (lh - g.log_prob(x)).abs().mean() < 0.3  # Hutchinson: unbiased, noisy


# ---------------------------------------------------------------- score matching
def test_dsm_loss_lower_for_exact_score():
    g, sde = GaussianMixture.two_peaks(), VESDE(10.0)
    gen = torch.Generator().manual_seed(5)
    x0 = g.sample(200_000, generator=gen)
    t = 1e-5 + (1 - 1e-5) * torch.rand(x0.shape[0], generator=gen, dtype=torch.float64)
    z = torch.randn(x0.shape, generator=gen, dtype=torch.float64)

    class Exact(torch.nn.Module):
        def __init__(self, scale=1.0, shift=0.0):
            super().__init__()
            self.sde, self.scale, self.shift = sde, scale, shift

        def forward(self, x, tt):
            return self.scale * g.score(x, sde, tt) + self.shift

    exact = dsm_loss(Exact(), x0, t=t, z=z).item()
    # the minimum of the DSM loss is not zero (it is E[Var(z | x_t)]), but every other field is worse
    for other in (Exact(1.1), Exact(0.9), Exact(1.0, 0.2)):
        assert dsm_loss(other, x0, t=t, z=z).item() > exact
    # and the exact-score loss lies below the trivial score s = −x/σ_t² (a pure Gaussian)
    gauss = torch.nn.Module()
    gauss.sde = sde
    gauss.forward = lambda x, tt: -x / sde.Xi(tt)[:, None]
    assert dsm_loss(gauss, x0, t=t, z=z, score_fn=gauss.forward).item() > exact


def test_zero_mode_weight_reweights_only_the_constant_mode():
    sde = VESDE(25.0)
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(64, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.rand(64, generator=gen, dtype=torch.float64)
    z = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    model = torch.nn.Module()
    model.sde = sde
    score = lambda x, tt: -0.7 * x / sde.Xi(tt)[:, None, None] + 0.1  # noqa: E731 - any score will do
    plain = dsm_loss(model, x0, t=t, z=z, score_fn=score)
    assert dsm_loss(model, x0, t=t, z=z, score_fn=score, zero_mode_weight=1.0) == plain
    r = (sde.marginal_std(t)[:, None, None] * score(x0 + sde.marginal_std(t)[:, None, None] * z, t) + z)
    zero = (16 * r.mean(dim=(1, 2)) ** 2).mean()   # |r̃(p = 0)|² with the unitary Fourier transform
    assert torch.allclose(dsm_loss(model, x0, t=t, z=z, score_fn=score, zero_mode_weight=9.0), plain + 8 * zero)
    with pytest.raises(ValueError, match="positive"):
        dsm_loss(model, x0, t=t, z=z, score_fn=score, zero_mode_weight=0.0)


@pytest.mark.parametrize("w", [1.0, 100.0])
def test_zero_mode_weight_keeps_the_exact_score_as_minimiser(w):
    """Gaussian data N(0, c² 1): in the family s_a = −a x/(c² + Ξ) the loss is quadratic in a and
    the exact score a = 1 minimises it mode by mode, hence for any weight of the zero mode."""
    sde, c2 = VESDE(25.0), 0.3
    gen = torch.Generator().manual_seed(11)
    estimates = []
    for _ in range(20):  # 20 independent batches: a* and its standard error from their spread
        x0 = c2 ** 0.5 * torch.randn(2000, 4, 4, generator=gen, dtype=torch.float64)
        t = 1e-3 + (1 - 1e-3) * torch.rand(2000, generator=gen, dtype=torch.float64)
        z = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        model = torch.nn.Module()
        model.sde = sde
        loss = [dsm_loss(model, x0, t=t, z=z, zero_mode_weight=w,
                         score_fn=lambda x, tt, a=a: -a * x / (c2 + sde.Xi(tt)[:, None, None])).item()
                for a in (0.0, 1.0, 2.0)]
        curvature, slope = loss[0] - 2 * loss[1] + loss[2], loss[2] - loss[0]   # loss = A a² + B a + C
        estimates.append(1.0 - slope / (2 * curvature))
    est = np.array(estimates)
    assert_stat(est.mean(), est.std(ddof=1) / np.sqrt(len(est)), 1.0, f"argmin of the loss with w = {w}")


# ---------------------------------------------------------------- networks
@pytest.mark.parametrize("strides,shift", [((1, 1, 1, 1), (3, 5)), ((1, 2, 2, 2), (8, 16))])
def test_unet_commutes_with_translations_and_is_odd(strides, shift):
    torch.manual_seed(0)
    net = LatticeUNet(VESDE(25.0), channels=(4, 8, 8, 16), strides=strides, embed_dim=16, odd=True).double()
    x = torch.randn(3, 16, 16, dtype=torch.float64)
    t = torch.rand(3, dtype=torch.float64)
    y = net(x, t)
    y_shift = net(torch.roll(x, shift, (1, 2)), t)
    assert torch.allclose(torch.roll(y, shift, (1, 2)), y_shift, atol=1e-12)
    assert torch.allclose(net(-x, t), -y, atol=1e-12)
    # a different L that the down-sampling factor divides works too; one it does not is an error
    assert net(torch.randn(2, 32, 32, dtype=torch.float64), t[:2]).shape == (2, 32, 32)
    if strides[1] == 2:
        with pytest.raises(ValueError, match="divisible"):
            net(torch.randn(2, 12, 12, dtype=torch.float64), t[:2])


def test_unet_not_odd_by_default_and_config_round_trip():
    net = LatticeUNet(VPSDE(10.0), channels=(4, 8, 8, 16), embed_dim=16).double()
    x, t = torch.randn(2, 8, 8, dtype=torch.float64), torch.rand(2, dtype=torch.float64)
    assert not torch.allclose(net(-x, t), -net(x, t))
    clone = build_score_model(net.config).double()
    clone.load_state_dict(net.state_dict())
    assert torch.equal(clone(x, t), net(x, t))
    with pytest.raises(ValueError):
        net(torch.randn(2, 8, 9, dtype=torch.float64), t)


# ---------------------------------------------------------------- trainer
def _toy_trainer(tmp_path, name, epochs_seed=0):
    torch.manual_seed(0)
    model = MLPScore(VESDE(10.0), dim=1, hidden=(16, 16)).double()
    data = GaussianMixture.two_peaks().sample(512, generator=torch.Generator().manual_seed(7))
    return Trainer(model, data, seed=epochs_seed, batch_size=64, ema_decay=0.9, checkpoint=tmp_path / name,
                   z2_augment=True)


def test_training_lowers_loss_and_resume_is_exact(tmp_path):
    straight = _toy_trainer(tmp_path, "a.pt")
    straight.fit(6, progress_bar=False)
    first = _toy_trainer(tmp_path, "b.pt")
    first.fit(3, progress_bar=False)  # "interrupted" after 3 epochs
    resumed = _toy_trainer(tmp_path, "b.pt")
    resumed.fit(6, progress_bar=False)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert resumed.history == straight.history
    assert np.mean(straight.history[-2:]) < straight.history[0]
    model, state = load_model(tmp_path / "a.pt")
    assert state["epoch"] == 6 and state["settings"]["z2_augment"]


def test_resume_refuses_other_settings(tmp_path):
    t = _toy_trainer(tmp_path, "c.pt")
    t.fit(1, progress_bar=False)
    other = _toy_trainer(tmp_path, "c.pt", epochs_seed=1)
    with pytest.raises(ValueError, match="other settings"):
        other.fit(2, progress_bar=False)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a"):
        load_checkpoint(bad)
    torch.save({"x": 1}, tmp_path / "dict.pt")
    with pytest.raises(ValueError, match="not a"):
        load_checkpoint(tmp_path / "dict.pt")


def test_normaliser_round_trip_and_symmetry():
    x = torch.randn(10, 4, 4, dtype=torch.float64) * 3 + 0.5
    for kind in ("minmax", "maxabs", "none"):
        n = Normaliser.fit(x, kind)
        assert torch.allclose(n.inverse(n.forward(x)), x)
    n = Normaliser.fit(x, "maxabs")
    assert n.symmetric and torch.allclose(n.forward(-x), -n.forward(x))
    assert n.forward(x).abs().max().item() == pytest.approx(1.0)


# ---------------------------------------------------------------- effective action (eq. 3.20)
def test_effective_action_integrates_the_exact_score():
    """−∫ s dφ of the exact diffused two-peak score is −log p_t up to a constant (eq. 3.11);
    a network is evaluated on its own dtype and the grid is checked."""
    from lib.diffusion import effective_action

    g, sde = GaussianMixture.two_peaks(), VESDE(10.0)
    x = np.linspace(-3, 3, 3001)
    for t in (0.05, 0.3, 0.9):
        S = effective_action(g.score_fn(sde), x, t)
        exact = -g.log_prob(torch.from_numpy(x)[:, None], sde, t).numpy()
        assert S.min() == 0.0
        assert np.max(np.abs(S - (exact - exact.min()))) < 1e-4
    net = MLPScore(sde, dim=1).double()
    S_net = effective_action(net, x, 0.5)
    assert S_net.shape == x.shape and np.isfinite(S_net).all()
    with pytest.raises(ValueError, match="increasing"):
        effective_action(net, x[::-1], 0.5)
