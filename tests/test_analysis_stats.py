"""Statistics (jackknife, Γ-method) and observables (χ₂, U_L, cumulants) against exact results."""
import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from lib import observables as obs
from lib.analysis.stats import ar1_tau_int, autocorrelation, jackknife, tau_int_fixed_window

from helpers import N_SIGMA, assert_stat  # noqa: E402


def ar1(a, n, seed, burn=5000):
    """x_{t+1} = a x_t + η_t, η ~ N(0, 1); stationary variance 1/(1 − a²)."""
    rng = np.random.default_rng(seed)
    return lfilter([1.0], [1.0, -a], rng.standard_normal(n + burn))[burn:]


# ---------------------------------------------------------------------------- jackknife
def test_jackknife_of_mean_is_standard_error():
    x = np.random.default_rng(0).normal(3.0, 2.0, size=777)
    val, err = jackknife(np.mean, x)
    assert val == pytest.approx(x.mean(), rel=1e-14)
    assert err == pytest.approx(x.std(ddof=1) / math.sqrt(len(x)), rel=1e-10)


def test_blocked_jackknife_of_mean_is_standard_error_of_block_means():
    x = np.random.default_rng(1).normal(size=1200)
    for nb in (2, 10, 40, 600):
        val, err = jackknife(np.mean, x, n_blocks=nb)
        bm = x.reshape(nb, -1).mean(1)
        assert err == pytest.approx(bm.std(ddof=1) / math.sqrt(nb), rel=1e-10), nb


def test_jackknife_handles_multidimensional_samples_and_rejects_bad_input():
    data = np.random.default_rng(2).normal(size=(50, 3))
    val, err = jackknife(lambda d: d[:, 0].mean() + d[:, 2].mean(), data)
    s = data[:, 0] + data[:, 2]
    assert err == pytest.approx(s.std(ddof=1) / math.sqrt(50), rel=1e-10)
    with pytest.raises(ValueError):
        jackknife(np.mean, np.array([1.0]))
    with pytest.raises(ValueError):
        jackknife(np.mean, np.arange(10.0), n_blocks=1)
    with pytest.raises(ValueError):
        jackknife(np.mean, np.arange(10.0), n_blocks=11)


def test_jackknife_of_ratio_matches_delta_method():
    rng = np.random.default_rng(3)
    n = 4000
    y = rng.normal(5.0, 1.0, n)
    x = 2.0 * y + rng.normal(1.0, 1.5, n)
    val, err = jackknife(lambda d: d[:, 0].mean() / d[:, 1].mean(), np.stack([x, y], 1))
    r = x.mean() / y.mean()
    cov = np.cov(x, y)
    delta = math.sqrt((cov[0, 0] - 2 * r * cov[0, 1] + r**2 * cov[1, 1]) / n) / y.mean()
    assert val == pytest.approx(r, rel=1e-14)
    assert err == pytest.approx(delta, rel=0.02)


def test_susceptibility_error_resamples_the_mean_too():
    """χ = V(⟨M²⟩ − ⟨M⟩²) for M ~ N(3, 1): Var(sample variance) = 2σ⁴/(n−1). Resampling ⟨M²⟩ alone
    with a fixed ⟨M⟩² would give an error √(4·9 + 2) ≈ 4.4 times larger."""
    V, n = 16, 3000
    m = np.random.default_rng(4).normal(3.0, 1.0, n)
    configs = m[:, None, None] * np.ones((1, 4, 4))
    chi, err = obs.susceptibility(configs)
    assert chi == pytest.approx(V * m.var(), rel=1e-12)
    assert err == pytest.approx(V * math.sqrt(2 / (n - 1)), rel=0.1)
    chi_b, err_b = obs.susceptibility(configs, n_blocks=100)
    assert chi_b == chi and err_b == pytest.approx(err, rel=0.3)


def test_jackknife_error_is_honest_over_replicas():
    """Over 200 independent replicas, the spread of χ matches the mean jackknife error."""
    rng = np.random.default_rng(5)
    chis, errs = [], []
    for _ in range(200):
        m = rng.normal(0.0, 0.5, 300)
        c, e = jackknife(lambda d: np.mean(d**2) - np.mean(d) ** 2, m)
        chis.append(c)
        errs.append(e)
    spread = np.std(chis, ddof=1)
    # the standard deviation of a 200-sample std is ≈ 5%; allow 4σ
    assert abs(np.mean(errs) / spread - 1) < 4 * 0.05


