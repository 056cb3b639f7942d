"""Lattice φ⁴ (paper eqs. 4.2–4.4): action, drift, symmetries, parameter checks and the exact free field."""
import itertools

import numpy as np
import pytest
import torch

from lib import Phi4

torch.set_num_threads(1)


def rand_fields(theory, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *theory.lattice_shape), generator=g, dtype=torch.float64)


def action_by_loops(theory, phi):
    """Eq. (4.2) written with explicit site loops (numpy), independent of the library's rolls."""
    L, d, k, lam = theory.L, theory.d, theory.kappa, theory.lam
    out = []
    for conf in phi.numpy():
        s = 0.0
        for x in itertools.product(range(L), repeat=d):
            v = conf[x]
            hop = sum(conf[tuple((x[j] + (j == mu)) % L for j in range(d))] for mu in range(d))
            s += -2 * k * v * hop + (1 - 2 * lam) * v**2 + lam * v**4
        out.append(s)
    return np.array(out)




@pytest.mark.parametrize("d,L", [(1, 7), (1, 2), (2, 4), (2, 5), (2, 2), (3, 3), (3, 4)])
def test_action_matches_site_loop_definition(d, L):
    th = Phi4(L=L, kappa=0.27, lam=0.3, d=d)
    phi = rand_fields(th, n=2, seed=d * 10 + L)
    np.testing.assert_allclose(th.action(phi).numpy(), action_by_loops(th, phi), rtol=1e-12)


@pytest.mark.parametrize("d,L", [(1, 6), (1, 2), (2, 4), (2, 5), (2, 2), (3, 3), (3, 4)])
def test_drift_is_minus_autograd_gradient(d, L):
    th = Phi4(L=L, kappa=0.31, lam=0.17, d=d)
    phi = rand_fields(th, n=4, seed=d + 7 * L).requires_grad_()
    (grad,) = torch.autograd.grad(th.action(phi).sum(), phi)
    phi = phi.detach()
    before = phi.clone()
    torch.testing.assert_close(th.drift(phi), -grad, rtol=1e-12, atol=1e-12)
    assert torch.equal(phi, before), "drift modified its input"


@pytest.mark.parametrize("d,L", [(1, 6), (2, 4), (3, 4)])
def test_local_action_gives_exact_action_change_on_a_sublattice(d, L):
    """Changing φ on one checkerboard sublattice changes S by Σ_x Δs_x over that sublattice —
    the identity the checkerboard Metropolis sampler relies on."""
    th = Phi4(L=L, kappa=0.29, lam=0.11, d=d)
    phi = rand_fields(th, n=5, seed=3)
    for mask in th.checkerboard_masks():
        new = torch.where(mask, phi + rand_fields(th, n=5, seed=4), phi)
        ds_local = ((th.local_action(new) - th.local_action(phi)) * mask).sum(dim=tuple(range(1, d + 1)))
        torch.testing.assert_close(ds_local, th.action(new) - th.action(phi), rtol=1e-11, atol=1e-11)
    masks = th.checkerboard_masks()
    assert torch.equal(masks[0] ^ masks[1], torch.ones_like(masks[0]))  # a partition of the lattice
    # no two sites of a sublattice are neighbours
    for mask in masks:
        for mu in range(d):
            assert not (mask & torch.roll(mask, 1, mu)).any()


@pytest.mark.parametrize("d,L", [(1, 5), (2, 4), (3, 3)])
def test_action_symmetries(d, L):
    """S is invariant under lattice translations, axis reflections and φ → −φ."""
    th = Phi4(L=L, kappa=0.25, lam=0.05, d=d)
    phi = rand_fields(th, n=3, seed=11)
    s = th.action(phi)
    dims = tuple(range(1, d + 1))
    torch.testing.assert_close(th.action(-phi), s, rtol=1e-13, atol=0)
    for shift in itertools.product(range(L), repeat=d):
        torch.testing.assert_close(th.action(torch.roll(phi, shift, dims)), s, rtol=1e-12, atol=1e-12)
    for mu in dims:
        torch.testing.assert_close(th.action(torch.flip(phi, (mu,))), s, rtol=1e-12, atol=1e-12)
    if d >= 2:  # exchange of two axes
        torch.testing.assert_close(th.action(phi.transpose(1, 2)), s, rtol=1e-12, atol=1e-12)
    # the drift is covariant: K[T φ] = T K[φ], K[−φ] = −K[φ]
    torch.testing.assert_close(th.drift(torch.roll(phi, 1, 1)), torch.roll(th.drift(phi), 1, 1))
    torch.testing.assert_close(th.drift(-phi), -th.drift(phi))
    # and the action is not trivially symmetric: a generic non-symmetry changes it
    assert not torch.allclose(th.action(phi + 0.3), s)


