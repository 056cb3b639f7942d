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


class _ExactScoreModel(torch.nn.Module):
    """A 'trained model' whose score is the exact diffused score of a Gaussian field (in network
    units), with a dummy parameter so that the workflow can read its dtype."""

    def __init__(self, field, sde):
        super().__init__()
        self.field, self.sde = field, sde
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self._score = field.score_fn(sde)

    def forward(self, x, t):
        return self._score(x, t)


def test_model_log_likelihood_of_physical_fields_matches_the_closed_form_ode_density():
    """model_log_likelihood maps physical fields to network units y = aφ + b and adds V log a.
    With the exact score of a Gaussian field in network units (spectrum a²c), the ODE from the
    prior N(0, Ξ(T)) has a Gaussian density with per-mode variances b(p) = Ξ(T) c_ε/c_T in network
    units, i.e. b/a² for φ: the result must equal that closed form up to the solver tolerance.
    A wrong sign or a missing Jacobian is off by V |log a| = 64 log 2 ≈ 44 nats."""
    from lib.diffusion import model_log_likelihood

    sde = make_sde("ve", 25.0)
    phys = lib.Phi4(L=8, kappa=0.2, lam=0.0).free_field()
    a = 0.5  # normaliser [-2, 2] -> [-1, 1]
    net_field = GaussianField(a * a * phys.spectrum)
    model = _ExactScoreModel(net_field, sde)
    x = phys.sample(6, seed=1)
    eps = 1e-5
    res = model_log_likelihood(model, x, seed=0, normaliser={"kind": "minmax", "lo": -2.0, "hi": 2.0},
                               trace="exact", rtol=1e-7, atol=1e-7, eps=eps, progress_bar=False)
    xi_T = float(sde.Xi(torch.tensor(sde.T, dtype=torch.float64)))
    b = xi_T * net_field.variance(sde, eps) / net_field.variance(sde, sde.T)
    closed = GaussianField(b / (a * a)).log_prob(x)
    assert torch.allclose(res.log_q, closed, atol=1e-3), (res.log_q - closed)
    assert res.nfe > 0 and res.log_q.dtype == torch.float64


def test_per_sample_probes_do_not_depend_on_the_batch():
    from lib.diffusion.likelihood import draw_probes
    from lib.rng import SampleStreams

    whole = draw_probes(3, (6, 4, 4), "rademacher", SampleStreams("p", 9, 0, 6))
    parts = torch.cat([draw_probes(3, (2, 4, 4), "rademacher", SampleStreams("p", 9, s, 2)) for s in (0, 2, 4)], 1)
    assert whole.shape == (3, 6, 4, 4) and torch.equal(whole, parts)
    assert set(whole.unique().tolist()) == {-1.0, 1.0}


def test_cached_log_likelihood_reuses_exactly_its_request(tmp_path):
    """The cache entry is keyed by the model, the configurations' content, the settings and the
    seed: the same request loads the stored numbers, another seed or other data computes anew."""
    from lib.diffusion import cached_log_likelihood, cached_score_model
    from lib.storage import Ensemble

    sde = make_sde("ve", 25.0)
    th = lib.Phi4(L=8, kappa=0.2, lam=0.022)
    ens = lib.cached_hmc_ensemble(th, 12, seed=3, n_burnin=2, n_spacing=1, cache_dir=tmp_path, progress_bar=False,
                                  verbose=False)
    torch.manual_seed(0)
    net = default_model(sde, (8, 8), channels=(4, 4, 4, 4))
    _, _, ckpt = cached_score_model(ens, net, epochs=1, seed=1, batch_size=4, cache_dir=tmp_path, progress_bar=False,
                                    verbose=False)
    cfg = ens.configs[:4]
    kw = dict(rtol=1e-3, atol=1e-3, n_probes=2, cache_dir=tmp_path, progress_bar=False, verbose=False)
    first = cached_log_likelihood(ckpt, cfg, 5, batch_size=4, **kw)
    again = cached_log_likelihood(ckpt, cfg, 5, batch_size=2, **kw)   # batch size is not in the key
    assert first.shape == (4, 2) and np.array_equal(first, again)
    other_seed = cached_log_likelihood(ckpt, cfg, 6, batch_size=4, **kw)
    assert not np.allclose(other_seed[:, 0], first[:, 0])
    other_data = cached_log_likelihood(ckpt, ens.configs[4:8], 5, batch_size=4, **kw)
    assert not np.allclose(other_data[:, 0], first[:, 0])
    assert Ensemble  # the entries are ensemble files with metadata
    assert len(list(tmp_path.glob("loglik-dm-*.npz"))) == 3


