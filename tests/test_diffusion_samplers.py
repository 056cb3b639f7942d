"""Few-step samplers: each sampler's error falls with the number of steps at its stated
order on exact targets — a Gaussian and the free field, whose diffused scores are known in closed
form — and the stochastic ones sample the right distribution."""
import math

import numpy as np
import pytest
import torch

import lib
from lib.diffusion import SAMPLERS, SampleSettings, make_sde
from lib.diffusion.samplers import euler_maruyama, exponential_integrator, heun, noise_levels, sample
from lib.rng import SampleStreams

EPS = 1e-3


def gaussian_score(sde, v0):
    """Exact score of N(0, v0) diffused by a VE or VP SDE."""
    def score(x, t):
        t = t.double()
        return -x / (sde.f(t) ** 2 * v0 + sde.Xi(t)).to(x.dtype)[:, None]
    return score


def exact_gain(sde, v0, t_start):
    """The probability-flow map of a Gaussian from t_start to ε: x_ε = x_start √(v_ε / v_start)."""
    def v(t):
        t = torch.tensor(t, dtype=torch.float64)
        return float(sde.f(t)) ** 2 * v0 + float(sde.Xi(t))
    return math.sqrt(v(EPS) / v(t_start))


CAP = {"ve": None, "vp": 80.0}  # VP with g = 25^t has σ̃(T) = e^48: start at EDM's σ̃ = 80


DETERMINISTIC = {
    "heun": (2, lambda s, sde, n, x, cap: heun(s, sde, x.shape, n_steps=n, eps=EPS, x_init=x, dtype=x.dtype,
                                                sigma_max=cap)),
    "dpm2": (2, lambda s, sde, n, x, cap: exponential_integrator(s, sde, x.shape, n_steps=n, eps=EPS, order=2, x_init=x,
                                                                  dtype=x.dtype, sigma_max=cap)),
    "ddim": (1, lambda s, sde, n, x, cap: exponential_integrator(s, sde, x.shape, n_steps=n, eps=EPS, order=1, x_init=x,
                                                                  dtype=x.dtype, sigma_max=cap)),
}


@pytest.mark.parametrize("kind", ["ve", "vp"])
@pytest.mark.parametrize("name", list(DETERMINISTIC))
def test_deterministic_samplers_converge_at_their_order(kind, name):
    order, run = DETERMINISTIC[name]
    sde = make_sde(kind, 25.0)
    cap = CAP[kind]
    t0 = sde.T if cap is None else float(sde.time_of_noise_level(cap))
    # the sampler starts from x̃ = x_T σ̃_max / prior_std, i.e. x_start = f(t0) σ̃_max x_T / prior_std
    x = torch.ones(1, 1, dtype=torch.float64)
    start = float(sde.noise_level(torch.tensor(t0, dtype=torch.float64)) * sde.f(torch.tensor(t0))) / sde.prior_std()
    target = start * exact_gain(sde, 0.7, t0)
    err = {n: abs(run(gaussian_score(sde, 0.7), sde, n, x, cap).x.item() - target) for n in (17, 33, 65)}
    # halving the step (n − 1 → 2(n − 1)) divides the error by 2^order, within 15 %
    for a, b in ((17, 33), (33, 65)):
        assert 2 ** order * 0.85 < err[a] / err[b] < 2 ** order * 1.15, (name, kind, err)
    assert err[65] < (4e-2 if order == 1 else 1e-2) * target


def test_heun_reproduces_the_free_field_flow_mode_by_mode():
    """The free field's diffused score is exact and diagonal in momentum space, so the ODE map
    multiplies every mode by √(v_ε(p)/v_T(p)); Heun with 33 levels gets it to O(h²)."""
    th = lib.Phi4(L=8, kappa=0.2, lam=0.0)
    sde = make_sde("ve", 25.0)
    field = th.free_field()
    x = field.sample(2, seed=0) * sde.prior_std()
    gain = torch.sqrt(field.variance(sde, EPS) / field.variance(sde, sde.T))
    exact = torch.fft.ifftn(torch.fft.fftn(x, dim=(1, 2)) * gain, dim=(1, 2)).real
    err = {}
    for n in (17, 33, 65):
        res = heun(field.score_fn(sde), sde, x.shape, n_steps=n, eps=EPS, x_init=x, dtype=torch.float64)
        err[n] = (res.x - exact).abs().max().item()
        assert res.nfe == 2 * (n - 1)
    assert 3.4 < err[17] / err[33] < 4.6 and 3.4 < err[33] / err[65] < 4.6, err
    assert err[65] < 2e-3 * exact.abs().max()


@pytest.mark.parametrize("name, settings", [("em", dict(n_steps=400)), ("churn", dict(n_steps=40, churn=10.0)),
                                            ("heun", dict(n_steps=40)), ("dpm2", dict(n_steps=40))])
