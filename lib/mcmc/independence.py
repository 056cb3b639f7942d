r"""Independence Metropolis: a Markov chain whose proposals are independent draws from a proposal
density q — a diffusion model's samples in DM-MC (paper Sec. 4.4, eq. 4.9) — corrected to the target
p ∝ e^{−S} exactly by the Metropolis test

.. math:: A(φ → φ') = \min\Big(1,\ \frac{p(φ')\,q(φ)}{p(φ)\,q(φ')}\Big)
          = \min\big(1,\ e^{\,w(φ') - w(φ)}\big),\qquad w = -S - \log q .

The chain is exact for any q that is positive where p is, provided ``log_q`` is the density the
proposals were really drawn from (issue 13: Euler–Maruyama samples weighted with the probability-
flow ODE's density are not). Its efficiency depends only on the spread of the log weights w: for
Gaussian w with standard deviation s the acceptance is erfc(s/2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..rng import check_seed, generator


@dataclass
class IndependenceChain:
    """The chain's history: ``index[k]`` is the proposal the chain sits on after step k (the first
    proposal starts the chain), ``accepted[k]`` whether step k moved, and the log weights."""

    index: np.ndarray
    accepted: np.ndarray
    log_weight: np.ndarray

    @property
    def acceptance(self) -> float:
        """Fraction of accepted proposals (the first, which starts the chain, not counted)."""
        return float(self.accepted[1:].mean()) if len(self.accepted) > 1 else float("nan")

    def take(self, values):
        """Per-step values of the chain, e.g. ``chain.take(observable_of_proposals)``."""
        return np.asarray(values)[self.index]


def independence_chain(log_target, log_proposal, seed: int) -> IndependenceChain:
    r"""Run the independence Metropolis chain through proposals 0, 1, …, N − 1 in order.

    ``log_target`` (−S up to a constant) and ``log_proposal`` (log q, same constant-free meaning)
    are arrays of the proposals' values; the uniforms come from ``seed``. Vectorised over
    proposals except for the running state.
    """
    lp = np.asarray(log_target, dtype=np.float64)
    lq = np.asarray(log_proposal, dtype=np.float64)
    if lp.ndim != 1 or lp.shape != lq.shape or len(lp) < 1:
        raise ValueError("log_target and log_proposal must be 1-D arrays of the same length >= 1")
    if not (np.isfinite(lp).all() and np.isfinite(lq).all()):
        raise ValueError("log densities must be finite (a proposal with q = 0 cannot be weighed)")
    w = lp - lq
    u = torch.rand(len(w), generator=generator(check_seed(seed)), dtype=torch.float64).numpy()
    log_u = np.log(u)
    index = np.empty(len(w), dtype=np.int64)
    accepted = np.zeros(len(w), dtype=bool)
    current = 0
    index[0], accepted[0] = 0, True
    for k in range(1, len(w)):
        if log_u[k] < w[k] - w[current]:
            current = k
            accepted[k] = True
        index[k] = current
    return IndependenceChain(index, accepted, w)


__all__ = ["IndependenceChain", "independence_chain"]
