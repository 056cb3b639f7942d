"""Two-dimensional U(1) gauge theory (lib.theories.u1, issue 24): the exact character-expansion
results against brute-force integration on a 2×2 torus, Q an integer and gauge invariant, the force
against autograd, HMC, local Metropolis and MALA against the exact plaquette and χ_top, MALA's
acceptance against detailed balance, and the diffusion pieces on the torus (the wrapped normal,
its exact score driving the reverse SDE, the gauge-invariant score network)."""
import math

import numpy as np
import pytest
import torch

import lib
from lib.analysis.stats import autocorrelation
from lib.theories.u1 import U1Gauge, wrap

TREE = [(0, 0, 0), (1, 0, 0), (1, 1, 0)]            # a maximal tree of the 2×2 torus: fixed to 0
FREE = [(0, 1, 0), (0, 0, 1), (0, 1, 1), (1, 0, 1), (1, 1, 1)]  # the other five links


def _brute_force_links(th, n):
    """⟨plaquette⟩, ⟨W(1×2)⟩ and ⟨Q²⟩ on the 2×2 torus by a midpoint grid of n points for each of
    the five links left after fixing the tree gauge (exact for gauge-invariant observables)."""
    g = (torch.arange(n, dtype=torch.float64) + 0.5) * (2 * math.pi / n) - math.pi + 0.0123
    rest = torch.cartesian_prod(*([g] * 4))
    Z = P = W = Q2 = 0.0
    for a in g:
        x = torch.zeros(len(rest), 2, 2, 2, dtype=torch.float64)
        vals = torch.cat([torch.full((len(rest), 1), float(a), dtype=torch.float64), rest], 1)
        for k, (mu, x0, x1) in enumerate(FREE):
            x[:, mu, x0, x1] = vals[:, k]
        w = torch.exp(-th.action(x))
        Z += float(w.sum())
        P += float((w * th.plaquette(x)).sum())
        W += float((w * th.wilson_loop(x, 1, 2)).sum())
        Q2 += float((w * th.topological_charge(x) ** 2).sum())
    return P / Z, W / Z, Q2 / Z


def _plaquette_integral_Q2(beta, n):
    """⟨Q²⟩ on the 2×2 torus as an integral over three plaquette angles (the fourth is minus their sum
    mod 2π; the holonomies and the gauge orbit factor out), midpoint rule with n points each."""
    g = (torch.arange(n, dtype=torch.float64) + 0.5) * (2 * math.pi / n) - math.pi
    p12 = torch.cartesian_prod(g, g)
    Z = Q2 = 0.0
    for a in g:
        p4 = -(p12[:, 0] + p12[:, 1] + a)
        w = torch.exp(beta * (torch.cos(p12[:, 0]) + torch.cos(p12[:, 1]) + math.cos(a) + torch.cos(p4)))
        q = torch.round((p12[:, 0] + p12[:, 1] + a + wrap(p4)) / (2 * math.pi))
        Z += float(w.sum())
        Q2 += float((w * q * q).sum())
    return Q2 / Z


@pytest.mark.parametrize("beta", [0.7, 2.5])
def test_exact_solution_agrees_with_brute_force_on_a_2x2_torus(beta):
    th = U1Gauge(2, beta)
    P, W, Q2 = _brute_force_links(th, 16)
    # smooth periodic integrands: the midpoint grid converges exponentially
    assert P == pytest.approx(th.exact_plaquette(), rel=1e-9, abs=1e-12)
    assert W == pytest.approx(th.exact_wilson_loop(2), rel=1e-9, abs=1e-12)
    # Q jumps where a plaquette wraps: the link grid converges slowly (about 1 % at n = 16) ...
    assert Q2 == pytest.approx(th.exact_Q2(), rel=0.02)
    # ... the three-plaquette integral much faster (error 6e-5 at n = 200, measured against n = 800)
    assert _plaquette_integral_Q2(beta, 200) == pytest.approx(th.exact_Q2(), rel=3e-4)