def test_linear_fit_errors_match_least_squares_theory():
    """y = 2x + 1 + N(0, 1): the jackknife error of the slope must match the textbook
    σ_a = σ / (√n · std x) within 15 % (n = 2000), and the estimates lie within 4σ of the truth;
    R² must match its population value var(2x) / (var(2x) + σ²) = 0.8 within 4σ."""
    from lib.analysis.stats import linear_fit

    rng = np.random.default_rng(0)
    n = 2000
    x = rng.normal(size=n)
    y = 2 * x + 1 + rng.normal(scale=1.0, size=n)
    fit = linear_fit(x, y)
    sigma_a = 1.0 / (math.sqrt(n) * x.std())
    assert abs(fit["slope"][1] / sigma_a - 1) < 0.15
    assert abs(fit["slope"][0] - 2) < 4 * fit["slope"][1]
    assert abs(fit["intercept"][0] - 1) < 4 * fit["intercept"][1]
    assert abs(fit["r2"][0] - 0.8) < 4 * fit["r2"][1]
    with pytest.raises(ValueError):
        linear_fit([1.0, 2.0], [1.0, 2.0])


@pytest.mark.parametrize("kind", ["ve", "vp"])
def test_closed_form_divergence_of_the_free_field_equals_the_exact_trace(kind):
    """GaussianField.ode_divergence (−½kV + ½g² Σ_p 1/c_t(p)) against the batched exact trace of
    the probability-flow drift with the exact score, at several times; and the ODE log q computed
    with it equals the one with the exact trace."""
    from lib.diffusion.likelihood import probability_flow_drift

    sde = make_sde(kind, 10.0)
    field = lib.Phi4(L=4, kappa=0.2, lam=0.0).free_field()
    x = field.sample(3, seed=2)
    for t in (1e-3, 0.3, 1.0):
        _, exact = divergence_exact(probability_flow_drift(field.score_fn(sde), sde, t, 3, x), x)
        closed = field.ode_divergence(sde)(x, t)
        assert torch.allclose(exact, torch.full_like(exact, closed), rtol=1e-9, atol=1e-9), (t, exact, closed)
    kw = dict(eps=EPS, rtol=1e-6, atol=1e-6, prior_logp=lambda y: field.log_prob(y, sde, sde.T))
    a = log_likelihood(field.score_fn(sde), sde, x, trace="exact", **kw)
    b = log_likelihood(field.score_fn(sde), sde, x, divergence_fn=field.ode_divergence(sde), **kw)
    assert torch.allclose(a.log_q, b.log_q, atol=1e-6)


@pytest.mark.parametrize("how", ["closed_form", "exact_trace"])
def test_ode_proposals_carry_their_own_density(how):
    """ODE samples from the prior N(0, Ξ(T)) with the exact free-field score are Gaussian with
    per-mode variances b = Ξ(T) c_ε/c_T (the flow scales each mode by √(c_ε/c_T)): the samples
    and the log density carried along the trajectory must match that closed form, and the forward
    likelihood of the samples must give the same log q back."""
    from lib.diffusion.likelihood import ode_sample_with_density

    sde = make_sde("ve", 25.0)
    field = lib.Phi4(L=4, kappa=0.2, lam=0.0).free_field()
    x_T = sde.prior_std() * torch.randn((5, 4, 4), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    kw = dict(eps=EPS, rtol=1e-8, atol=1e-8)
    if how == "closed_form":
        kw["divergence_fn"] = field.ode_divergence(sde)
    out = ode_sample_with_density(field.score_fn(sde), sde, x_T, trace="exact", **kw)
    xi_T = float(sde.Xi(torch.tensor(sde.T, dtype=torch.float64)))
    scale = torch.sqrt(field.variance(sde, EPS) / field.variance(sde, sde.T))
    expected_x = torch.fft.ifftn(torch.fft.fftn(x_T, dim=(1, 2)) * scale, dim=(1, 2)).real
    assert torch.allclose(out.x, expected_x, atol=1e-5)
    closed = GaussianField(xi_T * scale ** 2).log_prob(out.x)
    assert torch.allclose(out.log_q, closed, atol=1e-5), (out.log_q - closed)
    back = log_likelihood(field.score_fn(sde), sde, out.x, trace="exact", **kw)
    assert torch.allclose(back.log_q, out.log_q, atol=1e-5)
