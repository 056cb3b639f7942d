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


def two_point(configs) -> np.ndarray:
    r"""Connected two-point function G(x) = (1/V) Σ_y ⟨φ(y)φ(y+x)⟩ − ⟨M⟩², averaged over the
    ensemble and computed with FFTs from G̃(p) = ⟨|φ̃(p)|²⟩/V. Returns an array of the lattice shape."""
    return np.fft.ifftn(momentum_two_point(configs)).real - magnetisation(configs).mean() ** 2


def momentum_two_point(configs) -> np.ndarray:
    """G̃(p) = ⟨|φ̃(p)|²⟩ / V with φ̃(p) = Σ_x e^{−ipx} φ(x) (not connected: p = 0 holds V⟨M²⟩)."""
    c = _np(configs).astype(np.float64, copy=False)
    axes = tuple(range(1, c.ndim))
    vol = int(np.prod(c.shape[1:]))
    ft = np.fft.fftn(c, axes=axes)
    return (np.abs(ft) ** 2).mean(axis=0) / vol


def radial_power_spectrum(configs):
    """⟨|φ̃(p)|²⟩/V binned by the lattice momentum |p̂| with p̂_μ = 2 sin(p_μ/2).

    Returns ``(p_hat, power)``, one entry per distinct |p̂|.
    """
    gp = momentum_two_point(configs)
    L = gp.shape
    grids = np.meshgrid(*[2 * np.sin(np.pi * np.arange(n) / n) for n in L], indexing="ij")
    phat = np.sqrt(sum(g**2 for g in grids)).ravel()
    key = np.round(phat, 10)
    uniq, inv = np.unique(key, return_inverse=True)
    power = np.bincount(inv, weights=gp.ravel()) / np.bincount(inv)
    return uniq, power


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