def test_exact_solution_limits():
    """β = 0: plaquette 0 and ⟨Q²⟩ = V⟨φ²⟩/4π² with uniform φ on a large torus; large V: χ_top →
    ⟨φ²⟩_β/4π² (one plaquette's second moment), the plaquette → I₁/I₀."""
    from scipy.integrate import quad
    from scipy.special import iv

    assert U1Gauge(4, 0.0).exact_plaquette() == 0.0
    big = U1Gauge(64, 3.0)
    phi2 = quad(lambda p: p * p * math.exp(3 * math.cos(p)), -math.pi, math.pi)[0] / (2 * math.pi * iv(0, 3))
    assert big.exact_chi_top() == pytest.approx(phi2 / (4 * math.pi**2), rel=1e-6)
    assert big.exact_plaquette() == pytest.approx(iv(1, 3) / iv(0, 3), rel=1e-9)
    assert big.exact_wilson_loop(4) == pytest.approx((iv(1, 3) / iv(0, 3)) ** 4, rel=1e-9)


def test_charge_is_an_integer_and_gauge_invariant_and_the_force_is_minus_the_gradient():
    th = U1Gauge(6, 1.7)
    gen = torch.Generator().manual_seed(4)
    x = th.random_links(32, gen) * 3  # angles outside (−π, π] too
    q = wrap(th.plaquettes(x)).sum(dim=(1, 2)) / (2 * math.pi)
    assert torch.allclose(q, torch.round(q), atol=1e-9) and float(q.abs().max()) > 0
    alpha = 5 * torch.randn(32, 6, 6, generator=gen, dtype=torch.float64)
    y = th.gauge_transform(x, alpha)
    assert not torch.allclose(x, y)
    for f in (th.action, th.plaquette, th.topological_charge, lambda z: th.wilson_loop(z, 2, 3)):
        assert torch.allclose(f(x), f(y), atol=1e-9)
    # shifting one link by 2π changes nothing
    z = x.clone()
    z[:, 1, 2, 3] += 2 * math.pi
    assert torch.equal(th.topological_charge(z), th.topological_charge(x))
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(th.action(xg).sum(), xg)
    assert torch.allclose(th.drift(x), -grad, atol=1e-12)
    # the local action's change is the action's change for links of one checkerboard set
    for mask in th.checkerboard_masks():
        prop = torch.where(mask, x + torch.randn(x.shape, generator=gen, dtype=torch.float64), x)
        d_local = ((th.local_action(prop) - th.local_action(x)) * mask).sum(dim=(1, 2, 3))
        assert torch.allclose(d_local, th.action(prop) - th.action(x), atol=1e-9)


def test_bad_input_is_refused():
    for kw in ({"L": 1, "beta": 1.0}, {"L": 4, "beta": -1.0}, {"L": 4.0, "beta": 1.0}, {"L": 4, "beta": math.nan}):
        with pytest.raises(ValueError):
            U1Gauge(**kw)
    with pytest.raises(ValueError, match="even"):
        U1Gauge(5, 1.0).checkerboard_masks()
    with pytest.raises(ValueError, match="shape"):
        U1Gauge(4, 1.0).action(torch.zeros(3, 4, 4))


def _chain_estimates(th, sampler, n_therm, n_meas, every=1):
    """Plaquette and χ_top of a batch of chains with Γ-method errors on the chain-averaged series."""
    P, Q2 = [], []
    for i in range(n_therm + n_meas):
        sampler.update()
        if i >= n_therm and (i - n_therm) % every == 0:
            P.append(th.plaquette(sampler.phi).mean().item())
            Q2.append((th.topological_charge(sampler.phi) ** 2).mean().item())
    p, q = autocorrelation(np.array(P), name="p"), autocorrelation(np.array(Q2), name="q")
    return (p.mean, p.error), (q.mean / th.n_plaquettes, q.error / th.n_plaquettes)


