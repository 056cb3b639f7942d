"""lib.mcmc.cluster (embedded Swendsen–Wang for φ⁴) and lib.mcmc.fourier_hmc (Fourier-accelerated HMC):
both leave e^{−S} invariant, checked against exact enumeration, the exact free field and plain HMC."""
import itertools
import math

import numpy as np
import pytest
import torch
from helpers import assert_stat
from scipy.stats import chi2 as chi2_dist

import lib
from lib.analysis.stats import jackknife
from lib.mcmc.chain import BatchStream
from lib.mcmc.cluster import ClusterHMC, bond_probabilities, cluster_labels, swendsen_wang
from lib.mcmc.fourier_hmc import FourierHMC, fourier_masses
from lib.mcmc.hmc import HMC, leapfrog


def _sign_weights(mag: torch.Tensor, kappa: float):
    """Exact distribution of the signs of a 3×3 field with fixed magnitudes: all 512 states and
    their probabilities p(ε) ∝ exp(2κ Σ_{x,μ} |φ_x||φ_{x+μ}| ε_x ε_{x+μ})."""
    states = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=9)), dtype=torch.float64).reshape(-1, 3, 3)
    phi = states * mag
    hop = sum((phi * torch.roll(phi, -1, dims=mu)).sum(dim=(1, 2)) for mu in (1, 2))
    logw = 2 * kappa * hop
    p = torch.exp(logw - logw.max())
    return states, p / p.sum()


def _exact_sign_samples(kappa: float, n: int):
    """``n`` exact samples of a 3×3 field with fixed random magnitudes in [0.5, 1.5) and signs from
    the exact embedded-Ising law, and that law over the 512 sign states."""
    g = torch.Generator().manual_seed(0)
    mag = 0.5 + torch.rand((3, 3), generator=g, dtype=torch.float64)
    states, p = _sign_weights(mag, kappa)
    idx = torch.multinomial(p, n, replacement=True, generator=g)
    return states[idx] * mag, p


def _chi2_pvalue(configs: torch.Tensor, p: torch.Tensor) -> float:
    """p-value of Pearson's χ² test of the sign states of ``configs`` (n, 3, 3) against the law
    ``p`` over the 512 states, states expected fewer than 5 times pooled into one bin."""
    n = configs.shape[0]
    code = ((configs > 0).reshape(n, 9).long() * (2 ** torch.arange(8, -1, -1))).sum(1)  # +1 ↦ bit 1
    counts = torch.bincount(code, minlength=512).double()
    expected = p * n
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    stat = float(((obs - exp) ** 2 / exp).sum())
    return float(chi2_dist.sf(stat, len(obs) - 1))


def test_swendsen_wang_keeps_the_exact_sign_distribution_at_fixed_magnitudes():
    """Start from exact samples of the embedded Ising model, make one cluster update: the 512-state
    histogram must still follow the exact law (χ² test), and the update must move."""
    kappa, n = 0.3, 200_000
    phi, p = _exact_sign_samples(kappa, n)
    new = swendsen_wang(phi, kappa, BatchStream(1, n, "cpu"))
    assert torch.equal(new.abs(), phi.abs())  # magnitudes untouched
    assert _chi2_pvalue(phi, p) > 1e-3  # the test's own input
    assert _chi2_pvalue(new, p) > 1e-3
    assert float((new != phi).any(dim=(1, 2)).double().mean()) > 0.3


def test_a_wrong_bond_probability_fails_the_same_test():
    """The χ² test above has power: bonds with probability 1 − e^{−2κφφ} (half the exponent) break it."""
    kappa, n = 0.3, 200_000
    phi, p = _exact_sign_samples(kappa, n)
    new = swendsen_wang(phi, kappa / 2, BatchStream(1, n, "cpu"))  # bonds of κ/2 on the κ target
    assert _chi2_pvalue(new, p) < 1e-6


