"""Does a generative model reproduce its training set or the distribution behind it?

A diffusion model trained long enough on a finite set learns the score of the *empirical*
distribution, whose reverse process ends on the training configurations themselves.

* :func:`dsm_generalisation_gap`: the denoising score-matching loss of eq. (3.4) at a fixed
  diffusion time on training against held-out configurations (the same number of each, the
  same noise): positive means the network fits the training set better than the law it came
  from. Its null (zero) is exact: a model that never saw the data has none.
* :func:`distance_to_training`: how near generated and held-out configurations come to the
  training set (descriptive).
"""
from __future__ import annotations

import math

import numpy as np
import torch


def _flat(x) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    return x.reshape(x.shape[0], -1).double()


def nearest_distances(samples, reference, batch_size: int = 1024) -> torch.Tensor:
    """Euclidean distance from each configuration in ``samples`` to its nearest neighbour in
    ``reference`` (both ``(batch, *lattice)``), min over j of ‖φ_i − ψ_j‖."""
    s, r = _flat(samples), _flat(reference)
    if s.shape[1] != r.shape[1]:
        raise ValueError(f"samples and reference have different lattices ({s.shape[1]} and {r.shape[1]} sites)")
    return torch.cat([torch.cdist(s[i:i + batch_size], r).min(dim=1).values for i in range(0, len(s), batch_size)])


def distance_to_training(samples, train, held_out, batch_size: int = 1024) -> dict:
    """Nearest-neighbour distances to the training set of generated configurations and of
    held-out ones (which the model never saw): their medians and the ratio of the medians. A
    model that reproduces its training set puts its samples much nearer (ratio well below 1);
    note that an imperfect model can shift the ratio either way without copying anything, so
    this is a description, and :func:`dsm_generalisation_gap` is the test."""
    d_gen = nearest_distances(samples, train, batch_size)
    d_held = nearest_distances(held_out, train, batch_size)
    return {"median_generated": float(d_gen.median()), "median_held_out": float(d_held.median()),
            "ratio": float(d_gen.median() / d_held.median())}


@torch.no_grad()
def dsm_generalisation_gap(model, train, held_out, t: float, seed: int = 0) -> tuple[float, float]:
    """Mean DSM loss, ‖σ_t s_θ(x_t, t) + z‖² summed over sites (eq. 3.4 at fixed t), on held-out
    configurations minus that on as many training configurations with the same noise z; and the
    standard error of the difference (independent configurations). Inputs in network units."""
    held_out = torch.as_tensor(held_out)
    train = torch.as_tensor(train)[:len(held_out)]
    if len(train) < len(held_out):
        raise ValueError("the training set must be at least as large as the held-out set")
    from ..diffusion.loss import dsm_loss

    p = next(model.parameters())
    like = dict(device=p.device, dtype=p.dtype)
    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(held_out.shape, generator=g, dtype=torch.float64).to(**like)
    tt = torch.full((len(held_out),), float(t), **like)

    def loss(x0):
        return dsm_loss(model, x0.to(**like), t=tt, z=z, reduction="none").double().cpu()

    lh, lt = loss(held_out), loss(train)
    return float(lh.mean() - lt.mean()), float(math.sqrt((lh.var() + lt.var()) / len(lh)))
