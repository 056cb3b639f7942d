"""Training recipes beyond the paper's: the Gaussian skip of a score model, log-normal
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


class _ExactGaussianScore(torch.nn.Module):
    """The exact score of iid N(0, v) sites under ``sde`` (a 'model' for the loss functions)."""

    def __init__(self, sde, v):
        super().__init__()
        self.sde, self.v = sde, v
        self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x, t):
        f, xi = self.sde.f(t), self.sde.Xi(t)
        return -(f / (f * f * self.v + xi)).reshape(-1, *[1] * (x.ndim - 1)) * x


@pytest.mark.parametrize("t_sampling", ["uniform", "lognormal"])
def test_held_out_loss_of_the_exact_score_is_the_dsm_minimum(t_sampling):
    """For iid N(0, v) sites and the exact score, E‖σ_t s + z‖² = V f²v/(f²v + Ξ(t)) per
    configuration; the held-out loss (stratified times, fixed noise) estimates its average over the
    training's time distribution, computed here by quadrature, within its own statistical error,
    and is reproducible call by call."""
    from lib.diffusion import held_out_loss

    sde, v, shape = make_sde("ve", 25.0), 0.2, (4, 4)
    x = math.sqrt(v) * torch.randn(2000, *shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model = _ExactGaussianScore(sde, v)
    st = TrainSettings(t_sampling=t_sampling)
    val = held_out_loss(model, x, st, seed=5, n_times=8)
    assert val == held_out_loss(model, x, st, seed=5, n_times=8)
    u = (torch.arange(200000, dtype=torch.float64) + 0.5) / 200000
    t = sample_times(sde, len(u), eps=st.eps, t_sampling=t_sampling, u=u, dtype=torch.float64)
    f2 = sde.f(t) ** 2
    exact = float((math.prod(shape) * f2 * v / (f2 * v + sde.Xi(t))).mean())
    # error: from the per-configuration spread of the loss (V χ²-like terms), estimated by repeats
    reps = [held_out_loss(model, x[:500], st, seed=s, n_times=8) for s in range(6)]
    err = float(np.std(reps, ddof=1)) / math.sqrt(4)  # 2000 configurations: 4× those of a repeat
    assert abs(val - exact) < 4 * err, (val, exact, err)
    with pytest.raises(ValueError, match="u must hold"):
        sample_times(sde, 3, u=torch.tensor([0.1, 1.5, 0.2]))


def test_early_stopping_keeps_the_best_weights_and_survives_a_restart(tmp_path):
    """A network that memorises a tiny training set: the held-out loss stops improving, training
    stops `patience` epochs after its best epoch, the checkpoint's sampling weights are those of
    that epoch, and a rerun loads instead of training on."""
    from lib.diffusion import Trainer, held_out_loss, load_model

    g = torch.Generator().manual_seed(0)
    sde = make_sde("ve", 10.0)
    data = torch.randn(8, 2, generator=g)
    held = torch.randn(256, 2, generator=g)
    torch.manual_seed(1)
    net = lib.diffusion.MLPScore(sde, dim=2, hidden=(64, 64))
    st = TrainSettings(epochs=400, batch_size=8, lr=3e-3, patience=15)
    path = tmp_path / "m.pt"
    tr = Trainer(net, data, st, seed=2, checkpoint=path, validation=held)
    tr.fit(progress_bar=False)
    assert tr.stopped_early and tr.epoch < 400
    assert tr.epoch - tr.best_epoch == 15
    h = tr.validation_history
    assert len(h) == tr.epoch and min(h) == h[tr.best_epoch - 1]
    best, state = load_model(path)  # early stopping: the best weights by default
    assert held_out_loss(best, held, st, seed=2) == pytest.approx(h[tr.best_epoch - 1], rel=1e-6)
    last, _ = load_model(path, best=False)
    assert held_out_loss(last, held, st, seed=2) == pytest.approx(h[-1], rel=1e-6)
    # a new trainer on the same checkpoint resumes, sees the stop, and trains no further
    torch.manual_seed(1)
    again = Trainer(lib.diffusion.MLPScore(sde, dim=2, hidden=(64, 64)), data, st, seed=2, checkpoint=path,
                    validation=held)
    again.fit(progress_bar=False)
    assert again.epoch == tr.epoch and again.validation_history == h
    with pytest.raises(ValueError, match="patience"):
        Trainer(lib.diffusion.MLPScore(sde, dim=2), data, st, seed=2)