@pytest.mark.parametrize("kind", ["hmc", "metropolis", "mala"])
def test_samplers_reproduce_the_exact_plaquette_and_topological_susceptibility(kind):
    th = U1Gauge(8, 1.5)
    start = th.random_links(32, torch.Generator().manual_seed(1))
    s = {"hmc": lambda: lib.HMC(th, 32, eps=0.1, n_steps=10, seed=2, start=start),
         "metropolis": lambda: lib.Metropolis(th, 32, delta=2.0, seed=2, start=start),
         "mala": lambda: lib.MALA(th, 32, eps=0.05, seed=2, start=start)}[kind]()
    (p, dp), (chi, dchi) = _chain_estimates(th, s, 100, 600)
    assert abs(p - th.exact_plaquette()) < 4 * dp, (p, dp, th.exact_plaquette())
    assert abs(chi - th.exact_chi_top()) < 4 * dchi, (chi, dchi, th.exact_chi_top())
    assert dchi < 0.15 * th.exact_chi_top()  # the test has teeth: errors well below the value


def test_mala_acceptance_satisfies_detailed_balance_on_a_tiny_lattice():
    """p(x) q(y|x) α(x→y) = p(y) q(x|y) α(y→x) for random pairs, with q the Langevin proposal."""
    from lib.mcmc.mala import mala_log_acceptance

    th, eps = U1Gauge(2, 1.3), 0.2
    gen = torch.Generator().manual_seed(3)
    x = th.random_links(64, gen)
    y = x + math.sqrt(2 * eps) * torch.randn(x.shape, generator=gen, dtype=torch.float64) + eps * th.drift(x)

    def log_q(b, a):  # log q(b | a) up to a constant
        r = b - a - eps * th.drift(a)
        return -(r * r).sum(dim=(1, 2, 3)) / (4 * eps)

    la_xy = torch.clamp(mala_log_acceptance(th, x, y, eps), max=0)
    la_yx = torch.clamp(mala_log_acceptance(th, y, x, eps), max=0)
    lhs = -th.action(x) + log_q(y, x) + la_xy
    rhs = -th.action(y) + log_q(x, y) + la_yx
    assert torch.allclose(lhs, rhs, atol=1e-10)
    assert float(la_xy.exp().mean()) < 0.999  # some moves are rejected: the test is not trivially 0 = 0


def test_wrapped_normal_density_and_score():
    from lib.diffusion.gauge import wrapped_normal_logpdf, wrapped_normal_score

    x = torch.linspace(-7, 7, 301, dtype=torch.float64)
    for var in (0.05, 0.9, 1.0, 4.0, 97.0):
        lp = wrapped_normal_logpdf(x, 0.3, var)
        brute = torch.logsumexp(torch.stack([-(x - 0.3 + 2 * math.pi * k) ** 2 / (2 * var) for k in range(-60, 61)]),
                                0) - 0.5 * math.log(2 * math.pi * var)
        assert torch.allclose(lp, brute, atol=1e-12), var
        grid = torch.linspace(-math.pi, math.pi, 20001, dtype=torch.float64)
        assert float(torch.trapezoid(wrapped_normal_logpdf(grid, 0.3, var).exp(), grid)) == pytest.approx(1, abs=1e-9)
        h = 1e-5
        fd = (wrapped_normal_logpdf(x + h, 0.3, var) - wrapped_normal_logpdf(x - h, 0.3, var)) / (2 * h)
        assert torch.allclose(wrapped_normal_score(x, 0.3, var), fd, atol=1e-6)


