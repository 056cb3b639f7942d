"""Physics tests of the 0D toy model (paper eq. 3.19) and of the samplers run on it.

Every stochastic estimate is compared with an exact value within a multiple of its *measured*
standard error (from independent chains), never within a hand-tuned tolerance.
"""
import math

import numpy as np
import pytest
import torch

from lib import HMC, Metropolis, ToyModel, langevin_moments

torch.set_num_threads(1)

N_SIGMA = 4.0
SINGLE = dict(mu2=1.0, g=0.4)  # the paper's single well
DOUBLE = dict(mu2=-1.0, g=0.4)  # the paper's double well


def assert_stat(estimate, error, exact, what, n_sigma=N_SIGMA):
    assert error > 0 and np.isfinite(error), f"{what}: invalid error {error}"
    dev = abs(estimate - exact)
    assert dev < n_sigma * error, (
        f"{what}: {estimate:.6g} ± {error:.2g} vs exact {exact:.6g} ({dev / error:.1f} sigma)")


def mean_and_sem(per_chain):
    """Mean over independent chains and its standard error."""
    x = np.asarray(per_chain, dtype=float)
    return x.mean(), x.std(ddof=1) / math.sqrt(len(x))


def numpy_grid_moments(mu2, g, n_max=6, c=20.0, n=400001):
    """Independent quadrature: trapezoid rule of e^{-S} on a fine grid (numpy only)."""
    x = np.linspace(-c, c, n)
    s = 0.5 * mu2 * x**2 + g / 24.0 * x**4
    w = np.exp(-(s - s.min()))
    z = np.trapezoid(w, x)
    logz = math.log(z) - s.min()
    return logz, {k: np.trapezoid(x**k * w, x) / z for k in range(1, n_max + 1)}


# ---------------------------------------------------------------------------- exact results
def test_invalid_parameters_raise():
    with pytest.raises(ValueError):
        ToyModel(mu2=1.0, g=-0.1)
    with pytest.raises(ValueError):
        ToyModel(mu2=-1.0, g=0.0)  # e^{+φ²/2}: not normalisable
    with pytest.raises(ValueError):
        ToyModel(mu2=0.0, g=0.0)
    with pytest.raises(ValueError):
        ToyModel(mu2=float("nan"), g=0.4)
    ToyModel(mu2=2.0, g=0.0)  # pure Gaussian is fine


def test_gaussian_limit_is_exact():
    """g = 0, μ² = 2: ⟨φ^{2k}⟩ = (2k−1)!!/μ^{2k}, log Z = ½ log(2π/μ²)."""
    mu2 = 2.0
    m = ToyModel(mu2=mu2, g=0.0)
    assert m.log_partition_function == pytest.approx(0.5 * math.log(2 * math.pi / mu2), rel=1e-10)
    for k, dfact in [(1, 1), (2, 3), (3, 15), (4, 105)]:
        assert m.moment(2 * k) == pytest.approx(dfact / mu2**k, rel=1e-9)
    assert m.moment(1) == 0 and m.moment(3) == 0
    kap = m.cumulants(8)
    assert kap[2] == pytest.approx(1 / mu2, rel=1e-9)
    for n in (1, 3, 4, 5, 6, 7, 8):
        assert abs(kap[n]) < 1e-8, (n, kap[n])


def test_small_coupling_matches_perturbation_theory():
    """⟨φ²⟩ = 1 − g/2 + 2g²/3 + O(g³) at μ² = 1 (Wick contractions of φ⁴/4!)."""
    g = 1e-2
    m = ToyModel(mu2=1.0, g=g)
    assert abs(m.moment(2) - (1 - g / 2 + 2 * g**2 / 3)) < 5 * g**3
    # ⟨φ⁴⟩ = 3 − g(⟨φ⁸⟩ − ⟨φ⁴⟩²)/24 = 3 − g(105 − 9)/24 = 3 − 4g at first order
    assert abs(m.moment(4) - (3 - 4 * g)) < 100 * g**2


