r"""What an independent sample costs: the autocorrelation of a Markov chain and its price per update.

For a chain whose measurements of an observable O have integrated autocorrelation time τ_int
(Wolff's Γ-method), N updates carry N/(2τ_int) independent measurements, so with t seconds per
update of one chain

.. math:: \text{effective samples per second} = \frac{1}{2\,τ_\mathrm{int}\, t}.

:func:`sampler_cost` measures both for one algorithm of :data:`lib.mcmc.ALGORITHMS` on one theory:
τ_int of |M| and of M² over several independent chains, and the wall time per update of one chain
(batched chains share the work, so t is the batch's time divided by the chains). Chapter 2's
study of critical slowing down and ``benchmarks/critical_slowing.py`` use it, and chapter 9 sets
DM-MC's cost per proposal against the best of these rates.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from .hmc import HMCSettings, make_sampler


def sampler_cost(theory, settings: HMCSettings | None = None, *, n_chains: int = 16, n_therm: int = 200,
                 n_measure: int = 2000, seed: int = 0, device=None, dtype=torch.float64, **overrides) -> dict:
    """Run ``n_chains`` chains of ``settings.algorithm`` (start ``settings.start``) for ``n_therm``
    updates, then measure the magnetisation M = (1/V) Σ_x φ(x) after each of ``n_measure`` updates.

    Returns a dict: ``seconds`` per update of one chain; for ``"absM"`` and ``"M2"`` (|M| and M²):
    ``mean``, ``error`` (Γ-method over the chains as replicas), ``tau``, ``tau_error`` and
    ``per_second`` (effective samples per second, module docstring); ``acceptance`` where the
    sampler has one. A chain whose |M| never changes (a frozen run) gives τ = inf and no rate."""
    from ..analysis.stats import autocorrelation

    settings = HMCSettings.build(settings, **overrides)
    sampler = make_sampler(theory, n_chains, settings, seed=seed, start=settings.start, device=device,
                           dtype=dtype)
    sampler.run(n_therm, progress_bar=False)
    dims = tuple(range(1, 1 + len(theory.lattice_shape)))
    tic = time.perf_counter()
    m = sampler.run(n_measure, measure=lambda x: x.mean(dim=dims), progress_bar=False)
    seconds = (time.perf_counter() - tic) / (n_measure * n_chains)
    m = np.asarray(m, dtype=np.float64).reshape(n_measure, n_chains)
    out = {"algorithm": settings.algorithm, "L": getattr(theory, "L", None), "n_chains": n_chains,
           "n_measure": n_measure, "seconds": seconds}
    for key, series in (("absM", np.abs(m)), ("M2", m * m)):
        if np.any(np.ptp(series, axis=0) == 0):
            out[key] = {"mean": float(series.mean()), "error": math.nan, "tau": math.inf, "tau_error": math.nan,
                        "per_second": 0.0}
            continue
        ac = autocorrelation([series[:, c] for c in range(n_chains)], name=key)
        out[key] = {"mean": ac.mean, "error": ac.error, "tau": ac.tau_int, "tau_error": ac.tau_int_error,
                    "per_second": 1.0 / (2 * ac.tau_int * seconds)}
    rate = getattr(sampler, "acceptance_rate", None)
    if rate is not None:
        out["acceptance"] = float(rate)
    return out


def dynamical_exponent(Ls, taus, errors) -> tuple[float, float]:
    r"""The dynamical critical exponent z of τ_int ∝ L^z (critical slowing down): the slope of a
    weighted least-squares line through (log L, log τ), weights 1/σ² with σ = δτ/τ the error of
    log τ,

    .. math:: z = \frac{W S_{xy} - S_x S_y}{W S_{xx} - S_x^2}, \qquad
              δz = \sqrt{\frac{W}{W S_{xx} - S_x^2}},

    with W = Σw, S_x = Σw log L, S_y = Σw log τ, S_xx = Σw log²L, S_xy = Σw log L log τ.
    Returns ``(z, δz)``; needs at least two sizes with finite τ and positive errors."""
    x, y = np.log(np.asarray(Ls, dtype=float)), np.asarray(taus, dtype=float)
    e = np.asarray(errors, dtype=float)
    if len(x) < 2 or len(set(x)) < 2 or not (np.all(np.isfinite(y)) and np.all(y > 0) and np.all(e > 0)):
        raise ValueError("dynamical_exponent needs two or more lattice sizes with finite τ > 0 and errors > 0")
    w = (y / e) ** 2
    y = np.log(y)
    W, Sx, Sy = w.sum(), (w * x).sum(), (w * y).sum()
    Sxx, Sxy = (w * x * x).sum(), (w * x * y).sum()
    den = W * Sxx - Sx * Sx
    return float((W * Sxy - Sx * Sy) / den), float(math.sqrt(W / den))


def independence_tau(acceptance) -> np.ndarray:
    r"""τ_int of an independence chain (DM-MC) whose acceptance a does not depend on the state: a
    rejection repeats the last state, so ρ(t) = (1 − a)^t and

    .. math:: τ_\mathrm{int} = \tfrac12 + \sum_{t\ge1}(1-a)^t = \frac1a - \frac12 .

    A real chain's rejections depend on the proposal's weight, so this is a guide, not a bound."""
    a = np.asarray(acceptance, dtype=float)
    if np.any((a <= 0) | (a > 1)):
        raise ValueError("the acceptance must lie in (0, 1]")
    return 1 / a - 0.5


def break_even_acceptance(t_classical, t_proposal) -> np.ndarray:
    r"""The acceptance at which an independence chain (:func:`independence_tau`) costs as much per
    independent sample as a classical sampler that needs ``t_classical`` seconds per independent
    sample, when one proposal costs ``t_proposal`` seconds: from 2τ_int t_prop = t_c,

    .. math:: a = \frac{2}{1 + t_c / t_\mathrm{prop}} ,

    NaN where t_prop > t_c (even a = 1, one independent sample per proposal, costs more)."""
    tc, tp = np.asarray(t_classical, dtype=float), np.asarray(t_proposal, dtype=float)
    if np.any(tc <= 0) or np.any(tp <= 0):
        raise ValueError("times must be positive")
    return np.where(tc >= tp, 2 / (1 + tc / tp), np.nan)


__all__ = ["sampler_cost", "dynamical_exponent", "independence_tau", "break_even_acceptance"]