def test_reverse_sde_with_the_exact_wrapped_score_samples_the_wrapped_target():
    """Independent wrapped-normal angles WN(μ, v₀) diffuse to WN(μ, v₀ + Ξ(t)) exactly; the reverse SDE
    in the covering space driven by that score, wrapped at the end, must give E cos(x − μ) = e^{−v₀/2}."""
    from lib.diffusion import euler_maruyama
    from lib.diffusion.gauge import TorusVESDE, wrapped_normal_score

    sde, mu, v0 = TorusVESDE(25.0), 1.0, 0.4

    def score(x, t):
        return wrapped_normal_score(x.double(), mu, v0 + sde.Xi(t.double())[:, None]).to(x.dtype)

    x, _ = euler_maruyama(score, sde, (4000, 1), n_steps=400, eps=1e-3, generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64, progress_bar=False)
    c = torch.cos(x[:, 0] - mu)
    want = math.exp(-v0 / 2)
    err = float(c.std()) / math.sqrt(len(c))
    assert abs(float(c.mean()) - want) < 4 * err + 0.01, (float(c.mean()), want, err)  # + O(Δt) of 400 steps
    s = torch.sin(x[:, 0] - mu)
    assert abs(float(s.mean())) < 4 * float(s.std()) / math.sqrt(len(s))


@pytest.mark.parametrize("kind", ["u1-plaquette", "u1-gaussian-plaquette"])
def test_u1_score_models_are_gauge_invariant_periodic_and_translation_equivariant(kind):
    from lib.diffusion import build_score_model
    from lib.diffusion.gauge import GaussianPlaquetteScore, PlaquetteScoreNet, TorusVESDE

    torch.manual_seed(0)
    net = (PlaquetteScoreNet(TorusVESDE(25.0), channels=(8, 8), odd=True) if kind == "u1-plaquette"
           else GaussianPlaquetteScore(TorusVESDE(25.0), beta=1.7)).double()
    th = U1Gauge(6, 1.0)
    gen = torch.Generator().manual_seed(1)
    x = th.random_links(4, gen)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    s = net(x, t)
    alpha = torch.randn(4, 6, 6, generator=gen, dtype=torch.float64)
    assert torch.allclose(net(th.gauge_transform(x, alpha), t), s, atol=1e-10)
    k = torch.randint(-2, 3, x.shape, generator=gen).double()
    assert torch.allclose(net(x + 2 * math.pi * k, t), s, atol=1e-10)
    assert torch.allclose(net(torch.roll(x, (1, 2), (2, 3)), t), torch.roll(s, (1, 2), (2, 3)), atol=1e-10)
    assert torch.allclose(net(-x, t), -s, atol=1e-10)
    # the score has no component along the holonomies (constant shifts of all links of one direction)
    assert torch.allclose(s.sum(dim=(2, 3)), torch.zeros(4, 2, dtype=torch.float64), atol=1e-10)
    again = build_score_model(net.config).double()
    again.load_state_dict(net.state_dict())
    assert torch.equal(again(x, t), s)


def test_gaussian_plaquette_score_is_the_wilson_force_at_zero_noise():
    from lib.diffusion.gauge import GaussianPlaquetteScore, TorusVESDE

    th = U1Gauge(6, 2.3)
    net = GaussianPlaquetteScore(TorusVESDE(25.0), beta=2.3).double()
    x = th.random_links(3, torch.Generator().manual_seed(2))
    s = net(x, torch.full((3,), 1e-12, dtype=torch.float64))
    assert torch.allclose(s, th.drift(x), atol=1e-8)


def test_u1_ensembles_are_written_and_checked_with_their_link_shape(tmp_path):
    import json

    from lib.storage import load_ensemble

    th = U1Gauge(4, 1.0)
    ens = lib.cached_hmc_ensemble(th, 8, seed=1, n_burnin=2, n_spacing=1, eps=0.1, n_steps=5, cache_dir=tmp_path,
                                  progress_bar=False, verbose=False)
    assert ens.configs.shape == (8, 2, 4, 4) and ens.metadata["theory"] == {"name": "u1", "L": 4, "beta": 1.0}
    bad = dict(ens.metadata, theory={"name": "u1", "L": 5, "beta": 1.0})
    bad.pop("configs_sha256", None)
    np.savez(tmp_path / "bad.npz", configs=ens.configs, metadata=np.array(json.dumps(bad)))
    with pytest.raises(ValueError, match="links of shape"):
        load_ensemble(tmp_path / "bad.npz")