@pytest.mark.parametrize("params", [SINGLE, DOUBLE], ids=["single", "double"])
def test_quadrature_matches_independent_grid_integration(params):
    m = ToyModel(**params)
    logz, mom = numpy_grid_moments(params["mu2"], params["g"])
    assert m.log_partition_function == pytest.approx(logz, rel=1e-9, abs=1e-9)
    for k in (2, 4, 6):
        assert m.moment(k) == pytest.approx(mom[k], rel=1e-8)
    assert m.moment(1) == 0.0
    # normalised density equals e^{-S}/Z and integrates to one
    x = np.linspace(-20, 20, 200001)
    p = m.density(x)
    assert np.trapezoid(p, x) == pytest.approx(1.0, rel=1e-9)
    s = 0.5 * params["mu2"] * x**2 + params["g"] / 24 * x**4
    np.testing.assert_allclose(p, np.exp(-s - logz), rtol=1e-8, atol=1e-300)


def test_double_well_is_bimodal():
    """μ² < 0: the density has maxima at φ = ±√(−6μ²/g) and a local minimum at 0."""
    m = ToyModel(**DOUBLE)
    x0 = math.sqrt(-6 * DOUBLE["mu2"] / DOUBLE["g"])
    x = np.array([0.0, x0 - 0.01, x0, x0 + 0.01])
    p = m.density(x)
    assert p[2] > p[1] and p[2] > p[3] and p[2] > 10 * p[0]
    assert m.density(np.array([-x0]))[0] == pytest.approx(p[2], rel=1e-12)


@pytest.mark.parametrize("params", [SINGLE, DOUBLE], ids=["single", "double"])
def test_drift_is_minus_gradient_of_action(params):
    m = ToyModel(**params)
    phi = (3 * torch.randn(64, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))).requires_grad_()
    (grad,) = torch.autograd.grad(m.action(phi).sum(), phi)
    torch.testing.assert_close(m.drift(phi.detach()), -grad, rtol=1e-12, atol=1e-12)
    # explicit formula of eq. (3.19)
    x = phi.detach()
    torch.testing.assert_close(m.action(x), (params["mu2"] / 2 * x**2 + params["g"] / 24 * x**4)[:, 0])
    with pytest.raises(ValueError):
        m.action(torch.zeros(4, 2, dtype=torch.float64))


@pytest.mark.parametrize("params", [SINGLE, DOUBLE], ids=["single", "double"])
def test_sample_exact_reproduces_quadrature_moments(params):
    m = ToyModel(**params)
    x = m.sample_exact(100_000, seed=11).numpy()[:, 0]
    assert x.shape == (100_000,)
    for k in (1, 2, 4):
        est, err = mean_and_sem(x**k)
        assert_stat(est, err, m.moment(k), f"sample_exact <phi^{k}>")
    # the whole distribution: Kolmogorov–Smirnov distance to the exact CDF
    xs = np.sort(x)
    grid = np.linspace(-20, 20, 400001)
    cdf = np.concatenate([[0], np.cumsum(0.5 * (m.density(grid)[1:] + m.density(grid)[:-1]) * np.diff(grid))])
    ks = np.max(np.abs(np.interp(xs, grid, cdf) - np.arange(1, len(xs) + 1) / len(xs)))
    assert ks < 1.63 / math.sqrt(len(xs))  # 1% critical value of the KS statistic
    # a different seed gives different samples, the same seed the same ones
    assert torch.equal(m.sample_exact(10, seed=3), m.sample_exact(10, seed=3))
    assert not torch.equal(m.sample_exact(10, seed=3), m.sample_exact(10, seed=4))


