"""Statistics: jackknife errors of derived quantities and autocorrelation times.

Autocorrelation analysis uses Wolff's Γ-method with automatic windowing as implemented in
pyerrors (U. Wolff, Comput. Phys. Commun. 156 (2004) 143).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def jackknife(f, data, n_blocks: int | None = None):
    r"""Jackknife estimate of ``f(data)`` and its standard error.

    ``data`` has samples along its first axis; ``f`` maps such an array (all of it, or with one
    block left out) to a number, so a ratio such as χ₂ or U_L is resampled as a whole, means
    included. With ``n_blocks`` the samples are cut into that many contiguous blocks (for
    autocorrelated chains); by default every sample is its own block.

    .. math:: σ_f^2 = \frac{N_b-1}{N_b}\sum_{b=1}^{N_b}(f_{(b)} - \bar f_{(\cdot)})^2

    Returns ``(f(data), σ_f)``.
    """
    data = np.asarray(data)
    n = data.shape[0]
    if n < 2:
        raise ValueError("the jackknife needs at least two samples")
    nb = n if n_blocks is None else int(n_blocks)
    if not 2 <= nb <= n:
        raise ValueError(f"n_blocks must lie between 2 and the number of samples ({n}), got {n_blocks}")
    full = float(f(data))
    if nb == n:
        idx = np.arange(n)
        loo = np.array([float(f(data[idx != i])) for i in range(n)]) if n <= 20000 else None
        if loo is None:  # very large samples: fall back to blocks of equal size
            return jackknife(f, data, n_blocks=2000)
    else:
        edges = np.linspace(0, n, nb + 1).astype(int)
        loo = np.array([float(f(np.concatenate([data[: edges[b]], data[edges[b + 1]:]]))) for b in range(nb)])
    err = np.sqrt((nb - 1) / nb * np.sum((loo - loo.mean()) ** 2))
    return full, float(err)


def linear_fit(x, y, n_blocks: int | None = None) -> dict:
    r"""Least-squares line y ≈ a x + b and the coefficient of determination R² (the squared
    correlation of x and y), each with its jackknife error (pairs (x_i, y_i) left out together,
    the whole fit redone per sample):

    .. math:: a = \frac{\mathrm{cov}(x,y)}{\mathrm{var}\,x},\qquad b = \bar y - a\bar x,\qquad
              R^2 = \frac{\mathrm{cov}(x,y)^2}{\mathrm{var}\,x\,\mathrm{var}\,y}.

    Returns ``{"slope": (a, σ_a), "intercept": (b, σ_b), "r2": (R², σ_R²), "residual_std": s}``."""
    data = np.column_stack([np.asarray(x, dtype=float), np.asarray(y, dtype=float)])
    if data.shape[0] < 3 or not np.isfinite(data).all():
        raise ValueError("linear_fit needs at least three finite (x, y) pairs")

    def slope(d):
        c = np.cov(d[:, 0], d[:, 1])
        return c[0, 1] / c[0, 0]

    def intercept(d):
        return d[:, 1].mean() - slope(d) * d[:, 0].mean()

    def r2(d):
        return np.corrcoef(d[:, 0], d[:, 1])[0, 1] ** 2

    a = slope(data)
    resid = data[:, 1] - a * data[:, 0] - intercept(data)
    return {"slope": jackknife(slope, data, n_blocks), "intercept": jackknife(intercept, data, n_blocks),
            "r2": jackknife(r2, data, n_blocks), "residual_std": float(resid.std(ddof=2))}


@dataclass
class Autocorrelation:
    """Result of a Γ-method analysis of one time series."""

    mean: float
    error: float  # error of the mean, including autocorrelations
    tau_int: float
    tau_int_error: float
    window: int
    rho: np.ndarray  # normalised autocorrelation function Γ(t)/Γ(0)
    rho_error: np.ndarray  # Wolff's error of ρ(t), NaN far beyond the window
    tau_int_of_window: np.ndarray  # τ_int summed up to window W, W = 0, 1, ...

    def __str__(self):
        return (f"mean = {self.mean:.6g} ± {self.error:.2g}, tau_int = {self.tau_int:.3g} ± "
                f"{self.tau_int_error:.2g} (window {self.window})")


def charge_autocorrelation(series, S: float = 2.0, name: str = "Q") -> dict:
    """τ_int of a topological charge (or any integer observable) over chains ``(n, chains)``: the
    Γ-method of :func:`autocorrelation` where every chain changes it at least once; otherwise the
    chains are frozen and only the bound τ_int ≥ n/2 is known (a chain that never leaves its sector
    in n updates has not shown any decorrelation). Returns ``tau``, ``error`` (inf and nan when
    frozen), ``frozen``, ``changes`` (the number of updates that changed the value, all chains) and
    ``n`` (updates per chain)."""
    x = np.asarray(series, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    changes = int((np.diff(x, axis=0) != 0).sum())
    n = x.shape[0]
    if np.any(np.ptp(x, axis=0) == 0):
        return {"tau": math.inf, "error": math.nan, "frozen": True, "changes": changes, "n": n}
    ac = autocorrelation([x[:, i] for i in range(x.shape[1])], S=S, name=name)
    return {"tau": ac.tau_int, "error": ac.tau_int_error, "frozen": False, "changes": changes, "n": n}


def autocorrelation(series, S: float = 2.0, name: str = "chain") -> Autocorrelation:
    r"""Integrated autocorrelation time with Wolff's automatic window (via pyerrors),

    .. math:: τ_\mathrm{int} = \tfrac12 + \sum_{t=1}^{W} ρ(t), \qquad ρ(t) = Γ(t)/Γ(0)

    (paper eq. 4.14 with t_max chosen automatically). ``series`` is one chain (1-d) or several
    independent replicas of equal or different length (a list of 1-d arrays, or the columns of a
    2-d array).

    Caveat: with several replicas, pyerrors measures fluctuations about each replica's own mean.
    Chains much shorter than τ_int (e.g. stuck in different vacua of the broken phase) then look
    decorrelated and τ_int comes out too small; compare the spread of the replica means with the
    quoted error, or analyse fewer, longer chains.
    """
    name = name.replace("|", "/")  # "|" separates replica names in pyerrors
    import pyerrors as pe

    reps = _replicas(series)
    if any(len(r) < 4 for r in reps):
        raise ValueError("each chain needs at least 4 measurements")
    if any(np.ptp(r) == 0 for r in reps):
        raise ValueError("a chain is constant; its autocorrelation time is undefined")
    names = [name] if len(reps) == 1 else [f"{name}|r{i}" for i in range(len(reps))]
    obs = pe.Obs([np.asarray(r, dtype=float) for r in reps], names)
    obs.gamma_method(S=S)
    return Autocorrelation(
        mean=float(obs.value), error=float(obs.dvalue),
        tau_int=float(obs.e_tauint[name]), tau_int_error=float(obs.e_dtauint[name]),
        window=int(obs.e_windowsize[name]), rho=np.asarray(obs.e_rho[name]),
        rho_error=_rho_errors(np.asarray(obs.e_rho[name]), int(obs.e_windowsize[name]), sum(map(len, reps))),
        tau_int_of_window=np.asarray(obs.e_n_tauint[name]),
    )


def _replicas(series) -> list:
    """One chain (1-d), the columns of a 2-d array (time × replicas), or a list of 1-d arrays."""
    if isinstance(series, np.ndarray) and series.ndim == 1:
        return [series.astype(float)]
    if isinstance(series, np.ndarray) and series.ndim == 2:
        return [series[:, i].astype(float) for i in range(series.shape[1])]
    return [np.asarray(r, dtype=float) for r in series]


def gamma_derived(f, *series, S: float = 2.0, name: str = "chain") -> tuple:
    r"""Value and Γ-method error (Wolff's automatic window, via pyerrors) of a function of means,

    .. math:: F = f(\bar a_1, \dots, \bar a_k),

    e.g. the Binder cumulant U_L = 1 − ⟨M⁴⟩/(3⟨M²⟩²) (paper eq. 4.7) from the series M² and M⁴.
    The error propagates the autocorrelations of every series and their cross-correlations (the
    series are measurements on the same chains). Each series is one chain (1-d), the columns of a
    2-d array (time × replicas) or a list of replicas, the same shape for all; ``f`` takes k
    numbers and uses only arithmetic (pyerrors differentiates it). Returns ``(value, error)``."""
    import pyerrors as pe

    name = name.replace("|", "/")
    reps = [_replicas(x) for x in series]
    if not reps or len({tuple(map(len, r)) for r in reps}) != 1:
        raise ValueError("gamma_derived needs one or more series of the same shape")
    if any(len(r) < 4 for r in reps[0]):
        raise ValueError("each chain needs at least 4 measurements")
    names = [name] if len(reps[0]) == 1 else [f"{name}|r{i}" for i in range(len(reps[0]))]
    obs = [pe.Obs(r, names) for r in reps]
    d = pe.derived_observable(lambda x, **kw: f(*x), obs)
    d.gamma_method(S=S)
    return float(d.value), float(d.dvalue)


def jackknife_chains(f, *series) -> tuple:
    r"""Value and error of a function of means from independent chains, by the jackknife over
    whole chains:

    .. math:: F = f(\bar a_1, \dots, \bar a_k), \qquad
              σ_F^2 = \frac{R-1}{R}\sum_{r=1}^{R}\bigl(F_{(r)} - \bar F_{(\cdot)}\bigr)^2,

    where :math:`F_{(r)}` uses the means of all chains but chain r (chains of equal length, so the
    pooled mean is the mean of the chain means). Every chain's mean is independent of the others'
    whatever its autocorrelation, so this error needs no autocorrelation window: it is the check
    on :func:`gamma_derived` when there are enough chains (its own relative uncertainty is about
    1/√(2(R − 1))). :func:`gamma_derived` with replicas measures fluctuations about each chain's
    own mean (pyerrors' convention), which lowers Γ(t) by about the variance of a chain mean,
    2τ_int Γ(0)/N, at every t; summed over a window W that is a relative shortfall of at least
    about 2 W/N in τ_int (more, since the lowered Γ(t) also shortens the automatic window): 30 %
    in the error for chains 20 τ_int long, noticeable up to a hundred (chapter 2, the Binder
    cumulant).

    ``series``: k arrays of shape (time, chains), the same for all; ``f`` takes k numbers.
    Returns ``(value, error)``."""
    arrays = [np.asarray(x, dtype=float) for x in series]
    if not arrays or any(a.ndim != 2 for a in arrays) or len({a.shape for a in arrays}) != 1:
        raise ValueError("jackknife_chains needs one or more (time, chains) arrays of the same shape")
    if arrays[0].shape[1] < 2:
        raise ValueError("jackknife_chains needs at least two chains")
    means = np.stack([a.mean(axis=0) for a in arrays], axis=1)  # (chains, k)
    return jackknife(lambda m: f(*m.mean(axis=0)), means)


def crossings(x, a, b) -> list[tuple]:
    r"""Where two curves measured on one grid cross (e.g. Binder cumulants U_{L1}(κ), U_{L2}(κ)): the
    linear interpolation of every sign change of the difference d = a − b between neighbouring grid
    points x_i, x_{i+1},

    .. math:: x_\times = x_i + (x_{i+1}-x_i)\,\frac{d_i}{d_i - d_{i+1}}, \qquad
              δx_\times = (x_{i+1}-x_i)\,\frac{\sqrt{d_{i+1}^2 σ_i^2 + d_i^2 σ_{i+1}^2}}{(d_i - d_{i+1})^2},

    with σ_i² = δa_i² + δb_i² (independent estimates at each point; the curvature between grid points
    is not included). ``a`` and ``b``: sequences of ``(value, error)`` on the grid ``x``. Returns a
    list of ``(x_cross, error, i)``, i the left grid index of the bracketing interval."""
    x = np.asarray(x, dtype=float)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != (len(x), 2) or b.shape != (len(x), 2):
        raise ValueError("crossings needs (value, error) pairs at every grid point for both curves")
    d, s = a[:, 0] - b[:, 0], np.hypot(a[:, 1], b[:, 1])
    out = []
    for i in range(len(x) - 1):
        da, db = d[i], d[i + 1]
        if da > 0 >= db or da < 0 <= db:
            dk = x[i + 1] - x[i]
            out.append((float(x[i] + dk * da / (da - db)),
                        float(dk * math.hypot(db * s[i], da * s[i + 1]) / (da - db) ** 2), i))
    return out


def _rho_errors(rho: np.ndarray, window: int, n: int) -> np.ndarray:
    r"""Errors of ρ(t) (Wolff 2004, eq. 33; pyerrors fills ``e_drho`` only at the window):

    .. math:: δρ(t)^2 ≈ \frac1N \sum_{k=1}^{t+W} [ρ(k+t) + ρ(|k-t|) - 2ρ(k)ρ(t)]^2,

    for t ≤ 10W + 10 (NaN beyond, where ρ is noise)."""
    err = np.full(len(rho), np.nan)
    w = max(window, 1)
    for t in range(min(len(rho), 10 * w + 11)):
        k = np.arange(1, t + w + 1)
        if k[-1] + t >= len(rho):
            break
        err[t] = np.sqrt(np.sum((rho[k + t] + rho[np.abs(k - t)] - 2 * rho[k] * rho[t]) ** 2) / n)
    return err


def tau_int_fixed_window(series, t_max: int = 100) -> float:
    """τ_int summed to a fixed t_max (paper eq. 4.14 as used there; biased low for slow chains).

    Provided to compare with the paper's numbers; prefer :func:`autocorrelation`.
    """
    x = np.asarray(series, dtype=float)
    x = x - x.mean()
    n = len(x)
    g0 = np.dot(x, x) / n
    t_max = min(t_max, n - 1)
    return 0.5 + sum(np.dot(x[:-t], x[t:]) / (n - t) for t in range(1, t_max + 1)) / g0


def ar1_tau_int(a: float) -> float:
    """Exact τ_int = ½(1 + a)/(1 − a) of an AR(1) process x_{t+1} = a x_t + noise."""
    return 0.5 * (1 + a) / (1 - a)


def mean_sem(x, axis: int = 0):
    """Mean of independent samples (e.g. independent chains) and its standard error
    σ/√n — equal to the delete-one jackknife error of a mean, at O(n) cost."""
    x = np.asarray(x, dtype=float)
    return x.mean(axis=axis), x.std(axis=axis, ddof=1) / np.sqrt(x.shape[axis])


def pull(a, b):
    """The pull of two independent estimates, in combined standard errors:

        z = (a − b) / √(σ_a² + σ_b²).

    ``a`` and ``b`` are ``(value, error)`` pairs (numbers or arrays of the same shape, as
    :func:`jackknife` returns them); a bare number for ``b`` is an exact value (σ_b = 0).
    For independent Gaussian estimates of the same quantity z is standard normal, so |z| > 2
    happens in about 5 % of comparisons. Returns a float for scalars, else an array.
    A negative, non-finite or vanishing combined error is refused: a pull without an error
    is not a pull.
    """

    def split(x, name):
        if isinstance(x, (tuple, list)) and len(x) == 2:
            v, e = (np.asarray(y, dtype=float) for y in x)
        elif np.ndim(x) == 0:
            v, e = np.asarray(x, dtype=float), np.zeros(())
        else:
            raise ValueError(f"{name} must be a (value, error) pair or an exact number, got {type(x).__name__}")
        if np.any(e < 0) or not np.all(np.isfinite(e)):
            raise ValueError(f"the error of {name} must be finite and non-negative, got {e}")
        return v, e

    (va, ea), (vb, eb) = split(a, "a"), split(b, "b")
    sigma = np.hypot(ea, eb)
    if np.any(sigma == 0):
        raise ValueError("both errors are zero: the pull of two exact numbers is undefined")
    z = (va - vb) / sigma
    return float(z) if z.ndim == 0 else z