@pytest.mark.slow
def test_path_weighted_chain_is_exact_with_a_poor_score():
    """DM-MC with exact path-space weights on the torus (wrapped-normal prior, forward kernels): with
    the analytic Gaussian-plaquette score, which is wrong at β = 1 (its proposals' plaquette is
    many standard errors off), the independence chain reproduces the exact plaquette and χ_top."""
    from lib.diffusion import PathSettings, dm_path_proposals
    from lib.diffusion.gauge import GaussianPlaquetteScore, TorusVESDE
    from lib.mcmc import independence_chain

    th = U1Gauge(8, 1.0)
    model = GaussianPlaquetteScore(TorusVESDE(25.0), beta=1.0).double()
    kernels = torch.full(th.lattice_shape, 1e3, dtype=torch.float64)  # forward-variance reverse kernels
    x, log_w = dm_path_proposals(model, 16384, 5, PathSettings(n_steps=50), theory=th, spectrum=kernels,
                                 batch_size=4096, progress_bar=False)
    chain = independence_chain(log_w.numpy(), 7)
    assert chain.acceptance * len(log_w) > 200  # enough moves for the errors to mean something
    xc = x[torch.as_tensor(chain.index)]
    p = autocorrelation(th.plaquette(xc).numpy(), name="plaquette")
    q = autocorrelation((th.topological_charge(xc) ** 2).numpy() / th.n_plaquettes, name="chi_top")
    assert abs(p.mean - th.exact_plaquette()) < 4 * p.error, (p.mean, p.error)
    assert abs(q.mean - th.exact_chi_top()) < 4 * q.error, (q.mean, q.error)
    assert q.error < 0.25 * th.exact_chi_top()
    raw = th.plaquette(x).numpy()
    assert abs(raw.mean() - th.exact_plaquette()) > 4 * p.error  # the weights do the work


@pytest.mark.parametrize("L, beta", [(2, 1.3), (8, 3.0)])
def test_exact_sampler_reproduces_the_exact_solution(L, beta):
    """Rejection-sampled plaquettes, links rebuilt with d^T Δ⁻¹: independent draws from e^{−S}."""
    from scipy.special import iv

    from lib.theories.u1 import von_mises

    a = von_mises(beta, (100000,), torch.Generator().manual_seed(0)).cos().numpy()
    assert abs(a.mean() - iv(1, beta) / iv(0, beta)) < 4 * a.std() / math.sqrt(len(a))
    th = U1Gauge(L, beta)
    x = th.exact_sample(20000, torch.Generator().manual_seed(1))
    assert x.shape == (20000, 2, L, L) and float(x.abs().max()) <= math.pi
    for obs, want in ((th.plaquette(x), th.exact_plaquette()),
                      (th.wilson_loop(x, 1, 2), th.exact_wilson_loop(2)),
                      (th.topological_charge(x) ** 2 / th.n_plaquettes, th.exact_chi_top())):
        o = obs.numpy()
        assert abs(o.mean() - want) < 4 * o.std() / math.sqrt(len(o)), (o.mean(), want)
    assert torch.equal(th.exact_sample(5, torch.Generator().manual_seed(3)),
                       th.exact_sample(5, torch.Generator().manual_seed(3)))


def _cli(capsys, *args):
    """``python -m lib ARGS`` in this process (lib.cli.main): status, stdout and stderr."""
    from types import SimpleNamespace

    from lib.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)


