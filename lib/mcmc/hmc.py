"""Hybrid Monte Carlo for any theory with ``action`` and ``drift`` (paper Sec. 4.1).

:class:`HMCSettings` carries the settings of the ensemble stage (the paper's protocol by default).

Many independent chains run in parallel as one batched tensor ``(n_chains, *lattice)``.
The sampler state (fields, generator, counters, statistics) can be saved and resumed, so that
an interrupted run continues bit-for-bit where it stopped.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

from ..rng import check_seed
from ..runtime import memory_limit, per_sample, resolve_device
from ..settings import Settings, choice, dtype_name, nonneg_int, positive_float, positive_int, setting
from .chain import MarkovChainSampler, warn_if_frozen


def leapfrog(theory, phi: torch.Tensor, p: torch.Tensor, eps: float, n_steps: int, velocity=None):
    r"""Leapfrog integration of Hamilton's equations for H = ½ πᵀ M⁻¹ π + S[φ]:

    .. math::
        π_{1/2} = π_0 + \tfrac{ε}{2} K(φ_0),\quad φ_{k+1} = φ_k + ε M^{-1}π_{k+1/2},\quad
        π_{k+3/2} = π_{k+1/2} + ε K(φ_{k+1}),

    with the force K = −∂S/∂φ (``theory.drift``) and a final half step for π. ``velocity(π)``
    is M⁻¹π (default M = 1, H = ½ Σ_x π² + S: plain HMC). For any constant symmetric positive M
    the map is reversible and volume preserving; the energy error per trajectory is O(ε²).
    Returns new tensors (inputs are not modified).
    """
    phi = phi.clone()
    p = p + 0.5 * eps * theory.drift(phi)
    for k in range(n_steps):
        phi.add_(p if velocity is None else velocity(p), alpha=eps)
        if k < n_steps - 1:
            p.add_(theory.drift(phi), alpha=eps)
    p.add_(theory.drift(phi), alpha=0.5 * eps)
    return phi, p


def _phi4_leapfrog(phi: torch.Tensor, p: torch.Tensor, eps: float, n_steps: int, two_kappa: float, quad: float,
                   quart: float, d: int):
    """The leapfrog of :func:`leapfrog` for φ⁴ written as one pure function of tensors, the force
    K = 2κ Σ_±μ φ(x ± μ̂) − (2(1 − 2λ) + 4λφ²)φ inlined, so that ``torch.compile`` fuses each
    step's rolls and arithmetic into one pass over the fields."""
    def force(f):
        nb = torch.roll(f, 1, 1) + torch.roll(f, -1, 1)
        for mu in range(2, d + 1):
            nb = nb + torch.roll(f, 1, mu) + torch.roll(f, -1, mu)
        return two_kappa * nb - (quad + quart * f * f) * f

    p = p + 0.5 * eps * force(phi)
    for k in range(n_steps):
        phi = phi + eps * p
        if k < n_steps - 1:
            p = p + eps * force(phi)
    p = p + 0.5 * eps * force(phi)
    return phi, p


