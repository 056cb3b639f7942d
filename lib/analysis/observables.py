"""Observables of lattice configurations (paper eqs. 4.5–4.7, 4.12) and their estimators.

Per-configuration functions take a batch ``(n, *lattice)`` (torch or numpy) and return one value
per configuration; ensemble estimators return ``(value, jackknife error)``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .stats import jackknife


def _np(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _flat(configs):
    c = _np(configs)
    if c.ndim < 2:
        raise ValueError(f"expected a batch of configurations (n, *lattice), got shape {c.shape}")
    return c.reshape(c.shape[0], -1).astype(np.float64, copy=False)


def magnetisation(configs) -> np.ndarray:
    """M = (1/V) Σ_x φ(x) per configuration (paper eq. 4.5 before the ensemble average)."""
    return _flat(configs).mean(axis=1)


def abs_magnetisation(configs) -> np.ndarray:
    """|M| = |(1/V) Σ_x φ(x)| per configuration.

    Note: the paper's eq. (4.12) writes Σ_x |φ(x)|; its Fig. 8 and the usual lattice convention
    use the absolute value of the magnetisation, which is what this returns. The site average
    of |φ| is :func:`mean_abs_field`.
    """
    return np.abs(magnetisation(configs))


def mean_abs_field(configs) -> np.ndarray:
    """(1/V) Σ_x |φ(x)| per configuration (eq. 4.12 read literally)."""
    return np.abs(_flat(configs)).mean(axis=1)


def abs_susceptibility(configs, n_blocks: int | None = None):
    """χ_|M| = V(⟨M²⟩ − ⟨|M|⟩²), the susceptibility used in the broken phase, where ⟨M⟩ = 0 by
    symmetry but each configuration sits in one vacuum; ``(value, jackknife error)``."""
    c = _flat(configs)
    vol = c.shape[1]
    return jackknife(lambda m: vol * (np.mean(m**2) - np.mean(np.abs(m)) ** 2), magnetisation(c), n_blocks=n_blocks)


def wall_ratio(configs) -> np.ndarray:
    """|M| / (site average of |φ|) per configuration: 1 for a configuration of one sign, smaller
    when domains of both signs (separated by domain walls) coexist."""
    num, den = abs_magnetisation(configs), mean_abs_field(configs)
    return np.divide(num, den, out=np.ones_like(num), where=den > 0)


def vacuum_fractions(configs, wall_threshold: float = 0.9) -> dict:
    """Broken phase: fractions of configurations in the vacuum M > 0, in M < 0, and with domain
    walls (:func:`wall_ratio` below ``wall_threshold``), each ``(value, jackknife error)`` — for
    independent configurations the binomial error √(p(1−p)/(n−1))."""
    m = magnetisation(configs)
    dw = wall_ratio(configs) < wall_threshold
    return {"positive": jackknife(np.mean, (m > 0).astype(float)),
            "negative": jackknife(np.mean, (m < 0).astype(float)),
            "domain_wall": jackknife(np.mean, dw.astype(float))}


def block_average(configs, b: int) -> np.ndarray:
    """Coarse-grain by averaging the field over b×b (×…) blocks — one real-space RG step of
    block size ``b``; returns shape ``(n, L/b, …)``. L must be divisible by b."""
    c = _np(configs).astype(np.float64, copy=False)
    lat = c.shape[1:]
    if b < 1 or any(n % b for n in lat):
        raise ValueError(f"block size {b} does not divide the lattice {lat}")
    shape = [c.shape[0]]
    for n in lat:
        shape += [n // b, b]
    return c.reshape(shape).mean(axis=tuple(range(2, 2 * len(lat) + 1, 2)))


def susceptibility_from_m(m: np.ndarray, volume: int) -> float:
    """χ₂ = V(⟨M²⟩ − ⟨M⟩²) (paper eq. 4.6)."""
    return volume * (np.mean(m**2) - np.mean(m) ** 2)


def binder_from_m(m: np.ndarray) -> float:
    """U_L = 1 − ⟨M⁴⟩ / (3⟨M²⟩²) (paper eq. 4.7)."""
    return 1.0 - np.mean(m**4) / (3 * np.mean(m**2) ** 2)


def susceptibility(configs, n_blocks: int | None = None):
    """χ₂ with a jackknife error that resamples the whole expression, means included."""
    c = _flat(configs)
    vol = c.shape[1]
    return jackknife(lambda m: susceptibility_from_m(m, vol), magnetisation(c), n_blocks=n_blocks)


def binder(configs, n_blocks: int | None = None):
    """Binder cumulant U_L (eq. 4.7) with a jackknife error of the full ratio."""
    return jackknife(binder_from_m, magnetisation(configs), n_blocks=n_blocks)


def summary(configs, n_blocks: int | None = None) -> dict:
    """⟨M⟩, ⟨|M|⟩, χ₂, U_L, each as ``(value, jackknife error)``.

    For configurations from independent chains leave ``n_blocks=None`` (delete-one jackknife);
    for a correlated Markov chain use blocks longer than its autocorrelation time.
    """
    c = _flat(configs)
    vol = c.shape[1]
    m = magnetisation(c)
    return {
        "M": jackknife(np.mean, m, n_blocks=n_blocks),
        "absM": jackknife(lambda x: np.mean(np.abs(x)), m, n_blocks=n_blocks),
        "chi2": jackknife(lambda x: susceptibility_from_m(x, vol), m, n_blocks=n_blocks),
        "binder": jackknife(binder_from_m, m, n_blocks=n_blocks),
        "n_configs": int(c.shape[0]),
    }


def gauge_summary(theory, configs, n_blocks: int | None = None) -> dict:
    """For U(1) link configurations (:class:`lib.theories.U1Gauge`): the plaquette ⟨cos θ_P⟩, ⟨Q⟩,
    ⟨Q²⟩ and χ_top = ⟨Q²⟩/V, each as ``(value, jackknife error)`` (``n_blocks`` as in :func:`summary`)."""
    import torch

    x = torch.as_tensor(np.asarray(configs), dtype=torch.float64)
    plaq = theory.plaquette(x).numpy()
    q = theory.topological_charge(x).numpy()
    V = theory.n_plaquettes
    return {
        "plaquette": jackknife(np.mean, plaq, n_blocks=n_blocks),
        "Q": jackknife(np.mean, q, n_blocks=n_blocks),
        "Q2": jackknife(lambda v: np.mean(v * v), q, n_blocks=n_blocks),
        "chi_top": jackknife(lambda v: np.mean(v * v) / V, q, n_blocks=n_blocks),
        "n_configs": int(len(q)),
    }


def two_point(configs) -> np.ndarray:
    r"""Connected two-point function G(x) = (1/V) Σ_y ⟨φ(y)φ(y+x)⟩ − ⟨M⟩², averaged over the
    ensemble and computed with FFTs from G̃(p) = ⟨|φ̃(p)|²⟩/V. Returns an array of the lattice shape."""
    return np.fft.ifftn(momentum_two_point(configs)).real - magnetisation(configs).mean() ** 2


def axis_two_point(configs, n_blocks: int | None = None, chunk: int = 2048):
    r"""Connected two-point function along the lattice axes with jackknife errors:
    G(r) = (1/d) Σ_k G(r e_k), r = 0 … L/2, with G(x) as in :func:`two_point`.

    Each configuration i contributes g_i(r) = (1/d) Σ_k (1/V) Σ_y φ_i(y) φ_i(y + r e_k) and its
    magnetisation M_i; G(r) = ⟨g(r)⟩ − ⟨M⟩² is resampled whole, every r at once (leave out one
    configuration, or one of ``n_blocks`` contiguous blocks for a Markov chain). Needs a hypercubic
    lattice. Returns ``(G, error)``, two arrays of length L/2 + 1."""
    c = _np(configs).astype(np.float64, copy=False)
    if c.ndim < 2 or c.shape[0] < 2:
        raise ValueError(f"expected at least two configurations of shape (n, *lattice), got {c.shape}")
    lat = c.shape[1:]
    if len(set(lat)) != 1:
        raise ValueError(f"axis_two_point needs a hypercubic lattice, got {lat}")
    n, d, L, vol = c.shape[0], len(lat), lat[0], int(np.prod(lat))
    axes = tuple(range(1, c.ndim))
    per = np.empty((n, L // 2 + 1))
    for start in range(0, n, chunk):
        x = c[start:start + chunk]
        corr = np.fft.ifftn(np.abs(np.fft.fftn(x, axes=axes)) ** 2, axes=axes).real / vol
        along = [corr[(slice(None),) + tuple(slice(0, L // 2 + 1) if a == k else 0 for a in range(d))]
                 for k in range(d)]
        per[start:start + len(x)] = np.mean(along, axis=0)
    data = np.concatenate([per, c.reshape(n, -1).mean(axis=1)[:, None]], axis=1)
    nb = n if n_blocks is None else int(n_blocks)
    if not 2 <= nb <= n:
        raise ValueError(f"n_blocks must lie between 2 and the number of configurations ({n}), got {n_blocks}")
    total = data.sum(axis=0)
    full = total[:-1] / n - (total[-1] / n) ** 2
    loo = []
    for idx in np.array_split(np.arange(n), nb):
        rest = (total - data[idx].sum(axis=0)) / (n - len(idx))
        loo.append(rest[:-1] - rest[-1] ** 2)
    loo = np.asarray(loo)
    err = np.sqrt((nb - 1) / nb * ((loo - loo.mean(axis=0)) ** 2).sum(axis=0))
    return full, err


def momentum_two_point(configs) -> np.ndarray:
    """G̃(p) = ⟨|φ̃(p)|²⟩ / V with φ̃(p) = Σ_x e^{−ipx} φ(x) (not connected: p = 0 holds V⟨M²⟩)."""
    c = _np(configs).astype(np.float64, copy=False)
    axes = tuple(range(1, c.ndim))
    vol = int(np.prod(c.shape[1:]))
    ft = np.fft.fftn(c, axes=axes)
    return (np.abs(ft) ** 2).mean(axis=0) / vol


def _radial_bins(shape):
    """|p̂| with p̂_μ = 2 sin(p_μ/2) for every momentum of a lattice, and the index of its bin."""
    grids = np.meshgrid(*[2 * np.sin(np.pi * np.arange(n) / n) for n in shape], indexing="ij")
    phat = np.sqrt(sum(g**2 for g in grids)).ravel()
    uniq, inv = np.unique(np.round(phat, 10), return_inverse=True)
    return uniq, inv


def _radial_average(values, inv):
    return np.bincount(inv, weights=values.ravel()) / np.bincount(inv)


def radial_power_spectrum(configs):
    """⟨|φ̃(p)|²⟩/V binned by the lattice momentum |p̂| with p̂_μ = 2 sin(p_μ/2).

    Returns ``(p_hat, power)``, one entry per distinct |p̂|.
    """
    gp = momentum_two_point(configs)
    uniq, inv = _radial_bins(gp.shape)
    return uniq, _radial_average(gp, inv)


def mode_correlation(configs_a, configs_b):
    r"""Correlation of every Fourier mode between paired configurations (a_i with b_i),

    .. math:: c(p) = \frac{{\rm Re}\,⟨\tilde a(p)\, \tilde b(p)^*⟩}{\sqrt{⟨|\tilde a(p)|^2⟩\,⟨|\tilde b(p)|^2⟩}},

    averaged over the momenta of equal |p̂|. For a diffusion trajectory, a = φ_t and b its end
    point φ_0: c(p) ≈ 1 where the mode is already fixed, ≈ 0 where it is still noise. For the VE
    forward process φ_t = φ_0 + √Ξ(t) η it is exactly √(G̃₀(p)/(G̃₀(p) + Ξ(t))) at p ≠ 0.

    Returns ``(p_hat, c)``.
    """
    a, b = _np(configs_a).astype(np.float64), _np(configs_b).astype(np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired ensembles need equal shapes, got {a.shape} and {b.shape}")
    axes = tuple(range(1, a.ndim))
    fa, fb = np.fft.fftn(a, axes=axes), np.fft.fftn(b, axes=axes)
    num = (fa * fb.conj()).real.mean(axis=0)
    den = np.sqrt((np.abs(fa) ** 2).mean(axis=0) * (np.abs(fb) ** 2).mean(axis=0))
    uniq, inv = _radial_bins(a.shape[1:])
    return uniq, _radial_average(num, inv) / _radial_average(den, inv)


def cumulants_from_moments(m: np.ndarray) -> dict[int, float]:
    r"""Cumulants κ_1…κ_N from raw moments m_0 = 1, m_1, …, m_N by the recursion

    .. math:: κ_n = m_n - \sum_{k=1}^{n-1} \binom{n-1}{k-1} κ_k\, m_{n-k}.
    """
    n_max = len(m) - 1
    k = {}
    for n in range(1, n_max + 1):
        k[n] = m[n] - sum(math.comb(n - 1, j - 1) * k[j] * m[n - j] for j in range(1, n))
    return k


def site_moments(configs, n_max: int = 8) -> np.ndarray:
    """Per-configuration site averages of φⁿ, n = 0…n_max; shape ``(n_configs, n_max+1)``."""
    c = _flat(configs)
    return np.stack([np.mean(c**n, axis=1) for n in range(n_max + 1)], axis=1)


def site_cumulants(configs, orders=(2, 4, 6, 8), n_blocks: int | None = None) -> dict:
    """Single-site cumulants κ_n of the field, moments averaged over sites and configurations,
    each with a jackknife error over configurations (the recursion is resampled as a whole)."""
    n_max = max(orders)
    per = site_moments(configs, n_max)
    out = {}
    for n in orders:
        out[n] = jackknife(lambda mm, n=n: cumulants_from_moments(mm.mean(axis=0))[n], per, n_blocks=n_blocks)
    return out


def site_cumulant_difference(configs_a, configs_b, orders=(2, 4, 6, 8), n_blocks: int | None = None) -> dict:
    """κ_n(a) − κ_n(b) of two *paired* ensembles (configuration i of ``a`` belongs with
    configuration i of ``b``, e.g. two runs with common random numbers), each κ_n as in
    :func:`site_cumulants`, with a jackknife error that leaves out the same configurations
    from both, so the correlation between the pairs is kept. Returns ``{n: (value, error)}``."""
    a, b = _flat(configs_a), _flat(configs_b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"paired ensembles need the same number of configurations, got {a.shape[0]} and {b.shape[0]}")
    n_max = max(orders)
    per = np.concatenate([site_moments(a, n_max), site_moments(b, n_max)], axis=1)

    def diff(mm, n):
        m = mm.mean(axis=0)
        return cumulants_from_moments(m[: n_max + 1])[n] - cumulants_from_moments(m[n_max + 1:])[n]

    return {n: jackknife(lambda mm, n=n: diff(mm, n), per, n_blocks=n_blocks) for n in orders}


def rescaled_site_cumulants(configs, lo: float, hi: float, orders=(2, 4, 6, 8), n_blocks: int | None = None,
                            symmetrise: bool = False) -> dict:
    """:func:`site_cumulants` of the field rescaled by y = 2(φ − lo)/(hi − lo) − 1, the global
    min–max map to [−1, 1] of the cumulant study (Aarts et al. 2024; lo, hi: the
    minimum and maximum of the ensemble that defines the map). Returns ``{n: (κ_n, error)}``.

    ``symmetrise``: the Z₂-symmetrised estimator, each configuration taken together with its
    mirror image φ → −φ (both mapped with the same lo, hi) as one configuration of twice the
    sites, so the jackknife leaves out whole pairs. It removes the fluctuation of the vacuum
    balance from every κ_n: the odd moments about the map's centre vanish exactly."""
    if not hi > lo:
        raise ValueError(f"need hi > lo, got lo = {lo}, hi = {hi}")
    phi = _np(configs).astype(np.float64)
    if symmetrise:
        phi = np.stack([phi, -phi], axis=1)
    y = 2.0 * (phi - lo) / (hi - lo) - 1.0
    return site_cumulants(y, orders, n_blocks=n_blocks)