# ---------------------------------------------------------------------------- autocorrelation
@pytest.mark.parametrize("a,n,seed", [(0.5, 20000, 1), (0.9, 50000, 2)])
def test_gamma_method_recovers_ar1_tau(a, n, seed):
    x = ar1(a, n, seed)
    res = autocorrelation(x)
    exact = ar1_tau_int(a)
    assert res.tau_int_error > 0
    assert abs(res.tau_int - exact) < 3 * res.tau_int_error, (res.tau_int, res.tau_int_error, exact)
    # the error of the mean includes 2τ_int: σ² = 2τ Var(x)/N with Var(x) = 1/(1 − a²)
    exact_err = math.sqrt(2 * exact / (1 - a * a) / n)
    assert res.error == pytest.approx(exact_err, rel=0.15)
    assert abs(res.mean) < N_SIGMA * exact_err
    # ρ(t) = a^t within Bartlett's error for the first few lags
    for t in range(1, 4):
        bartlett = math.sqrt(((1 + a * a) * (1 - a ** (2 * t)) / (1 - a * a) - 2 * t * a ** (2 * t)) / n)
        assert abs(res.rho[t] - a**t) < N_SIGMA * bartlett
        # the reported error of ρ(t) is Wolff's/Bartlett's (not the zeros pyerrors leaves outside the window)
        assert res.rho_error[t] == pytest.approx(bartlett, rel=0.15)
        assert abs(res.rho[t] - a**t) < N_SIGMA * res.rho_error[t]
    assert np.all(np.isfinite(res.rho_error[: 2 * res.window])) and res.rho_error[0] == 0
    assert len(res.tau_int_of_window) > res.window
    # τ_int is Σ ρ up to the chosen window (pyerrors adds Wolff's O((2W+1)/N) bias correction)
    assert res.tau_int == pytest.approx(res.tau_int_of_window[res.window], rel=2 * (2 * res.window + 1) / n)
    assert res.rho[0] == pytest.approx(1.0)


def test_gamma_method_on_replicas_and_white_noise():
    rng = np.random.default_rng(6)
    white = rng.standard_normal((5000, 4))
    res = autocorrelation(white)
    assert abs(res.tau_int - 0.5) < 3 * res.tau_int_error + 0.02
    res2 = autocorrelation([ar1(0.8, 8000, s) for s in (7, 8, 9)])
    assert abs(res2.tau_int - ar1_tau_int(0.8)) < 3 * res2.tau_int_error
    with pytest.raises(ValueError):
        autocorrelation(np.ones(100))
    with pytest.raises(ValueError):
        autocorrelation(np.arange(3.0))


def test_fixed_window_underestimates_slow_chains():
    """a = 0.99: τ_int = 99.5, but summing ρ(t) = a^t only to t_max = 100 gives
    ½ + Σ_{t≤100} a^t ≈ 63.3. The automatic window gets the full value."""
    a, n = 0.99, 200_000
    x = ar1(a, n, 10, burn=20000)
    fixed = tau_int_fixed_window(x, t_max=100)
    truncated = 0.5 + sum(a**t for t in range(1, 101))
    sigma_fixed = truncated * math.sqrt(2 * (2 * 100 + 1) / n)  # Madras–Sokal
    assert abs(fixed - truncated) < N_SIGMA * sigma_fixed
    assert fixed < ar1_tau_int(a) - 10 * sigma_fixed
    res = autocorrelation(x)
    assert abs(res.tau_int - ar1_tau_int(a)) < 3 * res.tau_int_error
    assert res.tau_int > fixed + 2 * res.tau_int_error
    # for a fast chain the fixed window is fine
    y = ar1(0.5, 50000, 11)
    assert tau_int_fixed_window(y, 100) == pytest.approx(1.5, abs=4 * 1.5 * math.sqrt(2 * 201 / 50000))


# ---------------------------------------------------------------------------- observables
def mixture_moments(s=0.25, n_max=8):
    """Exact raw moments of ½[N(1, s²) + N(−1, s²)]: E[(1 + sZ)^n] for even n, 0 for odd n."""
    gauss = {0: 1, 2: 1, 4: 3, 6: 15, 8: 105}  # E[Z^k]
    m = [1.0]
    for n in range(1, n_max + 1):
        if n % 2:
            m.append(0.0)
        else:
            m.append(sum(math.comb(n, k) * s**k * gauss[k] for k in range(0, n + 1, 2)))
    return np.array(m)