def fused_leapfrog(theory):
    """A compiled (``torch.compile``, inductor) leapfrog for :class:`lib.Phi4` with the signature
    ``(theory, phi, p, eps, n_steps)`` of :func:`leapfrog`. It agrees with the eager one to
    round-off (≈10⁻¹⁵ in float64), not bit for bit. Needs a C++ compiler on the CPU; where
    compilation fails, the eager leapfrog is returned with a warning."""
    import warnings

    from ..theories import Phi4

    if not isinstance(theory, Phi4):
        raise ValueError(f"the fused leapfrog is written for Phi4, not {type(theory).__name__}")
    compiled = torch.compile(_phi4_leapfrog, dynamic=False)
    consts = (2 * theory.kappa, 2 * (1 - 2 * theory.lam), 4 * theory.lam, theory.d)
    state = {"ok": True}

    def run(th, phi, p, eps, n_steps):
        if state["ok"]:
            try:
                return compiled(phi, p, float(eps), int(n_steps), *consts)
            except Exception as exc:  # noqa: BLE001 - no compiler, unsupported device: fall back, loudly
                state["ok"] = False
                warnings.warn(f"torch.compile failed ({type(exc).__name__}); using the eager leapfrog",
                              RuntimeWarning, stacklevel=2)
        return leapfrog(th, phi, p, eps, n_steps)

    return run


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
        vacuum ±φ₀ with a random sign per chain, see :meth:`lib.theories.Phi4.classical_vacuum`) or a
        tensor of shape ``(n_chains, *lattice)``.
    fused : use the compiled φ⁴ leapfrog (:func:`fused_leapfrog`): same trajectories to round-off,
        several times faster in float64 on a CPU (``benchmarks/hmc_throughput.py``).
    """

    sampler = "hmc"
    unit = "traj"

    def __init__(self, theory, n_chains: int = 1, eps: float = 0.01, n_steps: int = 100, seed: int = 0,
                 start="hot", device=None, dtype=torch.float64, first_chain: int = 0,
                 per_chain_streams: bool | None = None, fused: bool = False):
        self.eps, self.n_steps = positive_float("leapfrog step eps", eps), positive_int("n_steps", n_steps)
        self.fused = bool(fused)
        self._leapfrog = fused_leapfrog(theory) if self.fused else leapfrog
        super().__init__(theory, n_chains, seed=seed, start=start, device=device, dtype=dtype,
                         first_chain=first_chain, per_chain_streams=per_chain_streams)
        self.n_accepted = torch.zeros(n_chains, device=self.device, dtype=torch.long)
        self.stats = HMCStats()

    @property
    def n_traj(self) -> int:
        return self.n_updates

    def update(self) -> torch.Tensor:
        """One HMC trajectory for every chain: momentum refresh, leapfrog, Metropolis test.

        Accept with probability min(1, e^{−ΔH}); returns the boolean acceptance mask.
        """
        if self.per_chain_streams:
            # one call per chain stream: the momenta and one more normal z for the Metropolis test, u = Φ(z)
            draws = self.noise.randn((self.theory.volume + 1,), self.dtype)
            p = self._momenta(draws[:, :-1].reshape(self.phi.shape))
        else:
            p = self._momenta(self.noise.randn(self.theory.lattice_shape, self.dtype))
        h0 = self._hamiltonian(self.phi, p)
        phi_new, p_new = self._integrate(self.phi, p)
        dH = self._hamiltonian(phi_new, p_new) - h0
        if self.per_chain_streams:
            u = 0.5 * torch.erfc(-draws[:, -1] / math.sqrt(2))  # uniform on (0, 1)
        else:
            u = self.noise.rand((), self.dtype)
        # a diverged trajectory (dH = nan) is rejected
        accept = u < torch.exp(-dH.nan_to_num(nan=math.inf))
        self.phi = torch.where(per_sample(accept, self.phi).bool(), phi_new, self.phi)
        self.n_accepted += accept
        self.stats.acceptance.append(accept.to(self.dtype).mean().item())
        finite = dH[torch.isfinite(dH)]
        self.stats.mean_dH.append(finite.mean().item() if finite.numel() else math.nan)
        self.stats.mean_exp_minus_dH.append(torch.exp(-finite).mean().item() if finite.numel() else math.nan)
        return accept

    # the kinetic term: M = 1 here; Fourier-accelerated HMC (lib.mcmc.fourier_hmc) overrides these three
    def _momenta(self, xi: torch.Tensor) -> torch.Tensor:
        """Momenta π ~ N(0, M) from white noise ξ ~ N(0, 1) of the same shape."""
        return xi

    def _hamiltonian(self, phi: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return hamiltonian(self.theory, phi, p)

    def _integrate(self, phi: torch.Tensor, p: torch.Tensor):
        return self._leapfrog(self.theory, phi, p, self.eps, self.n_steps)

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

    def settings(self) -> dict:
        return {**super().settings(), "eps": self.eps, "n_steps": self.n_steps}

    def _extra_state(self) -> dict:
        return {"n_accepted": self.n_accepted.cpu(), "stats": self.stats.as_dict()}

    def _load_extra_state(self, state: dict) -> None:
        self.n_accepted = state["n_accepted"].to(self.device)
        self.stats = HMCStats(**state["stats"])


ALGORITHMS = ("hmc", "fa-hmc", "cluster", "metropolis")


def sampler_class(algorithm: str):
    """The Markov-chain class of an ensemble algorithm (one of :data:`ALGORITHMS`)."""
    from .cluster import ClusterHMC
    from .fourier_hmc import FourierHMC
    from .metropolis import Metropolis

    return {"hmc": HMC, "fa-hmc": FourierHMC, "cluster": ClusterHMC, "metropolis": Metropolis}[algorithm]


def make_sampler(theory, n_chains: int, settings: "HMCSettings", **kw):
    """The Markov chain of ``settings.algorithm`` with the ensemble's settings (``kw``: seed, start,
    device, dtype, first_chain, per_chain_streams, fused, ...)."""
    cls = sampler_class(settings.algorithm)
    if settings.algorithm == "metropolis":
        kw.pop("fused", None)
        return cls(theory, n_chains, delta=settings.delta, **kw)
    extra = {"fa-hmc": {"mass": settings.mass}, "cluster": {"n_hmc": settings.n_hmc}}.get(settings.algorithm, {})
    if settings.algorithm != "hmc":
        kw.pop("fused", None)
    return cls(theory, n_chains, eps=settings.eps, n_steps=settings.n_steps, **extra, **kw)


@dataclass(frozen=True)
class HMCSettings(Settings):
    """Settings of an HMC ensemble (paper Sec. 4.1; the defaults are the paper's protocol).

    ``eps`` × ``n_steps`` is the trajectory (paper: 0.01 × 100, length 1); every chain is
    thermalised for ``n_burnin`` trajectories, then sampled ``n_per_chain`` times, ``n_spacing``
    trajectories apart. ``start``: ``"hot"`` (φ ~ N(0, 1), the paper's), ``"ordered"`` (a classical
    vacuum with a random sign per chain: the start that equilibrates fast in the broken phase) or
    ``"cold"`` (φ = 0).
    """

    stage = "hmc"
    eps: float = setting(0.01, doc="leapfrog step (paper: 0.01)")
    n_steps: int = setting(100, doc="leapfrog steps per trajectory (paper: 100)")
    n_burnin: int = setting(100, doc="burn-in updates of every chain (paper: 100 trajectories)")
    n_spacing: int = setting(64, doc="further updates before keeping a configuration (paper: 64)")
    n_per_chain: int = setting(1, doc="configurations kept per chain, n_spacing apart (paper: 1)")
    start: str = setting("hot", doc="hot (paper), ordered: the classical vacuum with a random sign (broken phase), "
                                    "or cold", choices=("hot", "ordered", "cold"))
    dtype: str = setting("float64", doc="dtype of the fields", choices=("float64", "float32"))
    algorithm: str = setting("hmc", omit_at_default=True,
                             doc="hmc (the paper's), fa-hmc (Fourier-accelerated), cluster (Swendsen-Wang + "
                                 "HMC), metropolis (local sweeps)", choices=("hmc", "fa-hmc", "cluster", "metropolis"))
    mass: float = setting(1.0, omit_at_default=True, doc="fa-hmc: the mass μ of the kinetic term's propagator")
    n_hmc: int = setting(1, omit_at_default=True, doc="cluster: HMC trajectories per cluster update")
    delta: float = setting(1.0, omit_at_default=True, doc="metropolis: the proposal width")

    def __post_init__(self):
        choice("algorithm", self.algorithm, ALGORITHMS)
        self._set("mass", positive_float("mass", self.mass))
        positive_int("n_hmc", self.n_hmc)
        self._set("delta", positive_float("delta", self.delta))
        self._set("eps", positive_float("eps", self.eps))
        positive_int("n_steps", self.n_steps)
        nonneg_int("n_burnin", self.n_burnin)
        positive_int("n_spacing", self.n_spacing)
        positive_int("n_per_chain", self.n_per_chain)
        choice("start", self.start, ("hot", "ordered", "cold"))
        self._set("dtype", dtype_name("dtype", self.dtype))

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def n_trajectories(self) -> int:
        """Trajectories per chain: burn-in plus n_per_chain × spacing."""
        return self.n_burnin + self.n_spacing * self.n_per_chain


def _check_size(n_configs, settings: HMCSettings, theory, batch_size, device) -> int:
    positive_int("n_configs", n_configs)
    if n_configs % settings.n_per_chain:
        raise ValueError(f"n_configs = {n_configs} is not a multiple of n_per_chain = {settings.n_per_chain}")
    itemsize = 8 if settings.dtype == "float64" else 4
    out_bytes = n_configs * theory.volume * itemsize
    limit = memory_limit()
    if out_bytes > limit:
        raise ValueError(f"{n_configs} configurations of {theory.volume} sites need {out_bytes / 2**30:.1f} GiB, "
                         f"more than this machine's {limit / 2**30:.1f} GiB; ask for fewer")
    n_chains = n_configs // settings.n_per_chain
    batch = min(positive_int("batch_size", batch_size or n_chains), n_chains)
    work = 8 * batch * theory.volume * itemsize  # fields, momenta, proposal, forces and temporaries
    if work > limit:
        raise ValueError(f"a batch of {batch} chains needs about {work / 2**30:.1f} GiB; pass a smaller batch_size")
    return n_chains


def hmc_ensemble(theory, n_configs: int, seed: int, settings: HMCSettings | None = None, *,
                 batch_size: int | None = None, device=None, progress_bar: bool = True, checkpoint_dir=None,
                 fused: bool = False, chains: tuple[int, int] | None = None, **overrides):
    """Independent HMC chains, each thermalised for ``n_burnin`` trajectories and then sampled
    ``n_per_chain`` times, ``n_spacing`` trajectories apart (:class:`HMCSettings`; keyword
    arguments override single settings, e.g. ``eps=0.1``). With the defaults this is the paper's
    protocol (Sec. 4.1): one configuration per chain, hot start, 100 + 64 trajectories.

    Chain i draws its random numbers from its own stream (seed, i) (:mod:`lib.rng`), so the
    result does not depend on ``batch_size`` (how many chains are updated together) or on
    interruptions. The configurations are returned chain-major (the ``n_per_chain`` samples of a
    chain are contiguous), so jackknife blocks of whole chains are contiguous blocks.

    With ``checkpoint_dir``, each batch's complete state (fields, generators, samples so far,
    settings) is saved there and an interrupted run resumes from it; a checkpoint made with other
    settings, theory or seed is refused in one line. ``fused`` runs the compiled leapfrog (results
    agree with the eager one to round-off, as across devices).

    ``chains = (start, stop)`` makes only chains start … stop − 1 of the ``n_configs / n_per_chain``
    (a shard, :mod:`lib.storage.shards`): exactly those configurations of the whole ensemble.

    Returns ``(configs, info)`` with configs of shape ``(n_configs, *lattice)`` on the CPU (or the
    shard's) and ``info`` holding the settings, the acceptance rate and the accepted updates.
    """
    settings = HMCSettings.build(settings, **overrides)
    seed = check_seed(seed)
    device = resolve_device(device)
    n_chains = _check_size(n_configs, settings, theory, batch_size, device)
    lo, hi = (0, n_chains) if chains is None else (int(chains[0]), int(chains[1]))
    if not 0 <= lo < hi <= n_chains:
        raise ValueError(f"chains {chains} do not lie in 0 … {n_chains}")
    batch_size = min(batch_size or n_chains, n_chains)
    configs, accepted = [], 0.0
    firsts = list(range(lo, hi, batch_size))
    marks = [settings.n_burnin + settings.n_spacing * (k + 1) for k in range(settings.n_per_chain)]
    for b, first in enumerate(firsts):
        nb = min(batch_size, hi - first)
        ckpt = None
        if checkpoint_dir is not None:
            os.makedirs(checkpoint_dir, exist_ok=True)
            ckpt = os.path.join(checkpoint_dir, f"chains{first:09d}-{first + nb:09d}.pt")
        samples = []
        options = {"fused": fused} if settings.algorithm == "hmc" else {}
        if ckpt and os.path.exists(ckpt):
            sampler = sampler_class(settings.algorithm).load(ckpt, theory, device=device, expect={
                "seed": seed, "first_chain": first, "n_chains": nb, "per_chain_streams": True,
                "hmc": settings.to_dict()}, **options)
            samples = list(sampler.samples)
        else:
            sampler = make_sampler(theory, nb, settings, seed=seed, start=settings.start, device=device,
                                   dtype=settings.torch_dtype, first_chain=first, per_chain_streams=True, **options)
            sampler.protocol = settings.to_dict()
        name = {"hmc": "HMC", "fa-hmc": "FA-HMC", "cluster": "cluster", "metropolis": "Metropolis"}[settings.algorithm]
        desc = f"{name} chains {first}-{first + nb - 1} of {n_chains}"
        sampler.samples = samples  # saved with every checkpoint
        for mark in marks[len(samples):]:
            sampler.run(mark - sampler.n_updates, progress_bar=progress_bar, desc=desc, checkpoint=ckpt)
            samples.append(sampler.phi.cpu().clone())
            if ckpt:
                sampler.save(ckpt)
        configs.append(torch.stack(samples, dim=1).reshape(nb * settings.n_per_chain, *theory.lattice_shape))
        if settings.algorithm == "metropolis":
            accepted += sampler.acceptance_rate * nb * settings.n_trajectories
        else:  # accepted trajectories, summed as integers (the HMC acceptance is part of the ensemble's identity)
            accepted += sampler.n_accepted.sum().item() / (settings.n_hmc if settings.algorithm == "cluster" else 1)
    acceptance = accepted / ((hi - lo) * settings.n_trajectories)
    info = {"sampler": settings.algorithm, "protocol": "independent-chains", "settings": settings.to_dict(),
            "seed": seed, "acceptance": acceptance, "n_accepted": accepted, "batch_size": batch_size}
    warn_if_frozen(acceptance, f"{name} at {theory.to_dict()}")
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


def hmc_request(theory, n_configs: int, seed: int, settings: HMCSettings) -> dict:
    """The cache request of an HMC ensemble: theory, settings key, size and seed."""
    from ..storage.ensembles import make_metadata

    meta = make_metadata(theory, settings.algorithm, settings, seed, n_configs=int(n_configs))
    meta["settings"] = settings.key()
    return meta


def cached_hmc_ensemble(theory, n_configs: int, seed: int, settings: HMCSettings | None = None, *,
                        batch_size: int | None = 1024, device=None, cache_dir=None, progress_bar: bool = True,
                        verbose: bool = True, fused: bool = False, **overrides):
    """:func:`hmc_ensemble` through the ensemble cache (:func:`lib.storage.cache.cached_ensemble`):
    loads the ensemble if one made with exactly these settings, size and seed exists, otherwise
    makes and stores it. Neither the batch size nor the device is part of the request.

    Returns an :class:`lib.storage.Ensemble` (``.configs`` numpy, ``.metadata`` dict).
    """
    from ..storage.cache import cached_ensemble

    settings = HMCSettings.build(settings, **overrides)
    request = hmc_request(theory, n_configs, seed, settings)

    def make():
        configs, info = hmc_ensemble(theory, n_configs, seed, settings, batch_size=batch_size, device=device,
                                     progress_bar=progress_bar, fused=fused)
        return configs, {"acceptance": info["acceptance"], "device": str(resolve_device(device))}

    return cached_ensemble(request, make, cache_dir=cache_dir, verbose=verbose)
