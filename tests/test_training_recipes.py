"""Training recipes beyond the paper's (issue 11): the Gaussian skip of a score model, log-normal
noise levels in the loss, and the Gaussian field fitted to an ensemble (the baseline a network
must beat). Each is checked against an exact answer."""
import math

import numpy as np
import pytest
import torch

import lib
from lib.diffusion import TrainSettings, default_model, dsm_loss, make_sde, site_variance
from lib.diffusion.loss import sample_times
from lib.theories import GaussianField


@pytest.mark.parametrize("kind", ["ve", "vp"])
def test_gaussian_skip_is_the_exact_score_of_gaussian_sites_when_the_network_is_silent(kind):
    sde = make_sde(kind, 10.0)
    v = 0.3
    net = default_model(sde, (8, 8), channels=(4, 8, 8, 8), skip_var=v).double()
    torch.nn.init.zeros_(net.final.weight)
    torch.nn.init.zeros_(net.final.bias)
    x = torch.randn(3, 8, 8, dtype=torch.float64)
    t = torch.tensor([0.01, 0.4, 1.0], dtype=torch.float64)
    with torch.no_grad():
        s = net(x, t)
    f, xi = sde.f(t), sde.Xi(t)
    exact = -(f / (f * f * v + xi))[:, None, None] * x  # iid sites of variance v, diffused
    assert torch.allclose(s, exact, rtol=1e-12, atol=0)
    assert net.config["skip_var"] == v and "skip_var" not in default_model(sde, (8, 8)).config


def test_site_variance_is_measured_in_network_units():
    x = 3.0 + 2.0 * torch.randn(4000, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v = site_variance(x, "none")
    assert abs(v - 4.0) < 4 * 4.0 * math.sqrt(2 / x.numel())
    # min-max maps the range to [-1, 1]: the variance scales by (2 / range)^2
    rng = float(x.max() - x.min())
    assert site_variance(x, "minmax") == pytest.approx(v * (2 / rng) ** 2, rel=1e-9)


@pytest.mark.parametrize("kind", ["ve", "vp"])
def test_lognormal_times_give_lognormal_noise_levels(kind):
    sde = make_sde(kind, 25.0)
    t = sample_times(sde, 200000, torch.Generator().manual_seed(1), eps=1e-5, t_sampling="lognormal",
                     p_mean=-1.2, p_std=1.2, dtype=torch.float64)
    assert float(t.min()) >= 1e-5 and float(t.max()) <= sde.T
    lo, hi = float(sde.noise_level(1e-5)), float(sde.noise_level(sde.T))
    ls = torch.log(sde.noise_level(t))
    inside = ls[(ls > math.log(lo) + 1e-9) & (ls < math.log(hi) - 1e-9)]
    # the unclamped part of a normal N(-1.2, 1.2²) truncated to [ln lo, ln hi]: compare its median
    # with the exact one of the truncated normal
    from scipy.stats import truncnorm

    a, b = (math.log(lo) + 1.2) / 1.2, (math.log(min(hi, 1e6)) + 1.2) / 1.2
    median = truncnorm.median(a, b, loc=-1.2, scale=1.2)
    assert abs(float(inside.median()) - median) < 4 * 1.2 * math.sqrt(math.pi / 2 / inside.numel())
    with pytest.raises(ValueError, match="t_sampling"):
        TrainSettings(t_sampling="beta")
    assert "t_sampling" not in TrainSettings().key()


def test_fitted_gaussian_field_is_exact_for_the_free_field_and_its_score_is_the_dsm_minimiser():
    th = lib.Phi4(L=8, kappa=0.2, lam=0.0)
    sde = make_sde("ve", 25.0)
    gf = th.free_field()
    x = gf.sample(4, seed=0)
    # at t = 0 the score is the drift −Aφ of the action (eq. 4.2 at λ = 0), and log p_t is the
    # normalised Gaussian of covariance A⁻¹ + Ξ(t) 1, checked against a dense evaluation
    assert torch.allclose(gf.score(x, sde, 0.0), th.drift(x), atol=1e-12)
    A = torch.stack([-th.drift(e.reshape(1, 8, 8))[0].reshape(-1) for e in torch.eye(64, dtype=torch.float64)], 1)
    cov = torch.linalg.inv(A) + float(sde.Xi(torch.tensor(0.3, dtype=torch.float64))) * torch.eye(64, dtype=torch.float64)
    dense = torch.distributions.MultivariateNormal(torch.zeros(64, dtype=torch.float64), cov).log_prob(x.reshape(4, -1))
    assert torch.allclose(gf.log_prob(x, sde, 0.3), dense, atol=1e-8)
    # on free-field data the exact score has a lower DSM loss than a slightly wrong spectrum
    # (common random numbers; the difference is many standard errors)
    data = gf.sample(2000, seed=1)
    g = torch.Generator().manual_seed(2)
    t = 0.05 + 0.9 * torch.rand(2000, generator=g, dtype=torch.float64)
    z = torch.randn(data.shape, generator=g, dtype=torch.float64)

    class Carrier:
        pass

    carrier = Carrier()
    carrier.sde = sde
    per = []
    for spec in (th.free_momentum_propagator(), 1.2 * th.free_momentum_propagator()):
        fn = GaussianField(spec).score_fn(sde)
        per.append(np.array([float(dsm_loss(carrier, data[i:i + 100], t=t[i:i + 100], z=z[i:i + 100], score_fn=fn))
                             for i in range(0, 2000, 100)]))
    diff = per[1] - per[0]
    assert diff.mean() > 4 * diff.std(ddof=1) / math.sqrt(len(diff))
    # and the fit to an ensemble recovers the spectrum within its statistical error
    fit = GaussianField.fit(gf.sample(8000, seed=3))
    rel = fit.spectrum / th.free_momentum_propagator() - 1
    assert float(rel.abs().mean()) < 4 * math.sqrt(2 / 8000)