def test_cumulants_of_gaussian_vanish_beyond_second_order():
    mu, sig = 0.7, 1.3
    # raw moments of N(μ, σ²) from the moment generating function recursion m_n = μ m_{n−1} + (n−1)σ² m_{n−2}
    m = [1.0, mu]
    for n in range(2, 9):
        m.append(mu * m[n - 1] + (n - 1) * sig**2 * m[n - 2])
    k = obs.cumulants_from_moments(np.array(m))
    assert k[1] == pytest.approx(mu, rel=1e-13)
    assert k[2] == pytest.approx(sig**2, rel=1e-13)
    for n in range(3, 9):
        assert abs(k[n]) < 1e-10, (n, k[n])


def test_cumulants_of_two_gaussian_mixture_are_exact():
    """κ2 = 1.0625, κ4 = −2, κ6 = 16, κ8 = −272 (Aarts et al. 2410.21212)."""
    k = obs.cumulants_from_moments(mixture_moments())
    assert k[2] == pytest.approx(1.0625, rel=1e-13)
    assert k[4] == pytest.approx(-2.0, rel=1e-12)
    assert k[6] == pytest.approx(16.0, rel=1e-12)
    assert k[8] == pytest.approx(-272.0, rel=1e-12)
    for n in (1, 3, 5, 7):
        assert k[n] == 0


def test_site_cumulants_of_mixture_samples():
    rng = np.random.default_rng(12)
    n_conf = 2000
    x = rng.choice([-1.0, 1.0], size=(n_conf, 4, 4)) + 0.25 * rng.standard_normal((n_conf, 4, 4))
    res = obs.site_cumulants(x)
    exact = {2: 1.0625, 4: -2.0, 6: 16.0, 8: -272.0}
    for n, (val, err) in res.items():
        assert_stat(val, err, exact[n], f"site cumulant kappa_{n}")
    # the estimate is the cumulant of the pooled sites
    pooled = obs.cumulants_from_moments(np.array([np.mean(x**k) for k in range(9)]))
    for n in exact:
        assert res[n][0] == pytest.approx(pooled[n], rel=1e-10)


def test_symmetrised_site_cumulants_remove_the_vacuum_balance():
    """Configurations in one of two vacua ±μ (one sign per configuration, 60 % positive) with
    site noise s: as sampled, κ₂ = μ² + s² − μ²(2p − 1)² and its error carries the binomial
    fluctuation of the balance p; the Z₂-symmetrised estimator gives the symmetric value μ² + s²,
    odd cumulants exactly zero, and an error set by the site noise alone."""
    rng = np.random.default_rng(21)
    n, mu, s, p = 4000, 0.6, 0.02, 0.6
    sign = np.where(rng.random((n, 1, 1)) < p, 1.0, -1.0)
    phi = sign * mu + s * rng.standard_normal((n, 8, 8))
    p_hat = float((sign > 0).mean())
    raw = obs.rescaled_site_cumulants(phi, -1.0, 1.0, (2, 3))  # lo, hi = ∓1: y = φ
    sym = obs.rescaled_site_cumulants(phi, -1.0, 1.0, (2, 3), symmetrise=True)
    assert_stat(*raw[2], mu**2 + s**2 - mu**2 * (2 * p_hat - 1) ** 2, "as sampled kappa_2")
    assert_stat(*sym[2], mu**2 + s**2, "symmetrised kappa_2")
    assert abs(sym[3][0]) < 1e-12 and sym[3][1] < 1e-12
    assert sym[2][1] < raw[2][1] / 10
    # the map is applied to φ and −φ alike: a shifted map gives the same κ_n (n ≥ 2)
    shifted = obs.rescaled_site_cumulants(phi, -0.8, 1.2, (2,), symmetrise=True)
    assert shifted[2][0] == pytest.approx(sym[2][0], rel=1e-10)