def test_action_works_in_float32_and_batches_independently():
    th = Phi4(L=4, kappa=0.2, lam=0.02)
    phi = rand_fields(th, n=6, seed=2)
    s64 = th.action(phi)
    s32 = th.action(phi.float())
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), s64, rtol=1e-5, atol=1e-5)
    for i in range(6):
        torch.testing.assert_close(th.action(phi[i:i + 1])[0], s64[i])


# ---------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("kwargs", [
    dict(L=4, kappa=0.2, lam=-0.1),
    dict(L=4, kappa=-0.1, lam=0.02),
    dict(L=1, kappa=0.2, lam=0.02),
    dict(L=0, kappa=0.2, lam=0.02),
    dict(L=4.0, kappa=0.2, lam=0.02),
    dict(L=4, kappa=0.2, lam=0.02, d=0),
    dict(L=4, kappa=float("nan"), lam=0.02),
    dict(L=4, kappa=0.2, lam=float("inf")),
    dict(L=4, kappa=0.25, lam=0.0, d=2),  # free field at κ = 1/(2d): massless, unstable
    dict(L=4, kappa=0.3, lam=0.0, d=2),
    dict(L=4, kappa=0.5, lam=0.0, d=1),
    dict(L=4, kappa=1 / 6, lam=0.0, d=3),
])
def test_invalid_parameters_raise(kwargs):
    with pytest.raises(ValueError):
        Phi4(**kwargs)


def test_valid_edge_parameters():
    Phi4(L=2, kappa=0.0, lam=0.0)
    Phi4(L=4, kappa=0.2499, lam=0.0)
    Phi4(L=4, kappa=0.5, lam=0.022)  # broken phase with λ > 0 is allowed


def test_wrong_shapes_raise():
    th = Phi4(L=4, kappa=0.2, lam=0.02)
    for bad in [torch.zeros(4, 4), torch.zeros(2, 4, 5), torch.zeros(2, 4, 4, 4), torch.zeros(2, 16), torch.zeros(2, 5, 5)]:
        with pytest.raises(ValueError):
            th.action(bad)
        with pytest.raises(ValueError):
            th.drift(bad)
    with pytest.raises(TypeError):
        th.action(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError):
        Phi4(L=5, kappa=0.2, lam=0.02).checkerboard_masks()


def test_bare_mass_and_classical_critical_kappa():
    """(a m₀)² = (1 − 2λ)/κ − 2d (eq. 4.3); κ_c^cl = (1 − 2λ)/(2d) (eq. 4.4) where it vanishes."""
    th = Phi4(L=8, kappa=0.21, lam=0.022)
    assert th.bare_mass_squared == pytest.approx((1 - 0.044) / 0.21 - 4, rel=1e-14)
    assert th.bare_mass_squared == pytest.approx(0.5523809523809524, rel=1e-12)
    assert Phi4.kappa_classical(0.022) == pytest.approx(0.239, rel=1e-12)  # the paper's κ_c ≃ 0.239
    assert Phi4.kappa_classical(0.022, d=3) == pytest.approx(0.956 / 6, rel=1e-12)
    for d, lam in [(1, 0.1), (2, 0.022), (3, 0.3), (4, 0.0)]:
        kc = Phi4.kappa_classical(lam, d)
        assert Phi4(L=4, kappa=kc, lam=lam + 1e-12 if lam == 0 else lam, d=d).bare_mass_squared == pytest.approx(0, abs=1e-9)
        # symmetric phase (m₀² > 0) below κ_c, broken above
        assert Phi4(L=4, kappa=0.9 * kc, lam=lam, d=d).bare_mass_squared > 0
        assert Phi4(L=4, kappa=1.1 * kc, lam=max(lam, 1e-3), d=d).bare_mass_squared < 0
    # the free-field stability bound is κ_c at λ = 0
    for d in (1, 2, 3):
        assert Phi4(L=4, kappa=0.1, lam=0.0, d=d).kappa_free_bound == pytest.approx(Phi4.kappa_classical(0.0, d))


