"""Path-space weights for diffusion proposals (lib.diffusion.paths, issue 13): exact identities
for a Gaussian field with its exact score, and exactness of the Metropolis-corrected chain with a
deliberately poor proposal."""
import math

import pytest
import torch

import lib
from lib.analysis.stats import autocorrelation
from lib.diffusion import make_sde
from lib.diffusion.paths import PathSettings, path_levels, path_refresh, path_sample
from lib.mcmc.independence import independence_chain
from lib.rng import SampleStreams

SDE = make_sde("ve", 25.0)


def _free(L=8):
    th = lib.Phi4(L=L, kappa=0.2, lam=0.0)
    return th, th.free_field()


@pytest.mark.parametrize("n_steps", [3, 40])
def test_exact_score_and_propagator_kernels_leave_only_the_prior_mismatch(n_steps):
    """With the exact score of a Gaussian field and its own spectrum, each reverse kernel is the
    exact posterior, so log W = log p_T(x_0) − log π(x_0) exactly, for any number of steps: the
    difference must be a constant (−log Z of the field's normalised density: 0) to rounding."""
    th, field = _free()
    res = path_sample(field.score_fn(SDE), SDE, (64, 8, 8), PathSettings(n_steps=n_steps), spectrum=field.spectrum,
                      noise=torch.Generator().manual_seed(0), dtype=torch.float64)
    log_w = field.log_prob(res.x) + res.log_path
    predicted = field.log_prob(res.x_T, SDE, SDE.T) - SDE.prior_logp(res.x_T)
    assert res.nfe == n_steps
    assert torch.allclose(log_w, predicted, atol=1e-7, rtol=0), (log_w - predicted).abs().max()


def test_a_poor_proposal_is_corrected_exactly_by_the_chain():
    """Isotropic kernels and 6 steps with the exact free-field score: the raw proposals' χ₂ is
    biased far beyond its error; the independence chain on path weights must reproduce the exact
    free susceptibility within 4 Γ-method standard errors."""
    th, field = _free()
    n = 20000
    res = path_sample(field.score_fn(SDE), SDE, (n, 8, 8), PathSettings(n_steps=6, variance="isotropic"),
                      spectrum=field.spectrum, noise=torch.Generator().manual_seed(1), dtype=torch.float64)
    log_w = (-th.action(res.x) + res.log_path).numpy()
    chain = independence_chain(log_w, seed=2)
    m2 = (res.x.sum((1, 2)) ** 2 / 64).numpy()
    exact = th.free_susceptibility()
    raw_err = m2.std() / math.sqrt(n)
    assert abs(m2.mean() - exact) > 6 * raw_err, "the proposal should be visibly biased for this test to mean much"
    ac = autocorrelation(chain.take(m2), name="chi2")
    assert 0.05 < chain.acceptance < 0.9
    assert abs(ac.mean - exact) < 4 * ac.error, (ac.mean, ac.error, exact)


def test_per_sample_streams_make_paths_independent_of_the_batch():
    _, field = _free()
    s = PathSettings(n_steps=5)
    whole = path_sample(field.score_fn(SDE), SDE, (6, 8, 8), s, spectrum=field.spectrum,
                        noise=SampleStreams("p", 3, 0, 6), dtype=torch.float64)
    parts = [path_sample(field.score_fn(SDE), SDE, (3, 8, 8), s, spectrum=field.spectrum,
                         noise=SampleStreams("p", 3, a, 3), dtype=torch.float64) for a in (0, 3)]
    assert torch.equal(whole.x, torch.cat([p.x for p in parts]))
    assert torch.equal(whole.log_path, torch.cat([p.log_path for p in parts]))


def test_levels_and_settings_are_checked():
    xi = path_levels(SDE, PathSettings(n_steps=10))
    assert len(xi) == 11 and xi[-1] == 0 and bool((xi[:-1] > xi[1:]).all())
    assert float(xi[0]) == pytest.approx(float(SDE.Xi(torch.tensor(1.0))))
    with pytest.raises(ValueError, match="variance"):
        PathSettings(variance="diagonal")
    with pytest.raises(ValueError, match="VE"):
        path_sample(lambda x, t: x, make_sde("vp", 25.0), (2, 4, 4), spectrum=torch.ones(4, 4))
    with pytest.raises(ValueError, match="spectrum"):
        path_sample(lambda x, t: x, SDE, (2, 4, 4), spectrum=torch.ones(8, 8))


@pytest.mark.parametrize("variance", ["propagator", "isotropic"])
def test_a_refreshed_path_is_weighed_as_a_sampled_one(variance):
    """path_refresh draws a path backwards from given fields with the forward kernels F and weighs
    it. With the exact score and propagator kernels every path must obey log W = log p_T(x_0) −
    log π(x_0), as sampled paths do (to rounding); for either kernels the path's start must be the
    forward process's: x_0 − x_N white noise of variance Ξ(T) per site (within 5 standard errors)."""
    th, field = _free()
    s = PathSettings(n_steps=5, variance=variance)
    x = field.sample(256, seed=4)
    r = path_refresh(field.score_fn(SDE), SDE, x, s, spectrum=field.spectrum, noise=torch.Generator().manual_seed(0),
                     dtype=torch.float64)
    assert r.nfe == 5 and torch.equal(r.x, x)
    if variance == "propagator":
        log_w = field.log_prob(x) + r.log_path
        predicted = field.log_prob(r.x_T, SDE, SDE.T) - SDE.prior_logp(r.x_T)
        assert torch.allclose(log_w, predicted, atol=1e-9, rtol=0)
    d = (r.x_T - x).reshape(-1)
    xi_T = float(path_levels(SDE, s)[0])
    assert abs(float(d.var()) / xi_T - 1) < 5 * math.sqrt(2 / len(d))
    lag = float((d.reshape(256, 64)[:, 1:] * d.reshape(256, 64)[:, :-1]).mean()) / xi_T
    assert abs(lag) < 5 / math.sqrt(256 * 63)