def test_binder_cumulant_limits():
    rng = np.random.default_rng(13)
    n = 20000
    gauss = rng.normal(0.0, 0.3, n)[:, None] * np.ones((1, 9))
    u, e = obs.binder(gauss, n_blocks=200)
    assert_stat(u, e, 0.0, "Binder of Gaussian M")
    two = rng.choice([-0.8, 0.8], size=2000)[:, None] * np.ones((1, 9))
    u2, e2 = obs.binder(two)
    assert u2 == pytest.approx(2 / 3, rel=1e-12)
    assert e2 < 1e-10
    assert obs.binder_from_m(np.array([0.8, -0.8])) == pytest.approx(2 / 3)


def test_magnetisation_observables():
    c = np.array([[[1.0, -1.0], [2.0, 2.0]], [[-1.0, -1.0], [-1.0, -1.0]]])
    np.testing.assert_allclose(obs.magnetisation(c), [1.0, -1.0])
    np.testing.assert_allclose(obs.abs_magnetisation(c), [1.0, 1.0])
    np.testing.assert_allclose(obs.mean_abs_field(c), [1.5, 1.0])
    assert obs.susceptibility_from_m(np.array([1.0, -1.0]), 4) == pytest.approx(4.0)
    np.testing.assert_allclose(obs.magnetisation(torch.tensor(c)), [1.0, -1.0])
    s = obs.summary(np.random.default_rng(0).normal(size=(50, 4, 4)))
    assert set(s) >= {"M", "absM", "chi2", "binder", "n_configs"} and s["n_configs"] == 50
    with pytest.raises(ValueError):
        obs.magnetisation(np.zeros(5))


def test_two_point_of_white_noise_is_a_delta():
    """Independent N(0, v) sites: G(x) = v δ_{x,0}; G̃(p) = v for all p."""
    rng = np.random.default_rng(14)
    v = 0.7
    c = rng.normal(0.0, math.sqrt(v), size=(4000, 6, 6))
    G = obs.two_point(c)
    gp = obs.momentum_two_point(c)
    # each G(x ≠ 0) averages 4000·36 products of variance v²: σ = v/√(144000)
    sig = v / math.sqrt(c.shape[0] * 36)
    assert abs(G[0, 0] - v) < N_SIGMA * v * math.sqrt(2 / (c.shape[0] * 36))
    off = G.copy()
    off[0, 0] = 0
    assert np.max(np.abs(off)) < (N_SIGMA + 0.5) * sig
    np.testing.assert_allclose(G.sum(), gp[0, 0] - c.shape[1] * c.shape[2] * obs.magnetisation(c).mean() ** 2, rtol=1e-8, atol=1e-8)
    p, power = obs.radial_power_spectrum(c)
    assert p[0] == 0 and np.all(np.diff(p) > 0)
    assert np.allclose(power, v, rtol=0.1)


def test_axis_two_point_of_the_free_field_with_jackknife_errors():
    """Exact samples of the free field (λ = 0): G(r) along the axes agrees with the exact
    propagator within its jackknife errors, equals obs.two_point, and its error is the scalar
    jackknife's of the same estimator at each r."""
    from lib import Phi4
    from lib.analysis.stats import jackknife
    from lib.theories.gaussian_field import GaussianField

    th = Phi4(L=8, kappa=0.2, lam=0.0)
    exact = th.free_propagator().numpy()
    field = GaussianField(np.fft.fftn(exact).real)
    c = field.sample(3000, seed=4).numpy()
    G, err = obs.axis_two_point(c)
    full = obs.two_point(c)
    np.testing.assert_allclose(G, 0.5 * (full[:5, 0] + full[0, :5]), rtol=1e-10, atol=1e-12)
    for r in range(5):
        assert_stat(G[r], err[r], exact[r, 0], f"G({r})")
    row = lambda x: 0.5 * (obs.two_point(x)[2, 0] + obs.two_point(x)[0, 2])  # noqa: E731
    ref = jackknife(row, c[:200], n_blocks=20)
    assert obs.axis_two_point(c[:200], n_blocks=20)[1][2] == pytest.approx(ref[1], rel=1e-8)
    with pytest.raises(ValueError, match="hypercubic"):
        obs.axis_two_point(np.zeros((4, 8, 4)))


