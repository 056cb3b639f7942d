"""Numerical solution of the one-dimensional Fokker–Planck equation (paper eq. 2.6 for one
degree of freedom; the same equation with a time-dependent kernel is eq. 3.10).

.. math:: ∂_τ P(φ, τ) = ∂_φ\\big[D(τ)\\,∂_φ P - K(φ, τ) P\\big]

is discretised in conservative (finite-volume) form on a uniform grid with zero flux through
the ends, so total probability is conserved exactly. For a time-independent drift the
solution is P(τ) = e^{Aτ} P(0), evaluated with ``scipy.sparse.linalg.expm_multiply``; with a
time-dependent drift or diffusion coefficient Crank–Nicolson steps are used.
"""
from __future__ import annotations

import inspect

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import expm_multiply, splu


def fokker_planck_operator(x: np.ndarray, drift_mid: np.ndarray, diffusion: float) -> sparse.csr_matrix:
    r"""Sparse matrix A with dP/dτ = A P for the conservative discretisation

    .. math:: J_{i+1/2} = K_{i+1/2} \frac{P_i + P_{i+1}}{2} - D\frac{P_{i+1} - P_i}{h},\qquad
              \frac{dP_i}{dτ} = -\frac{J_{i+1/2} - J_{i-1/2}}{h},

    ``drift_mid`` holding K at the n−1 cell interfaces, J = 0 at both ends.
    """
    n = len(x)
    h = x[1] - x[0]
    if not np.allclose(np.diff(x), h):
        raise ValueError("the grid must be uniform")
    k = np.asarray(drift_mid, dtype=float)
    if k.shape != (n - 1,):
        raise ValueError(f"drift_mid must have {n - 1} entries (cell interfaces)")
    # J_{i+1/2} = a_i P_i + b_i P_{i+1}
    a = 0.5 * k + diffusion / h
    b = 0.5 * k - diffusion / h
    main = np.zeros(n)
    main[:-1] -= a / h  # -J_{i+1/2}/h contributes -a_i P_i
    main[1:] += b / h  # +J_{i-1/2}/h with i -> i+1 contributes +b_{i} P_{i+1}
    upper = -b / h  # P_{i+1} in row i
    lower = a / h  # P_{i} in row i+1
    return sparse.diags([lower, main, upper], [-1, 0, 1], format="csr")


def solve_fokker_planck(x, p0, times, drift, diffusion=1.0, n_substeps: int = 200) -> np.ndarray:
    """Evolve the density ``p0`` on grid ``x`` and return it at each of ``times`` (shape
    ``(len(times), len(x))``).

    ``drift`` is K(φ) or, for a time-dependent drift, K(φ, τ) (a callable on numpy arrays);
    ``diffusion`` is D or a callable D(τ). Times must be non-decreasing and start at ≥ 0.
    """
    x = np.asarray(x, dtype=float)
    p = np.asarray(p0, dtype=float).copy()
    times = np.asarray(times, dtype=float)
    if np.any(np.diff(times) < 0) or times[0] < 0:
        raise ValueError("times must be non-negative and non-decreasing")
    xm = 0.5 * (x[1:] + x[:-1])

    time_dependent = callable(diffusion) or len(inspect.signature(drift).parameters) > 1
    if not time_dependent:
        A = fokker_planck_operator(x, drift(xm), float(diffusion))
        res, t_prev = [], 0.0
        for t in times:
            if t > t_prev:
                p = expm_multiply(A * (t - t_prev), p)
                t_prev = t
            res.append(p.copy())
        return np.array(res)
    D = diffusion if callable(diffusion) else (lambda t, d=float(diffusion): d)
    K = drift if len(inspect.signature(drift).parameters) > 1 else (lambda y, t: drift(y))
    eye = sparse.identity(len(x), format="csc")
    res, t_prev = [], 0.0
    for t in times:
        if t > t_prev:
            dt = (t - t_prev) / n_substeps
            for j in range(n_substeps):
                tm = t_prev + (j + 0.5) * dt
                A = fokker_planck_operator(x, K(xm, tm), D(tm)).tocsc()
                p = splu(eye - 0.5 * dt * A).solve((eye + 0.5 * dt * A) @ p)
            t_prev = t
        res.append(p.copy())
    return np.array(res)


def stationary_density(x, drift_mid, diffusion: float = 1.0) -> np.ndarray:
    """Null vector of the discrete operator (the discrete equilibrium), normalised to ∫P = 1."""
    x = np.asarray(x, dtype=float)
    h = x[1] - x[0]
    # zero flux: a_i P_i + b_i P_{i+1} = 0  =>  P_{i+1}/P_i = -a_i/b_i
    k = np.asarray(drift_mid, dtype=float)
    a = 0.5 * k + diffusion / h
    b = 0.5 * k - diffusion / h
    if np.any(a <= 0) or np.any(b >= 0):
        raise ValueError("grid too coarse for this drift: need |K| h < 2D (cell Péclet number < 1) at every interface")
    logp = np.concatenate([[0.0], np.cumsum(np.log(a / -b))])
    p = np.exp(logp - logp.max())
    return p / (p.sum() * h)