def test_command_line_runs_u1_from_hmc_to_an_exact_chain(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DMSQ_CACHE", str(tmp_path / "cache"))
    run = lambda *a: _cli(capsys, *a)  # noqa: E731
    r = run("hmc", "--theory", "u1", "--L", "8", "--beta", "1.5", "--n-configs", "128", "--seed", "2", "--out",
            "tr.npz", "--n-burnin", "40", "--n-spacing", "4", "--eps", "0.1", "--n-steps", "10", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run("observables", "tr.npz", "--json")
    out = json.loads(r.stdout)
    th = U1Gauge(8, 1.5)
    assert out["exact"]["chi_top"] == pytest.approx(th.exact_chi_top())
    assert abs(out["plaquette"][0] - th.exact_plaquette()) < 4 * out["plaquette"][1]
    assert {"Q", "Q2", "chi_top"} <= set(out) and out["sampler"] == "hmc"
    r = run("train", "tr.npz", "--out", "m.pt", "--seed", "0", "--epochs", "2", "--channels", "4,4,4,4",
            "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run("dmmc", "m.pt", "--n", "64", "--seed", "3", "--out", "c.npz", "--steps", "10", "--no-progress")
    assert r.returncode == 0 and "tau_int(Q)" in r.stderr, r.stderr
    assert json.loads(run("observables", "c.npz", "--json").stdout)["sampler"] == "dm-mc"
    # bad combinations end in one line, with status 2
    for args, match in ((("hmc", "--theory", "u1", "--L", "8", "--beta", "1", "--kappa", "0.2"), "--kappa"),
                        (("hmc", "--theory", "u1", "--L", "8"), "--beta"),
                        (("hmc", "--L", "8", "--kappa", "0.2", "--lam", "0.02", "--beta", "1"), "--beta"),
                        (("ensemble", "--theory", "u1", "--L", "8", "--beta", "1", "--algorithm", "fa-hmc"), "fa-hmc"),
                        (("ensemble", "--theory", "u1", "--L", "7", "--beta", "1", "--algorithm", "metropolis"),
                         "even"),
                        (("train", "tr.npz", "--out", "z.pt", "--seed", "0", "--zero-mode-head"), "zero-mode-head"),
                        (("dmmc", "m.pt", "--n", "8", "--seed", "1", "--out", "e.npz", "--data", "tr.npz"), "forward")):
        extra = () if args[0] not in ("hmc", "ensemble") else ("--n-configs", "4", "--seed", "1", "--out", "x.npz")
        r = run(*args, *extra)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and match in lines[0], (args, r.stderr)


def test_conditioned_score_rescales_and_exact_ensembles_are_cached(tmp_path):
    from lib.diffusion.gauge import ConditionedScore, GaussianPlaquetteScore, TorusVESDE
    from lib.theories.u1 import cached_exact_ensemble

    base = GaussianPlaquetteScore(TorusVESDE(25.0), beta=2.0).double()
    x = U1Gauge(4, 2.0).random_links(3, torch.Generator().manual_seed(0))
    t = torch.full((3,), 1e-9, dtype=torch.float64)
    moved = ConditionedScore(base, 2.0, 5.0)
    assert torch.allclose(moved(x, t), U1Gauge(4, 5.0).drift(x), atol=1e-6)  # exact at t → 0
    with pytest.raises(ValueError):
        ConditionedScore(base, 0.0, 1.0)
    th = U1Gauge(4, 2.0)
    a = cached_exact_ensemble(th, 16, seed=3, cache_dir=tmp_path, verbose=False)
    b = cached_exact_ensemble(th, 16, seed=3, cache_dir=tmp_path, verbose=False)
    assert a.metadata["sampler"] == "exact" and np.array_equal(a.configs, b.configs)
    assert len(list(tmp_path.glob("u1-exact-*.npz"))) == 1


def test_charge_autocorrelation_reports_frozen_chains():
    from lib.analysis.stats import charge_autocorrelation

    frozen = np.zeros((50, 3))
    frozen[:, 1] = 1
    r = charge_autocorrelation(frozen)
    assert r["frozen"] and r["tau"] == math.inf and r["changes"] == 0 and r["n"] == 50
    rng = np.random.default_rng(0)
    moving = rng.integers(-2, 3, size=(400, 3))  # independent draws: τ_int = 1/2
    r = charge_autocorrelation(moving)
    assert not r["frozen"] and abs(r["tau"] - 0.5) < 4 * r["error"] + 0.05