def test_two_point_of_a_plane_wave():
    """A deterministic configuration: G(x) = (1/V) Σ_y φ(y)φ(y+x) − M², checked by brute force."""
    L = 6
    y = np.arange(L)
    phi = np.cos(2 * np.pi * y / L)[:, None] + 0.3 * np.sin(2 * np.pi * 2 * y / L)[None, :] + 0.1
    G = obs.two_point(phi[None])
    brute = np.zeros((L, L))
    for dx in range(L):
        for dy in range(L):
            brute[dx, dy] = np.mean(phi * np.roll(phi, (-dx, -dy), (0, 1))) - phi.mean() ** 2
    np.testing.assert_allclose(G, brute, atol=1e-12)


def test_site_cumulant_difference_of_paired_ensembles():
    """Paired jackknife: b = 2a gives κ_n(a) − κ_n(b) = (1 − 2ⁿ) κ_n(a) with (2ⁿ − 1) times its error."""
    rng = np.random.default_rng(15)
    a = rng.choice([-1.0, 1.0], size=(3000, 2)) + 0.25 * rng.standard_normal((3000, 2))
    single = obs.site_cumulants(a, n_blocks=50)
    diff = obs.site_cumulant_difference(a, 2 * a, n_blocks=50)
    for n, (val, err) in diff.items():
        assert val == pytest.approx((1 - 2**n) * single[n][0], rel=1e-9)
        assert err == pytest.approx((2**n - 1) * single[n][1], rel=1e-9)
    same = obs.site_cumulant_difference(a, a.copy(), orders=(2, 4))
    assert all(v == 0 and e == 0 for v, e in same.values())
    # unpaired: the value is the difference of the two estimates
    b = rng.standard_normal((3000, 2))
    d = obs.site_cumulant_difference(a, b, orders=(2,), n_blocks=30)[2]
    assert d[0] == pytest.approx(obs.site_cumulants(a, (2,))[2][0] - obs.site_cumulants(b, (2,))[2][0], rel=1e-9)
    with pytest.raises(ValueError, match="same number"):
        obs.site_cumulant_difference(a, b[:10])


def test_gamma_derived_binder_cumulant_of_correlated_gaussian_chains():
    """AR(1) chains (a = 0.9, τ_int = 9.5) of a Gaussian M: U_L = 1 − ⟨M⁴⟩/(3⟨M²⟩²) vanishes
    exactly. The Γ-method value must be within 4 errors of 0, and the quoted error must match the
    spread of U over 40 independent repeats (within the 25 % sampling error of that spread, ×1.6),
    while the naive error that ignores autocorrelation is several times smaller."""
    from lib.analysis.stats import gamma_derived

    rng = np.random.default_rng(3)
    a, T, R = 0.9, 2000, 8

    def chains():
        m, x = np.empty((T, R)), rng.normal(size=R)
        for t in range(T):
            x = a * x + np.sqrt(1 - a * a) * rng.normal(size=R)
            m[t] = x
        return m

    def binder(m2, m4):
        return 1 - m4 / (3 * m2 ** 2)

    runs = [gamma_derived(binder, m ** 2, m ** 4, name="u") for m in (chains() for _ in range(40))]
    values, errors = np.array([r[0] for r in runs]), np.array([r[1] for r in runs])
    spread = values.std(ddof=1)
    assert abs(values.mean()) < 4 * spread / np.sqrt(len(values))
    assert abs(errors.mean() / spread - 1) < 0.4, (errors.mean(), spread)
    m = chains()
    naive = np.std([binder(np.mean(x ** 2), np.mean(x ** 4)) for x in np.array_split(m.reshape(-1), 400)])
    naive /= np.sqrt(400)
    assert gamma_derived(binder, m ** 2, m ** 4)[1] > 2 * naive
    with pytest.raises(ValueError, match="same shape"):
        gamma_derived(binder, m ** 2, m[:10] ** 4)


def test_distance_to_training_sees_copies():
    """Training configurations plus small noise sit at the noise's distance from the training
    set; fresh draws of the same law sit as far as held-out ones (ratio near 1)."""
    from lib.analysis.generalisation import distance_to_training, nearest_distances

    g = torch.Generator().manual_seed(5)
    train, held = torch.randn(2048, 4, 4, generator=g), torch.randn(512, 4, 4, generator=g)
    assert float(nearest_distances(train[:3], train).abs().max()) < 1e-6
    copies = train[:500] + 0.01 * torch.randn(500, 4, 4, generator=g)
    assert distance_to_training(copies, train, held)["ratio"] < 0.05
    fresh = distance_to_training(torch.randn(2000, 4, 4, generator=g), train, held)["ratio"]
    assert 0.9 < fresh < 1.1


