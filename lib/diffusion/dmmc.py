r"""DM-MC: a Markov chain whose proposals are independent diffusion-model samples (paper Sec. 4.4).

The chain is an independence Metropolis sampler (:mod:`lib.mcmc.independence`): proposal φ' is
accepted with (eq. 4.9)

.. math:: A(φ → φ') = \min\big(1,\ e^{\,w(φ') - w(φ)}\big),\qquad w = -S - \log q ,

and samples e^{−S} exactly when q is the density the proposals were drawn from. Two variants:

* ``"paths"`` (exact, the default): the proposal is a whole reverse path with Gaussian kernels and
  w is its path-space log weight (:mod:`lib.diffusion.paths`); no network evaluation beyond
  generation.
* ``"paper"``: the paper's recipe — Euler–Maruyama proposals weighed with the probability-flow
  ODE's log q from Hutchinson's trace (:mod:`lib.diffusion.likelihood`). The chain's target is
  e^{−S} p_EM / q̂_ODE, not e^{−S}: kept to reproduce the paper, labelled inexact.

The chain is a deterministic function of the proposals (cached with their weights; an
interrupted run resumes from the finished batches) and of the chain's own uniforms, which come
from (seed, "dm-mc") and not from the proposals' streams. So a resumed chain equals an
uninterrupted one, bitwise.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..mcmc.independence import IndependenceChain, independence_chain
from ..rng import check_seed, stream_seed
from ..runtime import resolve_device
from ..settings import Settings, bounded_float, choice, positive_int, setting
from .paths import VARIANCES

CHAIN_DOMAIN = "dm-mc"
PROPOSAL_DOMAIN = "dm-mc-proposals"  # the paper variant's EM proposals: never the draws of `sample` with the same seed
SPECTRUM_DOMAIN = "dm-mc-spectrum"  # the model's own samples that set the path kernels' scale
VARIANTS = ("paths", "paper")


@dataclass(frozen=True)
class DMMCSettings(Settings):
    """Settings of a DM-MC chain: the ``variant`` (``"paths"``: exact path-space weights;
    ``"paper"``: Euler–Maruyama proposals with the ODE's Hutchinson log q), ``n_steps`` reverse
    steps per proposal (paths: 100 is plenty with the propagator kernels; paper: 500 EM steps),
    the path kernels' ``variance`` (paths only), and the likelihood's ``n_probes`` and ``rtol``
    (paper only; atol = rtol as in the paper's code)."""

    stage = "dm-mc"
    variant: str = setting("paths", doc="paths: exact path-space weights; paper: Euler-Maruyama proposals with the "
                                        "ODE's Hutchinson log q (the paper's recipe; not exact)",
                           choices=("paths", "paper"))
    n_steps: int = setting(100, doc="reverse steps per proposal (100 for paths; the paper variant takes 500 unless "
                                    "given)")
    variance: str = setting("propagator", doc="the path kernels' variances: per momentum mode, per site, or the "
                                              "forward kernel's (for U(1) angles)",
                            choices=VARIANCES)
    n_probes: int = setting(10, doc="Hutchinson probes of the paper's log q")
    rtol: float = setting(1e-5, doc="tolerance of the ODE for the paper's log q")

    def __post_init__(self):
        choice("variant", self.variant, VARIANTS)
        positive_int("n_steps", self.n_steps)
        if self.n_steps < 2:
            raise ValueError(f"n_steps must be >= 2, got {self.n_steps}")
        choice("variance", self.variance, VARIANCES)
        positive_int("n_probes", self.n_probes)
        self._set("rtol", bounded_float("rtol", self.rtol, 1e-14, 1.0, "a relative tolerance"))

    @property
    def exact(self) -> bool:
        """Whether the chain samples e^{−S} exactly (the path weights do; the paper's recipe does not)."""
        return self.variant == "paths"


@dataclass
class DMMCResult:
    """A DM-MC chain: the configurations it visits (``configs``, one per proposal, numpy), the
    chain's history (:class:`lib.mcmc.IndependenceChain`: indices, acceptances, log weights), the
    proposals (an :class:`lib.storage.Ensemble`) and a JSON-ready ``summary`` (acceptance, the
    predicted acceptance erfc(s/2) from the robust spread s of the weights, τ_int of |M| with
    Wolff's window, network evaluations per proposal, exactness)."""

    configs: np.ndarray
    chain: IndependenceChain
    proposals: object
    summary: dict


def chain_seed(seed: int) -> int:
    """The seed of the chain's uniforms, separate from the proposals' streams of the same seed."""
    return stream_seed(CHAIN_DOMAIN, check_seed(seed), 0)


def robust_spread(x) -> float:
    """1.4826 × the median absolute deviation: the standard deviation of the bulk of ``x``, blind
    to the far tail of outlier proposals (which never get accepted and do not lower acceptance)."""
    x = np.asarray(x, dtype=float)
    return 1.4826 * float(np.median(np.abs(x - np.median(x))))


def kish_ess(log_w) -> float:
    """Kish's effective sample size (Σ W)² / Σ W² of importance weights W = e^{log_w}: small when a
    few proposals carry most of the weight, and then a chain's error bar is not yet reliable."""
    w = np.exp(np.asarray(log_w, dtype=float) - np.max(log_w))
    return float(w.sum() ** 2 / (w ** 2).sum())


def theory_of_checkpoint(state: dict, lattice_shape=None):
    """The theory a checkpoint's model was trained on (from its training ensemble's metadata), as
    an object with an action; L replaced by ``lattice_shape`` when given. Refused in one line when
    the checkpoint records no lattice theory (φ⁴ or U(1))."""
    import dataclasses

    from ..theories import theory_from_dict

    meta = state.get("metadata", {})
    th = dict((meta.get("training_ensemble") or {}).get("theory") or meta.get("theory") or {})
    if th.get("name") not in ("phi4", "u1"):
        raise ValueError("the checkpoint does not record a φ⁴ or U(1) training ensemble (theory "
                         f"{th.get('name', 'unknown')!r}); DM-MC needs the action of the theory")
    theory = theory_from_dict(th)
    if lattice_shape is not None:
        theory = dataclasses.replace(theory, L=int(lattice_shape[-1]))
    return theory


def model_spectrum(checkpoint, seed: int, n: int = 256, *, theory=None, batch_size: int = 256, device=None,
                   cache_dir=None):
    """The power spectrum of the model's own samples (network units), for the path kernels'
    variances when the training data are not at hand: ``n`` samples from 100 Euler–Maruyama steps
    (cached), then the spectrum of their fields. Any spectrum keeps the chain exact; a good one
    raises the acceptance."""
    from .training import load_checkpoint
    from .derived import cached_dm_ensemble
    from .generation import data_spectrum

    state = load_checkpoint(checkpoint)
    shape = tuple(theory.lattice_shape) if theory is not None else None
    ens = cached_dm_ensemble(checkpoint, n, seed, n_steps=100, lattice_shape=shape, batch_size=batch_size,
                             device=device, cache_dir=cache_dir, progress_bar=False, verbose=False,
                             domain=SPECTRUM_DOMAIN)
    return data_spectrum(ens.configs, state["metadata"].get("normaliser"))


@dataclass
class DMMCProposals:
    """The proposals of a DM-MC chain with their weights (eq. 4.9): ``proposals`` (an
    :class:`lib.storage.Ensemble`), ``log_weight`` w = log p − log q up to a constant (paths: the
    exact path-space weight; paper: −S − log q with the ODE's Hutchinson log q), ``action`` S of
    each proposal, ``log_q`` (the paper variant's, else None) and ``nfe`` (network evaluations per
    proposal), and the ``theory`` they are weighed for."""

    proposals: object
    log_weight: np.ndarray
    action: np.ndarray
    log_q: np.ndarray | None
    nfe: float
    theory: object = None

    @property
    def configs(self) -> np.ndarray:
        return np.asarray(self.proposals.configs)


def dm_mc_proposals(checkpoint, n: int, seed: int, settings: DMMCSettings | None = None, *, theory=None,
                    spectrum=None, batch_size: int = 256, likelihood_batch: int = 64, device=None, cache_dir=None,
                    progress_bar: bool = True, verbose: bool = True, **overrides) -> DMMCProposals:
    r"""``n`` proposals from the model in ``checkpoint`` with their log weights
    w = log p(x) − log q(x) = −S(x) − log q(x) (eq. 4.9, up to the constant log Z), cached.

    ``settings.variant`` ``"paths"``: reverse paths with path-space weights (exact; ``spectrum`` is
    the data's power spectrum in network units, :func:`data_spectrum`, or the model's own samples',
    :func:`model_spectrum`, when None). ``"paper"``: Euler–Maruyama proposals weighed with the
    probability-flow ODE's log q and Hutchinson probes (the paper's recipe; the noisy log q biases
    the chain). ``theory`` defaults to the checkpoint's training theory. Proposals and weights are
    cached under a key of the model's request, the settings, the spectrum's hash, n and the seed.
    """
    from .derived import cached_dm_ensemble, cached_dm_path_proposals, cached_log_likelihood
    from .likelihood import LikelihoodSettings
    from .models import check_lattice
    from .training import load_model

    settings = DMMCSettings.build(settings, **overrides)
    seed = check_seed(seed)
    positive_int("n", n)
    device = resolve_device(device)
    model, state = load_model(checkpoint, device=device)
    if theory is None:
        theory = theory_of_checkpoint(state)
    shape = check_lattice(model, state["metadata"], tuple(theory.lattice_shape))
    del model
    log_q = None
    if settings.variant == "paths":
        from .paths import PathSettings

        if spectrum is None and settings.variance != "forward":
            spectrum = model_spectrum(checkpoint, seed, theory=theory, batch_size=batch_size, device=device,
                                      cache_dir=cache_dir)
        props = cached_dm_path_proposals(checkpoint, n, seed, PathSettings(n_steps=settings.n_steps,
                                                                           variance=settings.variance),
                                         theory=theory, spectrum=spectrum, batch_size=batch_size, device=device,
                                         cache_dir=cache_dir, progress_bar=progress_bar, verbose=verbose)
        log_w = np.asarray(props.metadata["log_weight"], dtype=np.float64)
        action = theory.action(torch.as_tensor(props.configs, dtype=torch.float64)).numpy()
        nfe = float(settings.n_steps)
    else:
        props = cached_dm_ensemble(checkpoint, n, seed, n_steps=settings.n_steps, lattice_shape=shape,
                                   domain=PROPOSAL_DOMAIN,
                                   batch_size=batch_size, device=device, cache_dir=cache_dir,
                                   progress_bar=progress_bar, verbose=verbose)
        lik = LikelihoodSettings(rtol=settings.rtol, atol=settings.rtol, n_probes=settings.n_probes)
        lq = cached_log_likelihood(checkpoint, props.configs, seed, lik, batch_size=likelihood_batch, device=device,
                                   cache_dir=cache_dir, progress_bar=progress_bar, verbose=verbose)
        action = theory.action(torch.as_tensor(props.configs, dtype=torch.float64)).numpy()
        log_q = lq[:, 0]
        log_w = -action - log_q
        nfe = settings.n_steps + float(np.mean(lq[:, 1]))
    return DMMCProposals(props, log_w, action, log_q, nfe, theory)


def dm_mc_proposal_range(checkpoint, n: int, seed: int, settings: DMMCSettings | None = None, *, first: int,
                         stop: int, theory=None, spectrum=None, batch_size: int = 256, likelihood_batch: int = 64,
                         device=None, progress_bar: bool = True, **overrides) -> DMMCProposals:
    """Proposals ``first … stop − 1`` of the request (``n``, ``seed``, ``settings``) of
    :func:`dm_mc_proposals`, computed directly (not cached): what shard K of N makes. Proposal i
    draws from its own streams (seed, i), so these are the proposals — configurations, log q, log
    weights — that the whole request has at these indices, up to the network's round-off between
    batch sizes. ``proposals`` is then a plain tensor of the configurations, ``nfe`` per proposal."""
    from .generation import dm_path_proposals, generate, model_log_likelihood
    from .likelihood import LikelihoodSettings
    from .models import check_lattice
    from .paths import PathSettings
    from .training import load_model

    settings = DMMCSettings.build(settings, **overrides)
    seed = check_seed(seed)
    positive_int("n", n)
    if not (0 <= first < stop <= n):
        raise ValueError(f"the range {first}…{stop - 1} is not a part of 0…{n - 1}")
    device = resolve_device(device)
    model, state = load_model(checkpoint, device=device)
    if theory is None:
        theory = theory_of_checkpoint(state)
    shape = check_lattice(model, state["metadata"], tuple(theory.lattice_shape))
    norm = state["metadata"].get("normaliser")
    if settings.variant == "paths":
        if spectrum is None and settings.variance != "forward":
            raise ValueError("a shard of path proposals needs the kernels' spectrum (the model's own samples' "
                             "depends on the whole request): pass spectrum=, or use variance='forward'")
        x, log_w = dm_path_proposals(model, stop - first, seed, PathSettings(n_steps=settings.n_steps,
                                                                               variance=settings.variance),
                                     theory=theory, spectrum=spectrum, normaliser=norm, batch_size=batch_size,
                                     device=device, first=first, progress_bar=progress_bar)
        log_w = log_w.double().numpy()
        action = theory.action(x.double()).numpy()
        return DMMCProposals(x, log_w, action, None, np.full(len(x), float(settings.n_steps)), theory)
    x, _ = generate(model, stop - first, seed, n_steps=settings.n_steps, lattice_shape=shape, normaliser=norm,
                    batch_size=batch_size, device=device, first=first, domain=PROPOSAL_DOMAIN,
                    progress_bar=progress_bar)
    lik = LikelihoodSettings(rtol=settings.rtol, atol=settings.rtol, n_probes=settings.n_probes)
    rows = []  # (log q, network evaluations of its batch) per proposal, as cached_log_likelihood keeps them
    model_log_likelihood(model, x, seed, lik, normaliser=norm, batch_size=likelihood_batch, device=device,
                         first=first, progress_bar=progress_bar,
                         on_batch=lambda start, lq, nfe: rows.append(torch.stack([lq, torch.full_like(lq, float(nfe))],
                                                                                 1)))
    lq = torch.cat(rows).double().numpy()
    action = theory.action(x.double()).numpy()
    return DMMCProposals(x, -action - lq[:, 0], action, lq[:, 0], settings.n_steps + lq[:, 1], theory)


def chain_from_proposals(got: DMMCProposals, seed: int, settings: DMMCSettings) -> DMMCResult:
    """The independence chain (eq. 4.9) through given proposals, its uniforms from (seed, "dm-mc"),
    and its summary (acceptance, the predicted acceptance erfc(s/2), τ_int of |M| or of Q, exactness)."""
    from ..analysis.observables import abs_magnetisation
    from ..analysis.stats import autocorrelation

    props, log_w = got.proposals, np.asarray(got.log_weight, dtype=np.float64)
    n = len(log_w)
    if n < 2:
        raise ValueError(f"a chain needs at least 2 proposals, got n = {n}")
    chain = independence_chain(log_w, chain_seed(seed))
    all_configs = np.asarray(props.configs if hasattr(props, "configs") else props)
    configs = all_configs[chain.index]
    nfe = float(np.mean(got.nfe))
    summary = {"variant": settings.variant, "exact": settings.exact, "n_proposals": int(n),
               "acceptance": chain.acceptance, "n_accepted": int(chain.accepted[1:].sum()),
               "robust_spread": robust_spread(log_w), "kish_ess": kish_ess(log_w), "nfe_per_proposal": nfe}
    from scipy.special import erfc

    summary["predicted_acceptance"] = float(erfc(summary["robust_spread"] / 2))
    # τ_int of the observable that decorrelates slowest: |M| for φ⁴, the topological charge for U(1)
    if hasattr(got.theory, "topological_charge"):
        key, series = "Q", got.theory.topological_charge(torch.as_tensor(configs)).numpy()
    else:
        key, series = "absM", abs_magnetisation(configs)
    moved = np.ptp(configs.reshape(n, -1), axis=0).any()
    summary["tau_observable"] = key
    if np.ptp(series) > 0 and n >= 5:  # the Γ-method needs at least five measurements
        ac = autocorrelation(series, name="dm-mc")
        summary.update({f"tau_int_{key}": float(ac.tau_int), f"tau_int_{key}_error": float(ac.tau_int_error)})
    else:  # constant (the chain never moved: τ_int ≥ n, or one sector only), or too short to measure
        summary.update({f"tau_int_{key}": float("inf") if not moved else float("nan"),
                        f"tau_int_{key}_error": float("nan")})
    if summary["n_accepted"] == 0:
        import warnings

        warnings.warn(f"the DM-MC chain never moved: none of its {n - 1} proposals after the first was accepted "
                      "(its configurations are one configuration repeated); train the model longer or use "
                      "the exact path variant with more steps", RuntimeWarning, stacklevel=3)
    return DMMCResult(configs, chain, props, summary)


def dm_mc_chain(checkpoint, n: int, seed: int, settings: DMMCSettings | None = None, *, theory=None, spectrum=None,
                batch_size: int = 256, likelihood_batch: int = 64, device=None, cache_dir=None,
                progress_bar: bool = True, verbose: bool = True, **overrides) -> DMMCResult:
    r"""Run a DM-MC chain of ``n`` proposals from the model in ``checkpoint`` (eq. 4.9): the
    proposals of :func:`dm_mc_proposals` through :func:`chain_from_proposals`.

    ``theory`` defaults to the checkpoint's training theory; ``spectrum`` (paths only; the data's
    power spectrum in network units, :func:`data_spectrum`) defaults to that of the model's own
    samples (:func:`model_spectrum`). Proposals and their weights are cached under a key made of
    the model's request, the settings, the spectrum's hash, n and the seed; finished batches are
    kept, so an interrupted run resumes and gives the same chain.
    """
    settings = DMMCSettings.build(settings, **overrides)
    seed = check_seed(seed)
    positive_int("n", n)
    if n < 2:
        raise ValueError(f"a chain needs at least 2 proposals, got n = {n}")
    got = dm_mc_proposals(checkpoint, n, seed, settings, theory=theory, spectrum=spectrum, batch_size=batch_size,
                          likelihood_batch=likelihood_batch, device=device, cache_dir=cache_dir,
                          progress_bar=progress_bar, verbose=verbose)
    return chain_from_proposals(got, seed, settings)


@dataclass
class HybridResult:
    """A hybrid HMC/DM chain: ``measurements`` (cycles × chains, numpy) of ``measure`` after every
    cycle, the DM moves' acceptance per cycle and chain (``accepted``), HMC's acceptance, and the
    work done (trajectories and network evaluations per chain)."""

    measurements: np.ndarray
    accepted: np.ndarray
    hmc_acceptance: float
    trajectories: int
    nfe: int


def hybrid_chain(score_fn, sde, theory, n_cycles: int, seed: int, *, n_chains: int, spectrum, hmc_per_cycle: int = 10,
                 eps: float = 0.1, n_steps: int = 10, path=None, normaliser: dict | None = None, measure=None,
                 n_burnin: int = 0, start="ordered", device=None, dtype=torch.float32,
                 progress_bar: bool = False) -> HybridResult:
    r"""An exact chain that alternates ``hmc_per_cycle`` HMC trajectories with one DM jump.

    The state is a field φ and a reverse path ending in it; the target on that space is
    p(φ) F(path | φ), whose φ-marginal is e^{−S}. One cycle: (i) HMC trajectories on φ (they keep
    p invariant); (ii) a fresh path given φ from the forward kernels (:func:`path_refresh`: a Gibbs
    step, exact); (iii) an independence proposal of a whole new path (:func:`path_sample`),
    accepted with min(1, W'/W). Each step keeps the target invariant, so the composition is exact
    whatever the network. A jump costs 2 N network evaluations (N to weigh the refreshed path, in
    parallel, N to draw the new one). ``score_fn`` is the model (or an exact score) in network
    units y = aφ + b (``normaliser``); ``measure(φ)`` per chain after each cycle (default: M).
    Chain i's randoms come from (seed, i) streams: HMC's, the refresh's and the proposal's.
    """
    from ..mcmc.hmc import HMC
    from ..rng import SampleStreams, generator
    from ..runtime import progress
    from .paths import PathSettings, path_refresh, path_sample
    from .training import Normaliser

    settings = PathSettings.build(path)
    seed = check_seed(seed)
    positive_int("n_cycles", n_cycles)
    positive_int("hmc_per_cycle", hmc_per_cycle)
    device = resolve_device(device)
    norm = Normaliser.from_dict(normaliser) if normaliser else Normaliser("none")
    shape = tuple(theory.lattice_shape)
    jac = math.prod(shape) * math.log(norm.a)
    measure = measure or (lambda phi: phi.mean(dim=tuple(range(1, phi.ndim))))
    hmc = HMC(theory, n_chains, eps=eps, n_steps=n_steps, seed=seed, start=start, device=device,
              per_chain_streams=True)
    hmc.run(n_burnin, progress_bar=False)
    uniforms = generator(stream_seed("dm-hybrid-accept", seed, 0), device)
    out, accepted = [], []
    for cycle in progress(range(n_cycles), desc="hybrid HMC/DM", disable=not progress_bar):
        hmc.run(hmc_per_cycle, progress_bar=False)
        phi = hmc.phi
        first = cycle * n_chains
        ref = path_refresh(score_fn, sde, norm.forward(phi), settings, spectrum=spectrum,
                           noise=SampleStreams("dm-hybrid-refresh", seed, first, n_chains, device), dtype=dtype)
        w_cur = -theory.action(phi) - jac + ref.log_path
        prop = path_sample(score_fn, sde, (n_chains, *shape), settings, spectrum=spectrum,
                           noise=SampleStreams("dm-hybrid-proposal", seed, first, n_chains, device), device=device,
                           dtype=dtype)
        phi_new = norm.inverse(prop.x)
        w_new = -theory.action(phi_new) - jac + prop.log_path
        u = torch.rand(n_chains, generator=uniforms, device=device, dtype=torch.float64)
        acc = torch.log(u) < (w_new - w_cur)
        hmc.phi = torch.where(acc.reshape(-1, *([1] * len(shape))), phi_new.to(hmc.phi.dtype), hmc.phi)
        accepted.append(acc.cpu().numpy())
        v = measure(hmc.phi)
        out.append(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
    return HybridResult(np.stack(out), np.stack(accepted), hmc.acceptance_rate, n_cycles * hmc_per_cycle,
                        n_cycles * 2 * settings.n_steps)


__all__ = ["DMMCResult", "DMMCSettings", "HybridResult", "VARIANTS", "chain_seed", "dm_mc_chain", "hybrid_chain",
           "kish_ess", "model_spectrum", "robust_spread", "theory_of_checkpoint", "chain_from_proposals",
           "dm_mc_proposal_range"]