def test_cluster_labels_are_the_connected_components():
    b0 = torch.zeros(1, 4, 4, dtype=torch.bool)
    b1 = torch.zeros(1, 4, 4, dtype=torch.bool)
    b0[0, 0, 0] = b0[0, 1, 0] = True  # (0,0)-(1,0)-(2,0) along axis 0
    b1[0, 3, 3] = True  # (3,3)-(3,0) across the periodic boundary
    lab = cluster_labels([b0, b1])[0]
    assert lab[0, 0] == lab[1, 0] == lab[2, 0] == 0
    assert lab[3, 3] == lab[3, 0] == 12 and lab[3, 1] == 13
    assert len(torch.unique(lab)) == 16 - 3


def test_the_cluster_update_flips_the_vacuum_in_the_broken_phase():
    """Deep in the broken phase every bond of an ordered field is active: the whole lattice is one
    cluster and flips with probability ½ (HMC alone essentially never changes the sign of M)."""
    theory = lib.Phi4(L=8, kappa=0.5, lam=0.022)
    n = 4000
    phi = torch.full((n, 8, 8), theory.classical_vacuum(), dtype=torch.float64)
    assert float(min(p.min() for p in bond_probabilities(phi, theory.kappa))) > 0.999
    new = swendsen_wang(phi, theory.kappa, BatchStream(2, n, "cpu"))
    neg = float((new.mean(dim=(1, 2)) < 0).double().mean())
    assert abs(neg - 0.5) < 4 * math.sqrt(0.25 / n)
    assert torch.equal(new.abs(), phi.abs())


def _chi2_and_absm(configs, n_chains):
    v = configs.shape[-1] * configs.shape[-2]
    m = configs.mean(axis=(-1, -2))  # (n_meas, n_chains)
    by_chain = m.T
    chi = jackknife(lambda x: v * (np.mean(x**2) - np.mean(x) ** 2), by_chain, n_blocks=n_chains)
    absm = jackknife(lambda x: np.mean(np.abs(x)), by_chain, n_blocks=n_chains)
    return chi, absm


@pytest.mark.parametrize("sampler", ["cluster", "fa-hmc"])
def test_free_field_susceptibility_is_exact(sampler):
    theory = lib.Phi4(L=8, kappa=0.2, lam=0.0)
    n_chains = 64
    if sampler == "cluster":
        chain = ClusterHMC(theory, n_chains, eps=0.1, n_steps=10, seed=3)
    else:
        m0 = math.sqrt(theory.bare_mass_squared)  # exactly harmonic: a trajectory of π/2 decorrelates every mode
        chain = FourierHMC(theory, n_chains, eps=math.pi / 2 / 8, n_steps=8, mass=m0, seed=3)
    chain.run(30, progress_bar=False)
    meas = chain.run(300, measure=lambda phi: phi.clone(), progress_bar=False).reshape(300, n_chains, 8, 8)
    (chi, chi_err), _ = _chi2_and_absm(meas, n_chains)
    assert_stat(chi, chi_err, theory.free_susceptibility(), f"{sampler} χ₂ of the free field")
    assert chain.acceptance_rate > 0.8


def test_cluster_and_fourier_hmc_agree_with_plain_hmc_near_the_transition():
    """κ = 0.27, λ = 0.022, L = 8: ⟨|M|⟩ and χ₂ from the two new samplers agree with long plain HMC
    chains within errors (jackknife over independent chains)."""
    theory = lib.Phi4(L=8, kappa=0.27, lam=0.022)
    n_chains, n_meas = 64, 400
    results = {}
    for name, chain in (("hmc", HMC(theory, n_chains, eps=0.1, n_steps=10, seed=5, start="ordered")),
                        ("cluster", ClusterHMC(theory, n_chains, eps=0.1, n_steps=10, seed=6, start="ordered")),
                        ("fa-hmc", FourierHMC(theory, n_chains, eps=0.1, n_steps=10, mass=0.5, seed=7,
                                              start="ordered"))):
        chain.run(200, progress_bar=False)
        meas = chain.run(n_meas, measure=lambda phi: phi.clone(), progress_bar=False)
        results[name] = _chi2_and_absm(meas.reshape(n_meas, n_chains, 8, 8), n_chains)
    for name in ("cluster", "fa-hmc"):
        for k, what in ((0, "χ₂"), (1, "⟨|M|⟩")):
            (a, ea), (b, eb) = results[name][k], results["hmc"][k]
            assert_stat(a - b, math.hypot(ea, eb), 0.0, f"{name} − HMC, {what}")