def test_samplers_reach_the_free_field_distribution(name, settings):
    """From the exact p_T, every sampler must produce the covariance of p_ε, mode by mode:
    ⟨|φ̃(p)|²⟩ = v_ε(p). The ratio averaged over the 16 modes of L = 4 has a binomial-free
    statistical error √(2/(N·16)) for N configurations."""
    th = lib.Phi4(L=4, kappa=0.2, lam=0.0)
    sde = make_sde("ve", 10.0)
    n = 4000
    field = th.free_field()
    x0 = field.sample(n, seed=1)
    z = SampleStreams("test", 2, 0, n).randn((4, 4), torch.float64)
    x_T = sde.perturb(x0, sde.T, z)  # exact p_T: the prior mismatch is not what is tested here
    st = SampleSettings(sampler=name, eps=EPS, **settings)
    res = sample(field.score_fn(sde), sde, x_T, st, SampleStreams("dm", 3, 0, n))
    power = (torch.fft.fftn(res.x, dim=(1, 2)).abs() ** 2).mean(0) / th.volume
    ratio = (power / field.variance(sde, EPS)).mean().item()
    err = math.sqrt(2 / (n * th.volume))
    # EM's first-order bias at 400 steps is well below the error; the others are second order
    assert abs(ratio - 1) < 4 * err + 0.005, (name, ratio, err)


def test_noise_levels_follow_the_edm_grid_and_settings_validate():
    sde = make_sde("ve", 25.0)
    lv = noise_levels(sde, 5, EPS, rho=7.0)
    assert lv[0] == pytest.approx(float(sde.noise_level(1.0))) and lv[-1] == pytest.approx(float(sde.noise_level(EPS)))
    assert torch.all(lv[1:] < lv[:-1])
    assert np.allclose(np.diff(lv.numpy() ** (1 / 7)), np.diff(lv.numpy() ** (1 / 7))[0])
    with pytest.raises(ValueError, match="churn"):
        SampleSettings(sampler="churn")
    assert "churn" not in SampleSettings().key() and SampleSettings(sampler="churn", churn=5.0).key()["churn"] == 5.0
    assert {"heun", "churn", "ddim", "dpm2", "em", "pc", "ode"} == set(SAMPLERS)


@pytest.mark.parametrize("kind", ["ve", "vp"])
def test_euler_maruyama_on_the_free_field_follows_its_exact_variance_recursion(kind):
    """With 12 steps EM is far from p_ε; its output variance per mode is nonetheless known exactly
    (GaussianField.em_variance). The library's sampler must reproduce it: averaged over the 16
    modes of L = 4, within 4 standard errors √(2/(16 N))."""
    th = lib.Phi4(L=4, kappa=0.2, lam=0.0)
    sde = make_sde(kind, 10.0)
    n, steps = 6000, 12
    field = th.free_field()
    res = euler_maruyama(field.score_fn(sde), sde, (n, 4, 4), n_steps=steps, eps=EPS, dtype=torch.float64,
                         generator=SampleStreams("dm", 5, 0, n))
    power = (torch.fft.fftn(res.x, dim=(1, 2)).abs() ** 2).mean(0) / th.volume
    predicted = field.em_variance(sde, steps, EPS)
    target = field.variance(sde, EPS)
    ratio = (power / predicted).mean().item()
    assert abs(ratio - 1) < 4 * math.sqrt(2 / (n * th.volume)), ratio
    # and the recursion is far from the target at 12 steps, so the test can tell them apart
    assert ((predicted / target - 1).abs().mean() > 0.05)


def test_an_adaptive_solver_that_gives_up_says_what_to_try():
    from lib.diffusion.samplers import SamplerFailed, probability_flow

    sde = make_sde("ve", 25.0)
    rough = lambda x, t: 1e12 * torch.sin(1e9 * x * t[:, None])  # noqa: E731 - a score no solver can follow
    with pytest.raises(SamplerFailed, match="fixed-step sampler"):
        probability_flow(rough, sde, torch.randn(4, 1, dtype=torch.float64) * sde.prior_std(), sde.T, EPS)


def test_bf16_precision_is_the_same_sampler_with_the_network_in_bf16():
    """``precision="bf16"`` changes the network's arithmetic and nothing else: from the same seed
    the configurations differ from float32's (the autocast is applied) by about bf16's unit
    roundoff 2⁻⁸ ≈ 0.4 % compounded over a few layers (a 16-bit float with 8 significant bits
    cannot do better, and a sampler bug — other noise, another grid — would give O(1)), an exact
    score without a network is not touched, and the setting enters the cache key only when it is
    not float32."""
    from lib.diffusion import default_model, generate

    sde = make_sde("ve", 25.0)
    net = default_model(sde, (8, 8), channels=(8, 16, 16, 16)).eval()  # random weights
    kw = dict(lattice_shape=(8, 8), sampler="dpm2", n_steps=6, batch_size=16, progress_bar=False)
    x32, _ = generate(net, 16, 3, **kw)
    x16, _ = generate(net, 16, 3, precision="bf16", **kw)
    rel = float((x16 - x32).norm() / x32.norm())
    assert 2.0**-12 < rel < 4 * 2.0**-8, rel  # measured: about 2⁻⁹
    # an exact score (no network) is unchanged by the autocast
    score = gaussian_score(sde, 0.5)
    x_T = torch.randn(64, 4, generator=torch.Generator().manual_seed(0)) * 25
    a = sample(score, sde, x_T, SampleSettings(sampler="heun", n_steps=8), None).x
    b = sample(score, sde, x_T, SampleSettings(sampler="heun", n_steps=8, precision="bf16"), None).x
    assert torch.equal(a, b)
    assert "precision" not in SampleSettings().key() and SampleSettings(precision="bf16").key()["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision"):
        SampleSettings(precision="float16")
