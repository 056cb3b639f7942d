"""The 1D Fokker–Planck equation (paper eq. 2.6): conservation, relaxation to e^{−S}/Z, agreement with
Langevin at finite time, and the time-dependent (diffusion-model) path."""
import math

import numpy as np
import pytest
import torch

from lib import ToyModel, langevin
from lib.analysis.fokker_planck import fokker_planck_operator, solve_fokker_planck, stationary_density

torch.set_num_threads(1)

X = np.linspace(-7, 7, 281)  # h = 0.05: cell Péclet number |K|h/2D < 1 for the toy drifts
H = X[1] - X[0]


def gaussian(x, mu, s):
    return np.exp(-0.5 * ((x - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))


def toy_drift(model):
    return lambda y: model.drift(torch.as_tensor(y).reshape(-1, 1)).numpy().reshape(-1)


def moments_on_grid(p, k_max=2):
    return [float((p * X**k).sum() * H) for k in range(k_max + 1)]


@pytest.mark.parametrize("params", [dict(mu2=1.0, g=0.4), dict(mu2=-1.0, g=0.4)], ids=["single", "double"])
def test_relaxes_to_boltzmann_density(params):
    m = ToyModel(**params)
    if params["mu2"] > 0:
        p0 = gaussian(X, 2.0, 0.2)
    else:  # a symmetric start: the slow tunnelling mode (Kramers time ~ 10²) is not excited
        p0 = 0.5 * (gaussian(X, 2.0, 0.2) + gaussian(X, -2.0, 0.2))
    times = [0.0, 0.2, 1.0, 3.0, 8.0, 15.0]
    P = solve_fokker_planck(X, p0, times, toy_drift(m))
    assert P.shape == (len(times), len(X))
    np.testing.assert_allclose(P[0], p0)
    exact = m.density(X)
    l1 = [float(np.abs(p - exact).sum() * H) for p in P]
    # probability is conserved exactly (zero-flux boundaries) and stays non-negative
    np.testing.assert_allclose(P.sum(1) * H, p0.sum() * H, rtol=1e-10)
    assert P.min() > -1e-10
    # the distance to e^{-S}/Z decreases monotonically (H-theorem) and vanishes up to O(h²)
    assert all(b < a for a, b in zip(l1, l1[1:])), l1
    assert l1[0] > 0.5 and l1[-1] < 1e-3, l1
    # the discrete equilibrium is the null vector of the operator and approximates e^{-S}/Z
    xm = 0.5 * (X[1:] + X[:-1])
    ps = stationary_density(X, toy_drift(m)(xm))
    A = fokker_planck_operator(X, toy_drift(m)(xm), 1.0)
    assert np.abs(A @ ps).max() < 1e-9 * ps.max()
    assert ps.sum() * H == pytest.approx(1.0, rel=1e-12)
    assert np.abs(ps - exact).sum() * H < 1e-3
    assert np.abs(P[-1] - ps).sum() * H < 1e-5  # the solver's long-time limit is that vector


def test_discretisation_error_is_second_order():
    m = ToyModel(mu2=1.0, g=0.4)
    errs = []
    for n in (281, 561, 1121):
        x = np.linspace(-7, 7, n)
        h = x[1] - x[0]
        xm = 0.5 * (x[1:] + x[:-1])
        ps = stationary_density(x, toy_drift(m)(xm))
        errs.append(np.abs(ps - m.density(x)).sum() * h)
    for a, b in zip(errs, errs[1:]):
        assert 3.0 < a / b < 5.0, errs


def test_ornstein_uhlenbeck_transient_is_exact():
    """K = −μ²φ (Gaussian): mean e^{−μ²τ}φ₀, variance s₀²e^{−2μ²τ} + (1 − e^{−2μ²τ})/μ²."""
    mu2 = 1.5
    m = ToyModel(mu2=mu2, g=0.0)
    s0, x0 = 0.3, 2.0
    times = [0.1, 0.5, 1.0, 2.0]
    P = solve_fokker_planck(X, gaussian(X, x0, s0), times, toy_drift(m))
    for t, p in zip(times, P):
        mean = x0 * math.exp(-mu2 * t)
        var = s0**2 * math.exp(-2 * mu2 * t) + (1 - math.exp(-2 * mu2 * t)) / mu2
        np.testing.assert_allclose(p, gaussian(X, mean, math.sqrt(var)), atol=3e-3)  # O(h²)
        _, m1, m2 = moments_on_grid(p)
        assert m1 == pytest.approx(mean, abs=1e-3) and m2 - m1**2 == pytest.approx(var, rel=2e-3)


def test_langevin_at_finite_time_follows_fokker_planck():
    """The histogram moments of 20 000 Langevin chains at τ = 0.5 agree with the Fokker–Planck
    solution from the same initial density (paper Sec. 2: the two descriptions are equivalent)."""
    m = ToyModel(mu2=-1.0, g=0.4)
    x0, s0, tau, dt = 1.0, 0.2, 0.5, 0.001
    P = solve_fokker_planck(X, gaussian(X, x0, s0), [tau], toy_drift(m))[0]
    _, mean_fp, m2_fp = moments_on_grid(P)
    phi0 = x0 + s0 * torch.randn(20000, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    phi, _ = langevin(m, phi0, n_steps=int(round(tau / dt)), dtau=dt, seed=4, progress_bar=False)
    x = phi[:, 0].numpy()
    for est, exact, what in [(x, mean_fp, "<phi>"), (x**2, m2_fp, "<phi^2>")]:
        err = est.std(ddof=1) / math.sqrt(len(est))
        assert abs(est.mean() - exact) < 4 * err, (what, est.mean(), exact, err)
    # and the distribution moved: it is far from both its start and the equilibrium
    assert abs(mean_fp - x0) > 0.3 and abs(m2_fp - m.moment(2)) > 1.0


def test_time_dependent_diffusion_spreads_a_gaussian():
    """Zero drift, D(τ) = ½ + τ: a Gaussian stays Gaussian with variance s₀² + 2∫D = s₀² + τ + τ²."""
    s0 = 0.3
    times = [0.25, 0.5, 1.0]
    P = solve_fokker_planck(X, gaussian(X, 0.5, s0), times, lambda y, t: np.zeros_like(y),
                            diffusion=lambda t: 0.5 + t, n_substeps=200)
    for t, p in zip(times, P):
        var = s0**2 + t + t**2
        np.testing.assert_allclose(p, gaussian(X, 0.5, math.sqrt(var)), atol=1e-3)
        _, m1, m2 = moments_on_grid(p)
        assert m1 == pytest.approx(0.5, abs=1e-3) and m2 - m1**2 == pytest.approx(var, rel=2e-3)
        assert p.sum() * H == pytest.approx(1.0, rel=1e-10)


def test_time_dependent_path_agrees_with_exponential_path():
    """A drift given as K(φ, τ) (Crank–Nicolson path) that happens not to depend on τ reproduces the
    matrix-exponential solution; a genuinely time-dependent drift K = −c(τ)φ matches the exact OU law."""
    m = ToyModel(mu2=1.0, g=0.4)
    p0 = gaussian(X, 1.5, 0.3)
    times = [0.3, 1.0]
    f = toy_drift(m)
    A = solve_fokker_planck(X, p0, times, f)
    B = solve_fokker_planck(X, p0, times, lambda y, t: f(y), n_substeps=400)
    assert np.abs(A - B).max() < 1e-4
    # K = −c(τ)φ with c = 1 + τ: mean x0·e^{−C}, var s0²e^{−2C} + 2∫ e^{−2(C(τ)−C(s))} ds, C = τ + τ²/2
    T = 1.0
    P = solve_fokker_planck(X, p0, [T], lambda y, t: -(1 + t) * y, n_substeps=400)[0]
    C = T + T**2 / 2
    s = np.linspace(0, T, 20001)
    var = 0.3**2 * math.exp(-2 * C) + np.trapezoid(2 * np.exp(-2 * (C - (s + s**2 / 2))), s)
    np.testing.assert_allclose(P, gaussian(X, 1.5 * math.exp(-C), math.sqrt(var)), atol=1e-3)


def test_invalid_input_raises():
    with pytest.raises(ValueError):
        solve_fokker_planck(X, gaussian(X, 0, 1), [1.0, 0.5], lambda y: -y)
    with pytest.raises(ValueError):
        solve_fokker_planck(X, gaussian(X, 0, 1), [-1.0], lambda y: -y)
    with pytest.raises(ValueError):
        fokker_planck_operator(np.array([0.0, 1.0, 3.0]), np.zeros(2), 1.0)
    with pytest.raises(ValueError):
        fokker_planck_operator(X, np.zeros(len(X)), 1.0)


def test_stationary_density_refuses_a_grid_too_coarse_for_the_drift():
    """With |K|h ≥ 2D the central scheme has no positive equilibrium: a clear error, not NaNs."""
    m = ToyModel(mu2=1.0, g=0.4)
    x = np.linspace(-8, 8, 201)  # h = 0.08, |K(8)| ≈ 42 > 2/h = 25
    xm = 0.5 * (x[1:] + x[:-1])
    with pytest.raises(ValueError, match="coarse"):
        stationary_density(x, toy_drift(m)(xm))