# ---------------------------------------------------------------------------- diffused score
def test_diffused_score_gaussian_limit():
    """For g = 0 the smeared density is N(0, 1/μ² + σ²): score = −x/(1/μ² + σ²)."""
    for mu2 in (1.0, 2.5):
        m = ToyModel(mu2=mu2, g=0.0)
        x = torch.linspace(-3, 3, 13, dtype=torch.float64)
        for sigma in (0.3, 1.0, 4.0):
            torch.testing.assert_close(m.diffused_score(x, sigma), -x / (1 / mu2 + sigma**2), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("params", [SINGLE, DOUBLE], ids=["single", "double"])
def test_diffused_score_approaches_drift_as_sigma_to_zero(params):
    """The score of p convolved with N(0, σ²) is f + σ²/2 (f'' + 2ff') + O(σ⁴) (heat-kernel expansion
    of log p_σ = log p + σ²/2 · p''/p)."""
    m = ToyModel(**params)
    x = torch.linspace(-4, 4, 33, dtype=torch.float64)
    f = m.drift(x.reshape(-1, 1)).reshape(-1)
    f1 = -params["mu2"] - params["g"] / 2 * x**2
    f2 = -params["g"] * x
    torch.testing.assert_close(m.diffused_score(x, 0.0), f)
    sigmas = (0.2, 0.1, 0.05)
    scores = [m.diffused_score(x, s) for s in sigmas]
    err1 = [float((sc - f).abs().max()) for sc in scores]
    err2 = [float((sc - f - s**2 / 2 * (f2 + 2 * f * f1)).abs().max()) for s, sc in zip(sigmas, scores)]
    assert err1[-1] < 0.1
    for a, b in zip(err1, err1[1:]):  # O(σ²): halving σ divides the error by about four
        assert 3.0 < a / b < 5.0, err1
    for a, b in zip(err2, err2[1:]):  # next order O(σ⁴): about sixteen
        assert 10.0 < a / b < 22.0, err2


def test_diffused_score_large_sigma_forgets_the_action():
    """σ → ∞: p_σ → N(0, ⟨φ²⟩ + σ²), so σ² · score → −x."""
    m = ToyModel(**DOUBLE)
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)
    sigma = 200.0
    torch.testing.assert_close(m.diffused_score(x, sigma), -x / (m.moment(2) + sigma**2), rtol=1e-3, atol=1e-12)


# ---------------------------------------------------------------------------- Langevin
LANGEVIN_STEPS = (0.2, 0.1, 0.05, 0.025)


@pytest.fixture(scope="module")
def langevin_single_well():
    """⟨φ²⟩, ⟨φ⁴⟩ (mean, error over 20 000 independent chains) for several Δτ."""
    m = ToyModel(**SINGLE)
    out = {}
    for i, dt in enumerate(LANGEVIN_STEPS):
        r = langevin_moments(m, n_chains=20000, n_therm=int(round(6 / dt)), n_meas=int(round(30 / dt)), dtau=dt,
                             seed=100 + i, progress_bar=False)
        out[dt] = {k: mean_and_sem(v) for k, v in r.items()}
    return m, out


def test_langevin_bias_is_visible_and_linear_in_dtau(langevin_single_well):
    """Euler–Maruyama with noise variance 2Δτ samples e^{-S} up to O(Δτ): at Δτ = 0.2 the bias is
    many σ, positive (the scheme overshoots the variance, cf. the Gaussian 1/(1 − Δτ/2)), and halving
    Δτ about halves it."""
    m, res = langevin_single_well
    for k in (2, 4):
        exact = m.moment(k)
        b = {dt: res[dt][k][0] - exact for dt in LANGEVIN_STEPS}
        e = {dt: res[dt][k][1] for dt in LANGEVIN_STEPS}
        assert b[0.2] > 10 * e[0.2], f"<phi^{k}>: bias at dtau=0.2 not visible: {b[0.2]} ± {e[0.2]}"
        # Gaussian analogue: ⟨φ²⟩_Δτ = ⟨φ²⟩/(1 − Δτ/2): relative bias about Δτ/2 · (k/2)
        assert 0.5 * (k / 2) * 0.2 * 0.5 < b[0.2] / exact < 2.0 * (k / 2) * 0.2 * 0.5
        for big, small in [(0.2, 0.1), (0.1, 0.05)]:
            r = b[small] / b[big]
            r_err = abs(r) * math.hypot(e[small] / b[small], e[big] / b[big])
            # 0.5 for a purely linear bias; the O(Δτ²) term pulls it slightly below
            assert abs(r - 0.5) < 0.08 + N_SIGMA * r_err, f"<phi^{k}> bias ratio {r} ± {r_err}"


