"""HMC and Metropolis on lattice φ⁴: integrator properties, exactness against the free field and an
exactly integrable interacting lattice, and bit-for-bit resumption."""
import math

import numpy as np
import pytest
import torch

import lib
from lib import HMC, Metropolis, Phi4, hamiltonian, hmc_chain, hmc_ensemble, leapfrog
from lib import observables as obs
from lib.analysis.stats import autocorrelation, jackknife

torch.set_num_threads(1)

from helpers import N_SIGMA, assert_stat  # noqa: E402


def randn(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------------------- leapfrog
@pytest.mark.parametrize("theory", [Phi4(L=6, kappa=0.3, lam=0.5), Phi4(L=4, kappa=0.15, lam=0.02, d=3),
                                    lib.ToyModel(mu2=-1.0, g=0.4)], ids=["2d", "3d", "toy"])
def test_leapfrog_is_reversible(theory):
    phi0 = randn((3, *theory.lattice_shape), 1)
    p0 = randn((3, *theory.lattice_shape), 2)
    phi1, p1 = leapfrog(theory, phi0, p0, 0.05, 40)
    assert not torch.allclose(phi1, phi0)  # it moved
    phi2, p2 = leapfrog(theory, phi1, -p1, 0.05, 40)
    torch.testing.assert_close(phi2, phi0, rtol=0, atol=1e-10)
    torch.testing.assert_close(-p2, p0, rtol=0, atol=1e-10)
    # inputs untouched
    assert torch.equal(phi0, randn((3, *theory.lattice_shape), 1)) and torch.equal(p0, randn((3, *theory.lattice_shape), 2))


def test_leapfrog_preserves_phase_space_volume():
    """det ∂(φ', π')/∂(φ, π) = 1 (needed for HMC detailed balance)."""
    th = Phi4(L=3, kappa=0.3, lam=0.4, d=1)
    V = th.volume

    def step(z):
        phi, p = leapfrog(th, z[:V].reshape(1, V), z[V:].reshape(1, V), 0.2, 7)
        return torch.cat([phi.reshape(-1), p.reshape(-1)])

    z = randn((2 * V,), 5)
    h = 1e-5  # central differences (leapfrog updates in place, so no autograd through it)
    J = torch.stack([(step(z + h * e) - step(z - h * e)) / (2 * h) for e in torch.eye(2 * V, dtype=torch.float64)], 1)
    assert abs(float(torch.linalg.det(J)) - 1) < 1e-7
    assert not torch.allclose(J, torch.eye(2 * V, dtype=torch.float64))


def test_leapfrog_conserves_the_shadow_hamiltonian_of_the_oscillator():
    """0D Gaussian S = φ²/2: one leapfrog step is a linear map that conserves exactly
    H̃ = π²/2 + (1 − ε²/4) φ²/2, so H itself oscillates with ΔH = ε²(φ'² − φ²)/8 and never drifts."""
    m = lib.ToyModel(mu2=1.0, g=0.0)
    phi0, p0 = randn((500, 1), 3), randn((500, 1), 4)
    eps = 0.3

    def shadow(phi, p):
        return 0.5 * (p**2 + (1 - eps**2 / 4) * phi**2)[:, 0]

    for n in (1, 7, 50, 300):
        phi, p = leapfrog(m, phi0, p0, eps, n)
        torch.testing.assert_close(shadow(phi, p), shadow(phi0, p0), rtol=1e-12, atol=1e-12)
        dH = hamiltonian(m, phi, p) - hamiltonian(m, phi0, p0)
        torch.testing.assert_close(dH, eps**2 / 8 * (phi**2 - phi0**2)[:, 0], rtol=1e-10, atol=1e-12)


@pytest.fixture(scope="module")
def thermalised_phi4():
    th = Phi4(L=8, kappa=0.2, lam=0.022)
    s = HMC(th, n_chains=256, eps=0.1, n_steps=10, seed=1)
    s.run(30, progress_bar=False)
    return th, s.phi.clone()


def test_energy_violation_scales_as_eps_squared(thermalised_phi4):
    """At fixed trajectory length τ = 1, mean |ΔH| ∝ ε² (slope 2 of log|ΔH| vs log ε)."""
    th, phi = thermalised_phi4
    p = randn(phi.shape, 7)
    h0 = hamiltonian(th, phi, p)
    eps = np.array([0.2, 0.1, 0.05])
    mean_abs = []
    for e in eps:
        phi1, p1 = leapfrog(th, phi, p, float(e), int(round(1 / e)))
        mean_abs.append(float((hamiltonian(th, phi1, p1) - h0).abs().mean()))
    slope = np.polyfit(np.log(eps), np.log(mean_abs), 1)[0]
    assert abs(slope - 2) < 0.3, (slope, mean_abs)


def test_creutz_equality_and_positive_mean_dH(thermalised_phi4):
    """⟨e^{−ΔH}⟩ = 1 exactly in equilibrium (area preservation + reversibility), while ⟨ΔH⟩ > 0."""
    th, phi = thermalised_phi4
    s = HMC(th, n_chains=phi.shape[0], eps=0.25, n_steps=4, seed=8, start=phi)
    s.run(60, progress_bar=False)
    x = np.array(s.stats.mean_exp_minus_dH)
    a = autocorrelation(x)
    assert_stat(a.mean, a.error, 1.0, "<exp(-dH)>")
    dh = np.array(s.stats.mean_dH)
    assert dh.mean() > 5 * dh.std(ddof=1) / math.sqrt(len(dh)) > 0
    assert 0.5 < s.acceptance_rate < 0.99


def test_diverging_trajectories_are_rejected():
    th = Phi4(L=4, kappa=0.2, lam=1.0)
    start = randn((8, 4, 4), 3)
    s = HMC(th, n_chains=8, eps=3.0, n_steps=30, seed=0, start=start)
    with np.errstate(all="ignore"):
        s.run(3, progress_bar=False)
    assert torch.isfinite(s.phi).all()
    assert s.acceptance_rate == 0.0
    assert torch.equal(s.phi, start)


# ---------------------------------------------------------------------------- free field exactness
def chain_jackknife_chi(m_series, volume):
    """χ₂ with a jackknife over independent chains. m_series: (n_meas, n_chains)."""
    return jackknife(lambda d: volume * (np.mean(d**2) - np.mean(d) ** 2), np.asarray(m_series).T)


def check_two_point(configs, theory):
    """Compare obs.two_point of all configurations with the exact propagator within a jackknife
    error over independent chains. configs: (n_meas, n_chains, *lattice)."""
    n_meas, n_chains = configs.shape[:2]
    lat = configs.shape[2:]
    G_lib = obs.two_point(configs.reshape(-1, *lat))
    # per-chain ingredients of the same estimator
    gp = np.stack([obs.momentum_two_point(configs[:, c]) for c in range(n_chains)])  # (chains, *lat)
    mc = configs.mean(axis=tuple(range(2, configs.ndim))).mean(axis=0)  # (chains,)
    data = np.concatenate([gp.reshape(n_chains, -1), mc[:, None]], axis=1)

    def g_of(d):
        return np.fft.ifftn(d[:, :-1].mean(0).reshape(lat)).real - d[:, -1].mean() ** 2

    np.testing.assert_allclose(g_of(data), G_lib, rtol=1e-10, atol=1e-12)
    exact = theory.free_propagator().numpy()
    worst = 0.0
    for x in np.ndindex(*lat):
        est, err = jackknife(lambda d, x=x: g_of(d)[x], data)
        assert err > 0
        worst = max(worst, abs(est - exact[x]) / err)
    assert worst < N_SIGMA + 0.5, f"two-point function off by {worst:.1f} sigma somewhere"
    return G_lib


@pytest.fixture(scope="module")
def free_field():
    return Phi4(L=8, kappa=0.2, lam=0.0)


def test_hmc_free_field_susceptibility_and_propagator(free_field):
    th = free_field
    s = HMC(th, n_chains=128, eps=0.1, n_steps=10, seed=12)
    s.run(30, progress_bar=False)
    configs = s.run(200, measure=lambda p: p.clone(), progress_bar=False)
    assert configs.shape == (200, 128, 8, 8)
    m = configs.mean(axis=(2, 3))
    chi, err = chain_jackknife_chi(m, th.volume)
    assert_stat(chi, err, th.free_susceptibility(), "HMC free chi2")
    # the library's estimator on the pooled ensemble gives the same value
    assert obs.susceptibility(configs.reshape(-1, 8, 8), n_blocks=128)[0] == pytest.approx(chi, rel=1e-10)
    G = check_two_point(configs, th)
    assert G[0, 0] == pytest.approx(th.free_site_variance(), rel=0.05)


def test_metropolis_free_field_susceptibility_and_propagator(free_field):
    th = free_field
    s = Metropolis(th, n_chains=128, delta=1.5, seed=13)
    s.run(50, progress_bar=False)
    configs = s.run(300, measure=lambda p: p.clone(), progress_bar=False)
    assert 0.3 < s.acceptance_rate < 0.9
    m = configs.mean(axis=(2, 3))
    chi, err = chain_jackknife_chi(m, th.volume)
    assert_stat(chi, err, th.free_susceptibility(), "Metropolis free chi2")
    check_two_point(configs, th)


def test_metropolis_needs_even_lattice():
    with pytest.raises(ValueError):
        Metropolis(Phi4(L=5, kappa=0.2, lam=0.02))
    with pytest.raises(ValueError):
        Metropolis(Phi4(L=4, kappa=0.2, lam=0.02), delta=0.0)


# ---------------------------------------------------------------------------- interacting, exact
@pytest.fixture(scope="module")
def two_site_exact():
    """d = 1, L = 2: S = −4κφ₀φ₁ + Σ_i[(1−2λ)φ_i² + λφ_i⁴] (each bond counted twice on the
    periodic two-site ring) — a 2D integral done on a grid."""
    th = Phi4(L=2, kappa=0.4, lam=0.1, d=1)
    x = np.linspace(-6, 6, 1201)
    a, b = np.meshgrid(x, x, indexing="ij")
    s = -4 * th.kappa * a * b + (1 - 2 * th.lam) * (a**2 + b**2) + th.lam * (a**4 + b**4)
    # the library's action agrees with this formula
    test = torch.tensor([[0.3, -1.2], [2.0, 1.5]], dtype=torch.float64)
    t0, t1 = test[:, 0].numpy(), test[:, 1].numpy()
    ref = -4 * th.kappa * t0 * t1 + (1 - 2 * th.lam) * (t0**2 + t1**2) + th.lam * (t0**4 + t1**4)
    np.testing.assert_allclose(th.action(test).numpy(), ref, rtol=1e-13)
    w = np.exp(-(s - s.min()))
    w /= w.sum()
    M = (a + b) / 2
    exact = {"phi2": float((w * a**2).sum()), "phi4": float((w * a**4).sum()), "M2": float((w * M**2).sum()),
             "absM": float((w * np.abs(M)).sum())}
    return th, exact


def _two_site_measure(phi):
    M = phi.mean(1)
    return torch.stack([(phi**2).mean(1), (phi**4).mean(1), M**2, M.abs()], dim=1)


def _compare_two_site(values, exact, what):
    per_chain = values.mean(axis=0)  # (chains, 4)
    for i, key in enumerate(("phi2", "phi4", "M2", "absM")):
        x = per_chain[:, i]
        assert_stat(x.mean(), x.std(ddof=1) / math.sqrt(len(x)), exact[key], f"{what} {key}")


def test_hmc_two_site_interacting_exact(two_site_exact):
    th, exact = two_site_exact
    s = HMC(th, n_chains=1000, eps=0.2, n_steps=6, seed=14)
    s.run(30, progress_bar=False)
    _compare_two_site(s.run(200, measure=_two_site_measure, progress_bar=False), exact, "HMC 2-site")


def test_metropolis_two_site_interacting_exact(two_site_exact):
    th, exact = two_site_exact
    s = Metropolis(th, n_chains=1000, delta=1.5, seed=15)
    s.run(50, progress_bar=False)
    _compare_two_site(s.run(300, measure=_two_site_measure, progress_bar=False), exact, "Metropolis 2-site")


def test_hmc_and_metropolis_agree_on_interacting_2d_lattice():
    """L = 4, d = 2, λ = 0.022 near the transition: two independent samplers, the same χ₂ and ⟨φ²⟩."""
    th = Phi4(L=4, kappa=0.26, lam=0.022)
    res = {}
    h = HMC(th, n_chains=128, eps=0.1, n_steps=10, seed=16)
    h.run(50, progress_bar=False)
    res["hmc"] = h.run(300, measure=lambda p: torch.stack([p.mean((1, 2)), (p**2).mean((1, 2))], 1), progress_bar=False)
    m = Metropolis(th, n_chains=128, delta=1.2, seed=17)
    m.run(100, progress_bar=False)
    res["metro"] = m.run(600, measure=lambda p: torch.stack([p.mean((1, 2)), (p**2).mean((1, 2))], 1), progress_bar=False)
    est = {}
    for k, v in res.items():
        est[k] = {"chi": chain_jackknife_chi(v[:, :, 0], th.volume),
                  "phi2": jackknife(np.mean, v[:, :, 1].mean(0))}
    for q in ("chi", "phi2"):
        (a, ea), (b, eb) = est["hmc"][q], est["metro"][q]
        assert abs(a - b) < N_SIGMA * math.hypot(ea, eb), (q, est)


# ---------------------------------------------------------------------------- resumption
def test_hmc_save_load_resume_is_bitwise(tmp_path):
    th = Phi4(L=4, kappa=0.25, lam=0.02)
    ref = HMC(th, n_chains=3, eps=0.1, n_steps=5, seed=21)
    ref.run(20, progress_bar=False)

    a = HMC(th, n_chains=3, eps=0.1, n_steps=5, seed=21)
    a.run(10, progress_bar=False)
    a.save(tmp_path / "state.pt")
    del a
    b = HMC.load(tmp_path / "state.pt", th)
    assert b.n_traj == 10
    b.run(10, progress_bar=False)
    assert torch.equal(b.phi, ref.phi)
    assert torch.equal(b.n_accepted, ref.n_accepted)
    assert b.stats.as_dict() == ref.stats.as_dict()
    assert b.n_traj == 20 and b.settings() == ref.settings()
    with pytest.raises(ValueError):
        HMC.load(tmp_path / "state.pt", Phi4(L=4, kappa=0.26, lam=0.02))


@pytest.mark.parametrize("make", [
    lambda th: Metropolis(th, n_chains=3, delta=1.0, seed=23),
    lambda th: lib.Langevin(th, n_chains=3, dtau=0.01, seed=24, start="hot"),
], ids=["metropolis", "langevin"])
def test_other_samplers_resume_bitwise(tmp_path, make):
    th = Phi4(L=4, kappa=0.25, lam=0.02)
    ref = make(th)
    ref.run(20, progress_bar=False)
    a = make(th)
    a.run(10, progress_bar=False)
    a.save(tmp_path / "s.pt")
    b = type(a).load(tmp_path / "s.pt", th)
    b.run(10, progress_bar=False)
    assert torch.equal(b.phi, ref.phi) and b.n_updates == 20 and b.settings() == ref.settings()
    other = Metropolis if isinstance(a, lib.Langevin) else lib.Langevin
    with pytest.raises(ValueError):  # a checkpoint of another sampler
        other.load(tmp_path / "s.pt", th)
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(ValueError):
        type(a).load(tmp_path / "junk.pt", th)


def test_hmc_run_with_checkpoint_writes_resumable_state(tmp_path):
    th = Phi4(L=4, kappa=0.25, lam=0.02)
    a = HMC(th, n_chains=2, eps=0.1, n_steps=5, seed=22)
    a.run(7, progress_bar=False, checkpoint=tmp_path / "c.pt", checkpoint_every=3)
    b = HMC.load(tmp_path / "c.pt", th)
    assert b.n_traj == 7 and torch.equal(b.phi, a.phi)
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporaries


def test_hmc_chain_shapes_and_determinism():
    th = Phi4(L=4, kappa=0.2, lam=0.02)
    v1, s1 = hmc_chain(th, 5, seed=3, measure=obs.magnetisation, n_chains=2, eps=0.1, n_steps=5, progress_bar=False)
    v2, _ = hmc_chain(th, 5, seed=3, measure=obs.magnetisation, n_chains=2, eps=0.1, n_steps=5, progress_bar=False)
    v3, _ = hmc_chain(th, 5, seed=4, measure=obs.magnetisation, n_chains=2, eps=0.1, n_steps=5, progress_bar=False)
    assert v1.shape == (5, 2)
    np.testing.assert_array_equal(v1, v2)
    assert not np.array_equal(v1, v3)


ENS_KW = dict(n_burnin=40, n_spacing=20, eps=0.1, n_steps=4, batch_size=3, progress_bar=False)


class Interrupt(Exception):
    pass


def test_hmc_ensemble_resumes_after_interruption(tmp_path, monkeypatch):
    th = Phi4(L=4, kappa=0.25, lam=0.02)
    ref, info_ref = hmc_ensemble(th, 5, seed=30, **ENS_KW)
    assert ref.shape == (5, 4, 4)
    assert info_ref["protocol"] == "independent-chains" and 0 < info_ref["acceptance"] <= 1

    # interrupt in the middle of batch 1, after its checkpoint at trajectory 50
    original = HMC.update
    calls = {"n": 0}

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 60 + 55:
            raise Interrupt
        return original(self)

    monkeypatch.setattr(HMC, "update", flaky)
    with pytest.raises(Interrupt):
        hmc_ensemble(th, 5, seed=30, checkpoint_dir=tmp_path, **ENS_KW)
    monkeypatch.setattr(HMC, "update", original)
    first, second = sorted(tmp_path.glob("chains*.pt"))
    assert HMC.load(first, th).n_traj == 60
    assert HMC.load(second, th).n_traj == 50

    counted = {"n": 0}

    def counting(self):
        counted["n"] += 1
        return original(self)

    monkeypatch.setattr(HMC, "update", counting)
    out, info = hmc_ensemble(th, 5, seed=30, checkpoint_dir=tmp_path, **ENS_KW)
    assert counted["n"] == 10  # only the missing trajectories of batch 1
    assert torch.equal(out, ref)
    assert info["acceptance"] == pytest.approx(info_ref["acceptance"], rel=1e-12)

    # a complete run is not recomputed at all
    counted["n"] = 0
    again, _ = hmc_ensemble(th, 5, seed=30, checkpoint_dir=tmp_path, **ENS_KW)
    assert counted["n"] == 0 and torch.equal(again, ref)


def test_hmc_ensemble_refuses_foreign_checkpoints(tmp_path):
    th = Phi4(L=4, kappa=0.25, lam=0.02)
    hmc_ensemble(th, 3, seed=30, checkpoint_dir=tmp_path, **ENS_KW)
    for change in (dict(eps=0.05), dict(n_steps=5), dict(seed=31)):
        kw = {**ENS_KW, "seed": 30, **change}
        with pytest.raises(ValueError):
            hmc_ensemble(th, 3, checkpoint_dir=tmp_path, **kw)
    with pytest.raises(ValueError):  # another theory
        hmc_ensemble(Phi4(L=4, kappa=0.26, lam=0.02), 3, seed=30, checkpoint_dir=tmp_path, **ENS_KW)
    with pytest.raises(ValueError):  # the checkpoint ran further than this request asks for
        hmc_ensemble(th, 3, seed=30, checkpoint_dir=tmp_path, **{**ENS_KW, "n_burnin": 10})


def test_hmc_ensemble_configs_are_independent_chains():
    """Different batches use different seeds: no two configurations coincide, and the seed matters."""
    th = Phi4(L=4, kappa=0.2, lam=0.02)
    a, _ = hmc_ensemble(th, 6, seed=1, **ENS_KW)
    b, _ = hmc_ensemble(th, 6, seed=2, **ENS_KW)
    flat = a.reshape(6, -1)
    assert torch.cdist(flat, flat).add(torch.eye(6, dtype=flat.dtype)).min() > 0
    assert not torch.equal(a, b)


def test_fused_leapfrog_agrees_with_the_eager_one_and_is_reversible():
    """The compiled φ⁴ leapfrog must be the same map as the eager one (to float64 round-off) and,
    like it, reversible: integrating back with −π returns to the start."""
    from lib.mcmc.hmc import fused_leapfrog

    th = Phi4(L=6, kappa=0.27, lam=0.022)
    g = torch.Generator().manual_seed(0)
    phi = torch.randn((5, 6, 6), generator=g, dtype=torch.float64)
    p = torch.randn((5, 6, 6), generator=g, dtype=torch.float64)
    fused = fused_leapfrog(th)
    a_phi, a_p = leapfrog(th, phi, p, 0.1, 10)
    b_phi, b_p = fused(th, phi, p, 0.1, 10)
    assert torch.allclose(a_phi, b_phi, rtol=0, atol=1e-12) and torch.allclose(a_p, b_p, rtol=0, atol=1e-12)
    back_phi, back_p = fused(th, b_phi, -b_p, 0.1, 10)
    assert torch.allclose(back_phi, phi, rtol=0, atol=1e-12) and torch.allclose(-back_p, p, rtol=0, atol=1e-12)
    # a whole ensemble: the same Metropolis decisions, the same configurations to round-off
    kw = dict(n_burnin=5, n_spacing=3, eps=0.1, n_steps=10, batch_size=4, progress_bar=False)
    eager, info_e = hmc_ensemble(th, 8, seed=3, **kw)
    fast, info_f = hmc_ensemble(th, 8, seed=3, fused=True, **kw)
    assert torch.allclose(eager, fast, rtol=0, atol=1e-10) and info_e["acceptance"] == info_f["acceptance"]


def test_independence_metropolis_is_exact_for_a_wrong_proposal_and_its_acceptance_is_known():
    """Target N(0, 1), proposals N(0.3, 1.5²): the chain's mean and variance must be the target's
    (Γ-method errors), and the acceptance of independent proposals has the closed form
    E_{φ~p, φ'~q} min(1, w(φ')/w(φ)) — here checked against a direct Monte Carlo of that formula."""
    from lib.analysis.stats import autocorrelation
    from lib.mcmc import independence_chain

    rng = np.random.default_rng(0)
    n = 40000
    x = 0.3 + 1.5 * rng.normal(size=n)
    log_p = -0.5 * x ** 2
    log_q = -0.5 * ((x - 0.3) / 1.5) ** 2
    chain = independence_chain(log_p - log_q, seed=1)
    xs = chain.take(x)
    for series, exact, what in ((xs, 0.0, "mean"), (xs ** 2, 1.0, "second moment")):
        ac = autocorrelation(series)
        assert abs(ac.mean - exact) < 4 * ac.error, (what, ac.mean, ac.error)
    # acceptance: average of min(1, e^{w(φ') − w(φ)}) over φ ~ p, φ' ~ q
    y = rng.normal(size=200000)
    wp = -0.5 * y ** 2 - (-0.5 * ((y - 0.3) / 1.5) ** 2)
    yq = 0.3 + 1.5 * rng.normal(size=200000)
    wq = -0.5 * yq ** 2 - (-0.5 * ((yq - 0.3) / 1.5) ** 2)
    expected = np.minimum(1, np.exp(wq - wp)).mean()
    # binomial error of n steps, inflated for the correlation of successive acceptances, plus the
    # Monte Carlo error of the expectation
    assert abs(chain.acceptance - expected) < 6 * np.sqrt(expected * (1 - expected) / n) + 0.003
    with pytest.raises(ValueError, match="finite"):
        independence_chain([0.0, -np.inf], seed=0)
