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


def independence_chain(log_weight, seed: int) -> IndependenceChain:
    r"""Run the independence Metropolis chain through proposals 0, 1, …, N − 1 in order.

    ``log_weight``: the proposals' log importance weights w = log p − log q (eq. 4.9; any
    constant offset drops out), e.g. ``-S - log_q``, or the path weights of
    :func:`lib.diffusion.dm_path_proposals`; the uniforms come from ``seed``. Vectorised over
    proposals except for the running state.
    """
    w = np.asarray(log_weight, dtype=np.float64)
    if w.ndim != 1 or len(w) < 1:
        raise ValueError("log_weight must be a 1-D array of length >= 1")
    if not np.isfinite(w).all():
        raise ValueError("log weights must be finite (a proposal with q = 0 or p = 0 cannot be weighed)")
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