def test_langevin_extrapolates_to_quadrature(langevin_single_well):
    """Linear extrapolation Δτ → 0 from Δτ = 0.05, 0.025 agrees with exact quadrature."""
    m, res = langevin_single_well
    for k in (2, 4):
        (v1, e1), (v2, e2) = res[0.025][k], res[0.05][k]
        est, err = 2 * v1 - v2, math.hypot(2 * e1, e2)
        assert_stat(est, err, m.moment(k), f"Langevin <phi^{k}> extrapolated to dtau=0")


def test_langevin_stationary_variance_of_gaussian_is_exactly_known():
    """For S = φ²/2 the Euler–Maruyama chain is AR(1) with stationary variance 1/(1 − Δτ/2).

    Noise of variance Δτ instead of 2Δτ would give 1/(2 − Δτ) (it samples e^{-2S})."""
    m = ToyModel(mu2=1.0, g=0.0)
    dt = 0.3
    r = langevin_moments(m, n_chains=4000, n_therm=50, n_meas=400, dtau=dt, seed=5, progress_bar=False)
    est, err = mean_and_sem(r[2])
    assert_stat(est, err, 1 / (1 - dt / 2), "Gaussian Langevin variance at dtau=0.3")


def test_langevin_alpha_rescales_the_action():
    """Noise variance 2αΔτ samples e^{−S/α}: for the Gaussian, ⟨φ²⟩ = α/(μ²(1 − μ²Δτ/2))."""
    import lib

    m = ToyModel(mu2=1.0, g=0.0)
    dt, alpha = 0.05, 2.5
    phi0 = torch.zeros(4000, 1, dtype=torch.float64)
    _, hist = lib.langevin(m, phi0, n_steps=1200, dtau=dt, seed=9, alpha=alpha, record_every=4,
                           observable=lambda x: (x[:, 0] ** 2), progress_bar=False)
    per_chain = hist[100:].mean(0).numpy()  # drop 400 steps = 20 Langevin times
    est, err = mean_and_sem(per_chain)
    assert_stat(est, err, alpha / (1 - dt / 2), "Langevin with alpha")


# ---------------------------------------------------------------------------- HMC and Metropolis
def _per_chain_moments(values):
    """values: (n_meas, n_chains, 3) -> mean, sem of φ, φ², φ⁴ over chains."""
    per = values.mean(axis=0)
    return {k: mean_and_sem(per[:, i]) for i, k in enumerate((1, 2, 4))}


def _measure(phi):
    x = phi[:, 0]
    return torch.stack([x, x**2, x**4], dim=1)


@pytest.mark.parametrize("params", [SINGLE, DOUBLE], ids=["single", "double"])
def test_hmc_toy_moments(params):
    m = ToyModel(**params)
    sampler = HMC(m, n_chains=1000, eps=0.2, n_steps=8, seed=21, start="hot")
    sampler.run(50, progress_bar=False)
    values = sampler.run(300, measure=_measure, progress_bar=False)
    assert 0.6 < sampler.acceptance_rate < 1.0
    res = _per_chain_moments(values)
    for k in (1, 2, 4):
        assert_stat(*res[k], m.moment(k), f"HMC {params} <phi^{k}>")


@pytest.mark.parametrize("params", [SINGLE, DOUBLE], ids=["single", "double"])
def test_metropolis_toy_moments(params):
    m = ToyModel(**params)
    sampler = Metropolis(m, n_chains=1000, delta=2.0, seed=31, start="hot")
    sampler.run(100, progress_bar=False)
    values = sampler.run(600, measure=_measure, progress_bar=False)
    assert 0.2 < sampler.acceptance_rate < 0.9
    res = _per_chain_moments(values)
    for k in (1, 2, 4):
        assert_stat(*res[k], m.moment(k), f"Metropolis {params} <phi^{k}>")