def test_dsm_generalisation_gap_vanishes_for_a_model_that_never_saw_the_data():
    """The exact score of a Gaussian law has no training set: train and held-out draws of that
    law give the same DSM loss within the stated error."""
    import lib
    from lib.analysis.generalisation import dsm_generalisation_gap
    from lib.diffusion import make_sde

    sde = make_sde("ve", 25.0)
    field = lib.Phi4(L=4, kappa=0.2, lam=0.0).free_field()
    score = field.score_fn(sde)

    class Exact(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sde, self.p = sde, torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))

        def forward(self, x, t):
            return score(x, t)

    data = field.sample(4096, seed=3)
    gap, err = dsm_generalisation_gap(Exact(), data[:2048], data[2048:], t=0.05, seed=2)
    assert abs(gap) < 3.5 * err and err > 0
    # the per-configuration losses it uses average to dsm_loss's batch mean
    from lib.diffusion.loss import dsm_loss

    t = torch.full((64,), 0.05, dtype=torch.float64)
    z = torch.randn(64, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    each = dsm_loss(Exact(), data[:64], t=t, z=z, reduction="none")
    assert each.shape == (64,)
    assert torch.allclose(each.mean(), dsm_loss(Exact(), data[:64], t=t, z=z))


def test_pull_of_independent_estimates_is_standard_normal_and_sees_a_shift():
    """Means of 100 Gaussian samples with their jackknife errors: the pull of two independent
    estimates of the same mean has unit variance (2000 pairs: the sample standard deviation is
    known to 1/sqrt(2·2000) ≈ 0.016; the t-distribution of 99 degrees of freedom adds 1 %),
    and a shift of the mean by Δ moves it by Δ/√(2σ²/n)."""
    from lib.analysis.stats import pull

    rng = np.random.default_rng(7)
    n_pairs, n = 2000, 100
    x, y = rng.normal(size=(2, n_pairs, n))
    ex, ey = x.std(axis=1, ddof=1) / np.sqrt(n), y.std(axis=1, ddof=1) / np.sqrt(n)
    z = pull((x.mean(axis=1), ex), (y.mean(axis=1), ey))
    assert z.shape == (n_pairs,)
    assert abs(z.mean()) < N_SIGMA / np.sqrt(n_pairs)
    assert abs(z.std() - 1.0) < 0.01 + N_SIGMA / np.sqrt(2 * n_pairs)
    shift = 0.3  # 0.3 / sqrt(2/100) = 2.12 combined errors
    z_shift = pull((x.mean(axis=1) + shift, ex), (y.mean(axis=1), ey))
    assert abs(z_shift.mean() - shift / np.sqrt(2 / n)) < N_SIGMA * 1.01 / np.sqrt(n_pairs) + 0.03
    # against an exact number, and a scalar pair
    assert pull((1.5, 0.5), 1.0) == 1.0
    assert isinstance(pull((1.0, 0.3), (0.0, 0.4)), float) and math.isclose(pull((1.0, 0.3), (0.0, 0.4)), 2.0)


@pytest.mark.parametrize(
    "a, b, match",
    [((1.0, -0.1), (0.0, 0.1), "non-negative"), ((1.0, 0.0), 2.0, "both errors are zero"),
     ((1.0, float("nan")), (0.0, 0.1), "finite"), ([1.0, 0.1, 0.2], 0.0, "pair")],
)
def test_pull_refuses_inputs_without_an_error(a, b, match):
    from lib.analysis.stats import pull

    with pytest.raises(ValueError, match=match):
        pull(a, b)


def _ar1_chains(a, n, r, seed):
    """r independent stationary AR(1) chains of length n, as a (time, chains) array."""
    return np.stack([ar1(a, n, seed + i, burn=200) for i in range(r)], axis=1)


def _exact_error_of_mean(a, n):
    """Exact standard error of the mean of n consecutive stationary AR(1) values (unit noise):
    Var = (1/n²) Σ_{i,j} a^{|i−j|} / (1 − a²)."""
    k = np.arange(1, n)
    return math.sqrt((n + 2 * np.sum((n - k) * a ** k)) / (1 - a * a)) / n


def test_jackknife_over_chains_gives_the_exact_error_of_autocorrelated_chains():
    """400 chains of 200 steps of AR(1) with a = 0.9 (τ_int = 9.5, chains of 21 τ): the jackknife
    over chains reproduces the exact standard error of the pooled mean within its own accuracy
    (relative 1/√(2·399) ≈ 3.5 %, four of them allowed), and the Γ-method with the chains as
    replicas (pyerrors: fluctuations about each chain's own mean) comes out low by the 2W/N the
    docstring of jackknife_chains predicts. A jackknife over single measurements instead of
    chains would be low by √(2τ) ≈ 4.4 and fail."""
    from lib.analysis.stats import gamma_derived, jackknife_chains

    a, n, r = 0.9, 200, 400
    x = _ar1_chains(a, n, r, seed=11)
    exact = _exact_error_of_mean(a, n) / math.sqrt(r)
    value, err = jackknife_chains(lambda m: m, x)
    assert value == pytest.approx(x.mean())
    assert abs(err / exact - 1) < 4 / math.sqrt(2 * (r - 1)), (err, exact)
    assert abs(value) < N_SIGMA * exact
    _, err_gamma = gamma_derived(lambda m: m, x, name="ar1")
    assert err_gamma < 0.9 * exact, (err_gamma, exact)


def test_jackknife_over_chains_resamples_the_whole_ratio():
    """A nonlinear function of two means (U = 1 − ⟨b⟩/(3⟨a⟩²)): the jackknife over chains agrees
    with linear error propagation over independent chain means, and bad input is refused."""
    from lib.analysis.stats import jackknife_chains

    rng = np.random.default_rng(4)
    a_ = 1 + 0.1 * rng.standard_normal((50, 300))
    b_ = 2 + 0.1 * rng.standard_normal((50, 300))
    f = lambda m2, m4: 1 - m4 / (3 * m2 ** 2)  # noqa: E731
    value, err = jackknife_chains(f, a_, b_)
    A, B = a_.mean(0), b_.mean(0)
    grad = np.array([2 * B.mean() / (3 * A.mean() ** 3), -1 / (3 * A.mean() ** 2)])
    lin = np.sqrt(grad @ np.cov(np.stack([A, B])) @ grad / A.size)
    assert value == pytest.approx(f(a_.mean(), b_.mean()))
    assert err == pytest.approx(lin, rel=0.02)
    with pytest.raises(ValueError, match="same shape"):
        jackknife_chains(f, a_, b_[:, :10])
    with pytest.raises(ValueError, match="two chains"):
        jackknife_chains(f, a_[:, :1], b_[:, :1])


def test_crossings_of_two_measured_curves():
    """Two straight lines through a grid cross where they should (exact for lines), every sign
    change is found, and the quoted error equals the spread of the crossing over 4000 noisy
    redraws within 10 % (the linear error propagation of the docstring)."""
    from lib.analysis.stats import crossings

    x = np.array([0.26, 0.265, 0.27, 0.275, 0.28])
    a_ = 0.5 + 20 * (x - 0.27)
    b2 = 0.5 + 40 * (x - 0.271) + 20 * 0.001  # equal to a_ at x = 0.271, between grid points
    err = 0.004
    (xc, dxc, i), = crossings(x, [(v, err) for v in a_], [(v, err) for v in b2])
    assert xc == pytest.approx(0.271, abs=1e-12) and i == 2
    rng = np.random.default_rng(1)
    draws = [crossings(x, [(v, err) for v in a_ + err * rng.standard_normal(5)],
                       [(v, err) for v in b2 + err * rng.standard_normal(5)]) for _ in range(4000)]
    xs = [c[0][0] for c in draws if len(c) == 1 and c[0][2] == 2]
    assert len(xs) > 3500 and np.std(xs) == pytest.approx(dxc, rel=0.1)
    wiggle = [(v, 0.01) for v in (0.1, -0.1, 0.1, -0.1, 0.1)]
    assert len(crossings(x, wiggle, [(0.0, 0.01)] * 5)) == 4
    assert crossings(x, [(v, err) for v in a_], [(v + 1, err) for v in a_]) == []
    with pytest.raises(ValueError, match="pairs"):
        crossings(x, a_, b2)
