"""The likelihood by the probability-flow ODE (paper eq. 3.15, issue 12) against exact answers: on
the free field the diffused density is Gaussian at every t, so log q must equal the exact log p;
exact traces must equal brute-force ones; Hutchinson's estimate must be unbiased."""
import math

import numpy as np
import pytest
import torch

import lib
from lib.diffusion import default_model, log_likelihood, make_sde
from lib.diffusion.likelihood import divergence_exact, divergence_hutchinson
from lib.diffusion.networks import build_score_model
from lib.theories import GaussianField

EPS = 1e-3


@pytest.mark.parametrize("kind", ["ve", "vp"])
def test_ode_log_likelihood_of_the_free_field_is_exact(kind):
    """With the exact score and the exact p_T as the terminal density, log q_ε(x) = log p_ε(x) up to
    the ODE tolerance; the error falls with the tolerance."""
    th = lib.Phi4(L=4, kappa=0.2, lam=0.0)
    sde = make_sde(kind, 10.0)
    field = GaussianField(th.free_momentum_propagator())
    x = field.sample(3, seed=0)
    exact = field.log_prob(x, sde, EPS)
    errors = {}
    for tol in (1e-4, 1e-7):
        res = log_likelihood(field.score_fn(sde), sde, x, eps=EPS, trace="exact", rtol=tol, atol=tol,
                             prior_logp=lambda y: field.log_prob(y, sde, sde.T))
        errors[tol] = float((res.log_q - exact).abs().max())
        assert res.nfe > 0
    assert errors[1e-7] < 1e-4, errors
    assert errors[1e-7] <= errors[1e-4] + 1e-12, errors


def test_exact_divergence_of_a_unet_equals_the_brute_force_jacobian_trace():
    sde = make_sde("ve", 25.0)
    net = build_score_model(default_model(sde, (4, 4), channels=(4, 8, 8, 8), strides=(1, 1, 1, 1)).config,
                            seed=0).double().eval()
    y = torch.randn(3, 4, 4, dtype=torch.float64)
    t = torch.full((3,), 0.4, dtype=torch.float64)
    f = lambda z: sde.ode_drift(z, t, net(z, t))  # noqa: E731
    _, div = divergence_exact(f, y, chunk=5)
    brute = torch.stack([torch.autograd.functional.jacobian(lambda z: f(z[None])[0], y[b]).reshape(16, 16).trace()
                         for b in range(3)])
    assert torch.allclose(div, brute, rtol=1e-10, atol=1e-10)


def test_hutchinson_is_unbiased_and_rademacher_probes_have_less_variance():
    """For the free field the drift's Jacobian is a fixed matrix A; ε·Aε averages to tr A, with
    variance 2‖A‖²_F (Gaussian) or 2Σ_{i≠j}A_ij² (Rademacher)."""
    th = lib.Phi4(L=4, kappa=0.24, lam=0.0)
    sde = make_sde("ve", 10.0)
    field = GaussianField(th.free_momentum_propagator())
    t = torch.full((1,), 0.05, dtype=torch.float64)
    f = lambda z: sde.ode_drift(z, t, field.score(z, sde, 0.05))  # noqa: E731
    y = field.sample(1, seed=2)
    _, exact = divergence_exact(f, y)
    g = torch.Generator().manual_seed(3)
    gauss = torch.randn((4000, 1, 4, 4), generator=g, dtype=torch.float64)
    est = {}
    for name, probes in (("gaussian", gauss), ("rademacher", torch.sign(torch.randn(gauss.shape, generator=g,
                                                                                       dtype=torch.float64)))):
        per = np.array([float(divergence_hutchinson(f, y, probes[k:k + 1])[1]) for k in range(4000)])
        assert abs(per.mean() - float(exact)) < 4 * per.std(ddof=1) / math.sqrt(len(per)), name
        est[name] = per.var(ddof=1)
    assert est["rademacher"] < est["gaussian"]


def test_em_samples_against_the_ode_density_closed_form_matches_monte_carlo():
    """GaussianField.em_ode_mismatch: the EM output N(0, a) and the ODE density N(0, b) are Gaussians
    diagonal in momentum space; their KL and the spread of log(p_EM/q_ODE) in closed form must
    match a Monte Carlo over exact EM-distributed configurations (GaussianField(a))."""
    th = lib.Phi4(L=8, kappa=0.23, lam=0.0)
    sde = make_sde("ve", 25.0)
    n_steps = 40
    field = th.free_field()
    m = field.em_ode_mismatch(sde, n_steps, EPS)
    a = field.em_variance(sde, n_steps, EPS)
    xi_T = float(sde.Xi(torch.tensor(1.0, dtype=torch.float64)))
    b = xi_T * (field.variance(sde, EPS) / field.variance(sde, 1.0))
    em, ode = GaussianField(a), GaussianField(b)
    x = em.sample(20000, seed=4)
    ratio = (em.log_prob(x) - ode.log_prob(x)).numpy()
    n = len(ratio)
    assert abs(ratio.mean() - m["kl_em_ode"]) < 4 * ratio.std() / math.sqrt(n)
    assert abs(ratio.std() - m["std_log_ratio"]) < 4 * m["std_log_ratio"] / math.sqrt(2 * n) + 1e-3
    assert m["kl_em_ode"] > 0 and m["kl_ode_target"] > 0
    # more steps bring EM to p_ε (it forgets the prior's error); the ODE density keeps it
    far = field.em_ode_mismatch(sde, 4000, EPS)
    assert far["kl_em_target"] < 0.05 * m["kl_em_target"] and far["kl_ode_target"] == pytest.approx(m["kl_ode_target"])