def test_continuum_action_mass_term():
    """For a constant field φ the action per site is −2dκφ² + (1−2λ)φ² + λφ⁴ = κ(am₀)²φ² + λφ⁴,
    i.e. (2κ)^{1/2}φ = φ₀ carries the bare mass of eq. (4.3)."""
    for d in (1, 2, 3):
        th = Phi4(L=4, kappa=0.19, lam=0.07, d=d)
        c = 0.8
        phi = torch.full((1, *th.lattice_shape), c, dtype=torch.float64)
        per_site = float(th.action(phi)[0]) / th.volume
        assert per_site == pytest.approx(th.kappa * th.bare_mass_squared * c**2 + th.lam * c**4, rel=1e-12)


# ---------------------------------------------------------------------------- free field
def apply_A(theory, g):
    """A G with A = 2·1 − 2κ Σ_μ (T_μ + T_μ⁻¹) (the free action S = ½ φᵀAφ)."""
    out = 2 * g
    for mu in range(theory.d):
        out = out - 2 * theory.kappa * (torch.roll(g, 1, mu) + torch.roll(g, -1, mu))
    return out


@pytest.mark.parametrize("d,L,kappa", [(1, 8, 0.3), (2, 8, 0.2), (2, 5, 0.24), (3, 4, 0.15)])
def test_free_propagator_inverts_the_lattice_operator(d, L, kappa):
    th = Phi4(L=L, kappa=kappa, lam=0.0, d=d)
    G = th.free_propagator()
    delta = torch.zeros_like(G)
    delta[(0,) * d] = 1.0
    torch.testing.assert_close(apply_A(th, G), delta, rtol=0, atol=1e-12)
    # G(x) = G(−x), real, positive for κ > 0
    torch.testing.assert_close(G, torch.flip(torch.roll(G, (-1,) * d, tuple(range(d))), tuple(range(d))))
    assert (G > 0).all()
    # χ₂ = Σ_x G(x) = G̃(0) = 1/(2 − 4dκ)
    assert float(G.sum()) == pytest.approx(th.free_susceptibility(), rel=1e-12)
    assert th.free_susceptibility() == pytest.approx(1 / (2 - 4 * d * kappa), rel=1e-14)
    assert th.free_site_variance() == pytest.approx(float(G[(0,) * d]), rel=1e-14)


@pytest.mark.parametrize("d,L,kappa", [(1, 6, 0.35), (2, 4, 0.2), (3, 3, 0.12)])
def test_free_propagator_is_inverse_hessian_of_the_action(d, L, kappa):
    """Independent of any formula: G = (∂²S/∂φ∂φ)⁻¹ with the Hessian of the library's action."""
    th = Phi4(L=L, kappa=kappa, lam=0.0, d=d)
    V = th.volume
    H = torch.autograd.functional.hessian(lambda f: th.action(f.reshape(1, *th.lattice_shape))[0],
                                          torch.zeros(V, dtype=torch.float64))
    Ginv = torch.linalg.inv(H)
    G = th.free_propagator().reshape(-1)
    torch.testing.assert_close(Ginv[0], G, rtol=1e-10, atol=1e-12)
    assert float(Ginv.sum()) / V == pytest.approx(th.free_susceptibility(), rel=1e-10)


def test_free_results_need_lambda_zero():
    th = Phi4(L=4, kappa=0.2, lam=0.01)
    for f in (th.free_propagator, th.free_susceptibility, th.free_momentum_propagator, th.free_site_variance):
        with pytest.raises(ValueError):
            f()