def test_fourier_hmc_is_reversible_and_keeps_exp_minus_dH_at_one():
    theory = lib.Phi4(L=8, kappa=0.27, lam=0.022)
    chain = FourierHMC(theory, 256, eps=0.2, n_steps=10, mass=0.5, seed=11)
    chain.run(20, progress_bar=False)
    phi0 = chain.phi.clone()
    p0 = chain._momenta(torch.randn(phi0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    phi1, p1 = leapfrog(theory, phi0, p0, 0.2, 10, velocity=chain.velocity)
    back, p_back = leapfrog(theory, phi1, -p1, 0.2, 10, velocity=chain.velocity)
    assert torch.allclose(back, phi0, atol=1e-10) and torch.allclose(-p_back, p0, atol=1e-10)
    chain.run(100, progress_bar=False)
    e = np.array(chain.stats.mean_exp_minus_dH[-100:])  # each an average over 256 chains
    assert_stat(e.mean(), e.std(ddof=1) / math.sqrt(len(e)), 1.0, "⟨exp(−ΔH)⟩ of FA-HMC")
    assert 0.3 < chain.acceptance_rate < 1.0


def test_fourier_momenta_have_the_mass_matrix_as_covariance():
    theory = lib.Phi4(L=8, kappa=0.25, lam=0.022)
    chain = FourierHMC(theory, 1, mass=0.7, seed=0)
    xi = torch.randn((20000, 8, 8), dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    p = chain._momenta(xi)
    power = (torch.fft.fftn(p, dim=(1, 2)).abs() ** 2).mean(0) / 64  # ⟨|π̃(p)|²⟩/V = m(p)
    m = fourier_masses(theory, 0.7)
    assert torch.allclose(power, m, rtol=4 * math.sqrt(2 / 20000) * 1.5)


def test_bad_options_end_in_one_line():
    with pytest.raises(ValueError, match="mass"):
        FourierHMC(lib.Phi4(L=4, kappa=0.2, lam=0.0), 2, mass=0.0)
    with pytest.raises(ValueError, match="n_hmc"):
        ClusterHMC(lib.Phi4(L=4, kappa=0.2, lam=0.0), 2, n_hmc=0)
    with pytest.raises(ValueError, match="needs"):
        ClusterHMC(lib.ToyModel(), 2)


def test_the_ensemble_command_records_its_algorithm_and_refuses_stray_options(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def run(*args):
        return subprocess.run([sys.executable, "-m", "lib", "ensemble", "--L", "6", "--kappa", "0.25", "--lam", "0.022",
                               "--n-configs", "8", "--seed", "1", "--no-progress", *map(str, args)], cwd=root,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)

    out = tmp_path / "c.npz"
    r = run("--algorithm", "cluster", "--n-burnin", 5, "--n-spacing", 2, "--out", out)
    assert r.returncode == 0, r.stderr
    meta = lib.storage.load_ensemble(out).metadata
    assert meta["sampler"] == "cluster" and meta["settings"]["algorithm"] == "cluster"
    assert (meta["settings"]["eps"], meta["settings"]["n_steps"]) == (0.1, 10)  # the algorithm's defaults
    for args, match in ((("--algorithm", "hmc", "--mass", 2), "--mass"), (("--algorithm", "cluster", "--fused"),
                                                                         "--fused"),
                        (("--algorithm", "fa-hmc", "--mass", 0), "mass"), (("--algorithm", "nope"), "invalid choice")):
        r = run(*args, "--out", tmp_path / "x.npz")
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and match in r.stderr, (args, r.stderr)


@pytest.mark.parametrize("algorithm", ["hmc", "fa-hmc", "metropolis"])
def test_sampler_cost_measures_the_free_field_and_prices_it(algorithm):
    """lib.mcmc.sampler_cost on the free field: ⟨M²⟩ = χ/V exactly, within the Γ-method's error; the
    rate is 1/(2 τ_int t) of what it measured."""
    from lib.mcmc import sampler_cost

    th = lib.Phi4(L=8, kappa=0.2, lam=0.0)
    kw = {"metropolis": dict(delta=1.5)}.get(algorithm, dict(eps=0.1, n_steps=10))
    r = sampler_cost(th, algorithm=algorithm, n_chains=8, n_therm=100, n_measure=1500, seed=3, **kw)
    want = th.free_susceptibility() / th.volume
    assert abs(r["M2"]["mean"] - want) < 4 * r["M2"]["error"], (r["M2"], want)
    assert r["M2"]["error"] < 0.2 * want
    assert r["absM"]["tau"] >= 0.5 and r["seconds"] > 0
    assert r["M2"]["per_second"] == pytest.approx(1 / (2 * r["M2"]["tau"] * r["seconds"]))


def test_dynamical_exponent_recovers_a_power_law_and_its_error():
    """τ = 3 L^{2.1} with 8 % errors at L = 8…64: the fit returns z = 2.1 on exact data, and on
    2000 noisy copies the spread of the fitted z equals the quoted δz (within 10 %, the accuracy
    of a standard deviation from 2000 draws being 1.6 %)."""
    from lib.mcmc import dynamical_exponent

    Ls = np.array([8, 16, 32, 64])
    tau = 3 * Ls ** 2.1
    z, dz = dynamical_exponent(Ls, tau, 0.08 * tau)
    assert z == pytest.approx(2.1, abs=1e-12)
    rng = np.random.default_rng(0)
    zs = [dynamical_exponent(Ls, tau * np.exp(0.08 * rng.standard_normal(4)), 0.08 * tau)[0] for _ in range(2000)]
    assert np.std(zs) == pytest.approx(dz, rel=0.1)
    assert abs(np.mean(zs) - 2.1) < 4 * dz / math.sqrt(2000)
    with pytest.raises(ValueError, match="two or more"):
        dynamical_exponent([8], [10.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        dynamical_exponent([8, 16], [10.0, math.inf], [1.0, 1.0])


@pytest.mark.parametrize("L, p", [(6, 0.3), (16, 0.5), (16, 0.7), (32, 0.52)])
def test_both_labelling_methods_give_the_same_clusters(L, p):
    """scipy's connected components and the batched label propagation label every site with the
    smallest index of its cluster, from below, at and above the bond-percolation threshold 1/2
    (spanning, winding clusters included), so a chain does not depend on which one ran."""
    g = torch.Generator().manual_seed(int(100 * p) + L)
    bonds = [torch.rand((5, L, L), generator=g) < p for _ in range(2)]
    a = cluster_labels(bonds, method="graph")
    b = cluster_labels(bonds, method="propagate")
    assert a.dtype == b.dtype == torch.int64 and torch.equal(a, b)
    with pytest.raises(ValueError, match="method"):
        cluster_labels(bonds, method="bfs")


def test_independence_chain_tau_and_break_even():
    """A chain that accepts a fresh N(0, 1) draw with probability a (else repeats): its measured
    τ_int (Γ-method, 16 chains of 20000) is 1/a − 1/2 within errors at a = 0.5 and 0.1; the
    break-even acceptance makes 2τ t_prop equal the classical time, and is NaN where even a = 1
    costs more."""
    from lib.analysis.stats import autocorrelation
    from lib.mcmc import break_even_acceptance, independence_tau

    rng = np.random.default_rng(5)
    for a in (0.5, 0.1):
        chains = []
        for _ in range(16):
            x = rng.standard_normal(20000)
            rejected = rng.random(20000) >= a  # a rejection repeats the previous value
            rejected[0] = False
            idx = np.where(rejected, 0, np.arange(20000))
            np.maximum.accumulate(idx, out=idx)
            chains.append(x[idx])
        ac = autocorrelation(np.stack(chains, 1), name=f"ind{a}")
        assert abs(ac.tau_int - independence_tau(a)) < 4 * ac.tau_int_error, (a, ac.tau_int, ac.tau_int_error)
    t_c, t_p = np.array([10.0, 3.0, 0.5]), 1.0
    a_be = break_even_acceptance(t_c, t_p)
    assert np.allclose(2 * independence_tau(a_be[:2]) * t_p, t_c[:2]) and np.isnan(a_be[2])
    assert break_even_acceptance(1.0, 1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="acceptance"):
        independence_tau(0.0)
    with pytest.raises(ValueError, match="positive"):
        break_even_acceptance(-1.0, 1.0)
