"""Hybrid Monte Carlo for any theory with ``action`` and ``drift`` (paper Sec. 4.1).

Many independent chains run in parallel as one batched tensor ``(n_chains, *lattice)``.
The sampler state (fields, generator, counters, statistics) can be saved and resumed, so that
an interrupted run continues bit-for-bit where it stopped.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from .ensemble import atomic_torch_save
from .markov import MarkovChainSampler
from .utils import resolve_device


def leapfrog(theory, phi: torch.Tensor, p: torch.Tensor, eps: float, n_steps: int):
    r"""Leapfrog integration of Hamilton's equations for H = ½ Σ_x π² + S[φ]:

    .. math::
        π_{1/2} = π_0 + \tfrac{ε}{2} K(φ_0),\quad φ_{k+1} = φ_k + ε π_{k+1/2},\quad
        π_{k+3/2} = π_{k+1/2} + ε K(φ_{k+1}),

    with the force K = −∂S/∂φ (``theory.drift``) and a final half step for π. The map is
    reversible and volume preserving; the energy error per trajectory is O(ε²).
    Returns new tensors (inputs are not modified).
    """
    phi = phi.clone()
    p = p + 0.5 * eps * theory.drift(phi)
    for k in range(n_steps):
        phi.add_(p, alpha=eps)
        if k < n_steps - 1:
            p.add_(theory.drift(phi), alpha=eps)
    p.add_(theory.drift(phi), alpha=0.5 * eps)
    return phi, p


def hamiltonian(theory, phi: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """H = ½ Σ_x π(x)² + S[φ] per chain."""
    dims = tuple(range(1, p.ndim))
    return 0.5 * (p * p).sum(dim=dims) + theory.action(phi)


@dataclass
class HMCStats:
    """Running statistics of the Metropolis step, per trajectory (averaged over chains)."""

    acceptance: list = field(default_factory=list)
    mean_dH: list = field(default_factory=list)
    mean_exp_minus_dH: list = field(default_factory=list)

    def as_dict(self):
        return {k: list(map(float, v)) for k, v in self.__dict__.items()}


class HMC(MarkovChainSampler):
    """Batched Hybrid Monte Carlo sampler.

    Parameters
    ----------
    theory : Phi4 or ToyModel (anything with ``action``, ``drift``, ``lattice_shape``).
    n_chains : number of independent chains updated together.
    eps, n_steps : leapfrog step size and steps per trajectory (paper: 0.01 × 100, length 1).
    seed : seed of this sampler's own ``torch.Generator``.
    start : ``"cold"`` (φ = 0), ``"hot"`` (φ ~ N(0, 1)), ``"ordered"`` (the constant classical
        vacuum ±φ₀ with a random sign per chain, see :meth:`lib.phi4.Phi4.classical_vacuum`) or a
        tensor of shape ``(n_chains, *lattice)``.
    """

    sampler = "hmc"
    unit = "traj"

    def __init__(self, theory, n_chains: int = 1, eps: float = 0.01, n_steps: int = 100, seed: int = 0,
                 start="hot", device=None, dtype=torch.float64):
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"leapfrog step eps must be positive, got {eps}")
        if not isinstance(n_steps, int) or n_steps < 1:
            raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
        self.eps, self.n_steps = float(eps), int(n_steps)
        super().__init__(theory, n_chains, seed=seed, start=start, device=device, dtype=dtype)
        self.n_accepted = torch.zeros(n_chains, device=self.device, dtype=torch.long)
        self.stats = HMCStats()

    @property
    def n_traj(self) -> int:
        return self.n_updates

    def settings(self) -> dict:
        return {**super().settings(), "eps": self.eps, "n_steps": self.n_steps}

    def update(self) -> torch.Tensor:
        """One HMC trajectory for every chain: momentum refresh, leapfrog, Metropolis test.

        Accept with probability min(1, e^{−ΔH}); returns the boolean acceptance mask.
        """
        p = torch.randn(self.phi.shape, generator=self.generator, device=self.device, dtype=self.dtype)
        h0 = hamiltonian(self.theory, self.phi, p)
        phi_new, p_new = leapfrog(self.theory, self.phi, p, self.eps, self.n_steps)
        dH = hamiltonian(self.theory, phi_new, p_new) - h0
        u = torch.rand(dH.shape, generator=self.generator, device=self.device, dtype=self.dtype)
        # a diverged trajectory (dH = nan) is rejected
        accept = u < torch.exp(-dH.nan_to_num(nan=math.inf))
        view = accept.view(-1, *([1] * (self.phi.ndim - 1)))
        self.phi = torch.where(view, phi_new, self.phi)
        self.n_accepted += accept
        self.stats.acceptance.append(accept.to(self.dtype).mean().item())
        finite = dH[torch.isfinite(dH)]
        self.stats.mean_dH.append(finite.mean().item() if finite.numel() else math.nan)
        self.stats.mean_exp_minus_dH.append(torch.exp(-finite).mean().item() if finite.numel() else math.nan)
        return accept

    def trajectory(self) -> torch.Tensor:
        """One trajectory of every chain (counted); returns the acceptance mask."""
        accept = self.update()
        self.n_updates += 1
        return accept

    def run(self, n_traj: int, measure=None, progress_bar: bool = True, desc: str = "HMC",
            checkpoint=None, checkpoint_every: int = 50):
        """Run ``n_traj`` trajectories (see :meth:`MarkovChainSampler.run`)."""
        return super().run(n_traj, measure=measure, progress_bar=progress_bar, desc=desc,
                           checkpoint=checkpoint, checkpoint_every=checkpoint_every)

    @property
    def acceptance_rate(self) -> float:
        return float(self.n_accepted.sum().item()) / max(self.n_traj * self.n_chains, 1)

    def _extra_state(self) -> dict:
        return {"n_accepted": self.n_accepted.cpu(), "stats": self.stats.as_dict()}

    def _load_extra_state(self, state: dict) -> None:
        self.n_accepted = state["n_accepted"].to(self.device)
        self.stats = HMCStats(**state["stats"])


def hmc_ensemble(theory, n_configs: int, seed: int, n_burnin: int = 100, n_spacing: int = 64,
                 eps: float = 0.01, n_steps: int = 100, batch_size: int | None = None, device=None,
                 dtype=torch.float64, progress_bar: bool = True, checkpoint_dir=None, start: str = "hot",
                 n_per_chain: int = 1):
    """Independent chains, each thermalised for ``n_burnin`` trajectories and then sampled
    ``n_per_chain`` times, ``n_spacing`` trajectories apart. With the defaults this is the
    paper's protocol (Sec. 4.1): one configuration per chain, hot start, 100 + 64 trajectories.

    ``start="ordered"`` starts every chain in a classical vacuum with a random sign — the start
    that equilibrates fast in the broken phase (see chapter 2). Chains are processed
    ``batch_size`` at a time (batch ``b`` uses seed ``seed + b``); the configurations are
    returned chain-major (the ``n_per_chain`` samples of a chain are contiguous), so jackknife
    blocks of whole chains are contiguous blocks.

    With ``checkpoint_dir``, each batch's sampler state is saved there and an interrupted run
    resumes from it (completed batches are not recomputed).

    Returns ``(configs, info)`` with configs of shape ``(n_configs, *lattice)`` on the CPU and
    ``info`` holding the settings and the acceptance rate.
    """
    if n_configs < 1:
        raise ValueError(f"n_configs must be >= 1, got {n_configs}")
    if n_burnin < 0 or n_spacing < 1 or n_per_chain < 1:
        raise ValueError("need n_burnin >= 0, n_spacing >= 1 and n_per_chain >= 1")
    if n_configs % n_per_chain:
        raise ValueError(f"n_configs = {n_configs} is not a multiple of n_per_chain = {n_per_chain}")
    if start not in ("hot", "ordered", "cold"):
        raise ValueError(f"start must be 'hot', 'ordered' or 'cold', got {start!r}")
    n_chains = n_configs // n_per_chain
    batch_size = min(batch_size or n_chains, n_chains)
    configs, accepted = [], 0.0
    starts = list(range(0, n_chains, batch_size))
    for b, first in enumerate(starts):
        nb = min(batch_size, n_chains - first)
        ckpt = None
        if checkpoint_dir is not None:
            os.makedirs(checkpoint_dir, exist_ok=True)
            ckpt = os.path.join(checkpoint_dir, f"batch{b:04d}.pt")
        samples = []
        if ckpt and os.path.exists(ckpt):
            sampler = HMC.load(ckpt, theory, device=device)
            expected = {"seed": seed + b, "n_chains": nb, "dtype": str(dtype).replace("torch.", ""), "eps": float(eps),
                        "n_steps": int(n_steps)}
            if sampler.settings() != expected:
                raise ValueError(f"checkpoint {ckpt} was made with other settings; remove it or pick another directory")
            kept = ckpt + ".samples.pt"
            if os.path.exists(kept):
                samples = list(torch.load(kept))
        else:
            sampler = HMC(theory, nb, eps=eps, n_steps=n_steps, seed=seed + b, start=start, device=device, dtype=dtype)
        desc = f"HMC batch {b + 1}/{len(starts)}"
        # trajectory counts at which a sample is taken
        marks = [n_burnin + n_spacing * (k + 1) for k in range(n_per_chain)]
        for mark in marks[len(samples):]:
            sampler.run(mark - sampler.n_traj, progress_bar=progress_bar, desc=desc, checkpoint=ckpt)
            samples.append(sampler.phi.cpu().clone())
            if ckpt and n_per_chain > 1:
                atomic_torch_save(samples, ckpt + ".samples.pt")
        configs.append(torch.stack(samples, dim=1).reshape(nb * n_per_chain, *theory.lattice_shape))
        accepted += sampler.n_accepted.sum().item()
    n_total = n_burnin + n_spacing * n_per_chain
    info = {"sampler": "hmc", "protocol": "independent-chains", "eps": eps, "n_steps": n_steps,
            "n_burnin": n_burnin, "n_spacing": n_spacing, "n_per_chain": n_per_chain, "start": start,
            "batch_size": batch_size, "seed": seed, "dtype": str(dtype).replace("torch.", ""),
            "acceptance": accepted / (n_chains * n_total)}
    return torch.cat(configs), info


def hmc_chain(theory, n_traj: int, seed: int, measure, n_chains: int = 1, eps: float = 0.01,
              n_steps: int = 100, start="hot", device=None, dtype=torch.float64, progress_bar: bool = True):
    """One (or a few parallel) long Markov chains for thermalisation and autocorrelation studies.

    ``measure(phi)`` maps the batch to per-chain values; returns ``(values, sampler)`` with
    values of shape ``(n_traj, n_chains)`` — the time series after each trajectory.
    """
    sampler = HMC(theory, n_chains, eps=eps, n_steps=n_steps, seed=seed, start=start, device=device, dtype=dtype)
    values = sampler.run(n_traj, measure=measure, progress_bar=progress_bar, desc="HMC chain")
    return values, sampler


def cached_hmc_ensemble(theory, n_configs: int, seed: int, n_burnin: int = 100, n_spacing: int = 64,
                        eps: float = 0.01, n_steps: int = 100, batch_size: int | None = 1024, device=None,
                        dtype=torch.float64, cache_dir=None, progress_bar: bool = True, verbose: bool = True,
                        start: str = "hot", n_per_chain: int = 1):
    """:func:`hmc_ensemble` through the ensemble cache (:func:`lib.ensemble.cached_ensemble`):
    loads the ensemble if one made with exactly these settings exists, otherwise makes and
    stores it. The device is not part of the request (results agree in distribution, not bitwise).

    Returns an :class:`lib.ensemble.Ensemble` (``.configs`` numpy, ``.metadata`` dict).
    """
    from .ensemble import cached_ensemble, make_metadata

    settings = {"protocol": "independent-chains", "n_configs": n_configs, "n_burnin": n_burnin,
                "n_spacing": n_spacing, "eps": eps, "n_steps": n_steps, "batch_size": batch_size,
                "dtype": str(dtype).replace("torch.", "")}
    # recorded only when not the paper's defaults, so existing cache keys stay valid
    if start != "hot":
        settings["start"] = start
    if n_per_chain != 1:
        settings["n_per_chain"] = n_per_chain
    meta = make_metadata(theory, "hmc", settings, seed)

    def make():
        configs, info = hmc_ensemble(theory, n_configs, seed, n_burnin=n_burnin, n_spacing=n_spacing, eps=eps,
                                     n_steps=n_steps, batch_size=batch_size, device=device, dtype=dtype,
                                     progress_bar=progress_bar, start=start, n_per_chain=n_per_chain)
        return configs, {"acceptance": info["acceptance"], "device": str(resolve_device(device))}

    return cached_ensemble(meta, make, cache_dir=cache_dir, verbose=verbose)
