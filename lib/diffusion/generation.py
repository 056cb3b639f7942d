"""What a trained score model computes, uncached: configurations by the reverse process
(:func:`generate`), log q of configurations by the probability-flow ODE
(:func:`model_log_likelihood`, eq. 3.15), proposals with exact path-space weights for DM-MC
(:func:`dm_path_proposals`), the effective action of a one-component score (eqs. 3.11, 3.20) and
Tweedie's denoiser. The cached versions are in :mod:`.derived`.

Sample i draws its noise (or its Hutchinson probes) from its own stream (seed, i)
(:class:`lib.rng.SampleStreams`), in a domain of its own per computation, so the batch size,
resuming and the device split change nothing.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..rng import SampleStreams, check_seed, default_block
from ..runtime import progress, resolve_device
from ..settings import positive_int
from .likelihood import LikelihoodResult, LikelihoodSettings, log_likelihood
from .paths import PathSettings, path_sample
from .samplers import SampleSettings, prior_sample, sample
from .training import Normaliser

STREAM_DOMAIN = "dm"
PROBE_DOMAIN = "dm-likelihood-probes"
PATH_DOMAIN = "dm-path"


def _batches(first: int, n: int, batch_size: int, block: int):
    """(start, size) of the batches covering samples first … first + n − 1, cut at multiples of
    the stream block so that each batch holds whole streams."""
    step = max(block, batch_size - batch_size % block)
    out, i = [], first
    while i < first + n:
        nb = min(step, first + n - i)
        out.append((i, nb))
        i += nb
    return out


@torch.no_grad()
def generate(model, n: int, seed: int, settings: SampleSettings | None = None, *, lattice_shape=None,
             normaliser: dict | None = None, batch_size: int = 1024, device=None, record_times=None,
             progress_bar: bool = True, first: int = 0, on_batch=None, domain: str = STREAM_DOMAIN, **overrides):
    """Generate configurations ``first, …, first + n − 1`` with the sampler of ``settings``
    (:class:`SampleSettings`; keyword arguments override single settings, e.g. ``n_steps=100``),
    in batches of ``batch_size`` on ``device``, mapped back to physical fields.

    Configuration i is made from its own random stream (``domain``, seed, i): the result does not
    depend on the batch size, and a stage that generates for another purpose (DM-MC proposals) passes
    its own ``domain``, so that it never repeats another stage's draws with the same seed.
    ``on_batch(start, configs)`` is called after every finished batch (to keep
    it). Returns ``(configs (n, *lattice) float64 on the CPU, records)`` where records maps each
    requested diffusion time to the (physical) batch at that time (first batch, EM only).
    """
    settings = SampleSettings.build(settings, **overrides)
    seed = check_seed(seed)
    positive_int("n", n)
    positive_int("batch_size", batch_size)
    if lattice_shape is None:
        raise ValueError("generate needs the lattice shape")
    device = resolve_device(device)
    model = model.to(device).eval()
    dtype = next(model.parameters()).dtype
    shape = tuple(lattice_shape)
    norm = Normaliser.from_dict(normaliser) if normaliser else Normaliser("none")
    block = default_block(math.prod(shape))
    batches = _batches(first, n, batch_size, block)
    out, records = [], {}
    for b, (start, nb) in enumerate(progress(batches, desc="generating", disable=not progress_bar or len(batches) == 1)):
        streams = SampleStreams(domain, seed, start, nb, device, block=block)
        x_T = prior_sample(model.sde, (nb, *shape), streams, device, dtype)
        res = sample(model, model.sde, x_T, settings, streams, progress_bar=progress_bar and len(batches) == 1,
                     record_times=record_times if b == 0 else None)
        if b == 0:
            records = {t: norm.inverse(v.double()).cpu() for t, v in res.records.items()}
        x = model.sde.canonical(norm.inverse(res.x.double())).cpu()
        out.append(x)
        if on_batch is not None:
            on_batch(start, x)
    return torch.cat(out), records


@torch.no_grad()
def effective_action(score_fn, x_grid, t, device=None, dtype=None) -> np.ndarray:
    r"""The effective action of a one-component score, integrated along a grid (paper eqs. 3.11, 3.20):

    .. math:: S_{\rm DM}(φ, t) = -\int_{φ_0}^{φ} dφ'\, s(φ', t), \qquad ∂_φ S_{\rm DM} = -s,

    so that e^{−S_DM(·, t)} ∝ p_t, the density whose score is ``s`` at diffusion time t (the
    reverse-process time of the paper is τ = T − t). ``score_fn(x, t)`` takes x of shape (n, 1)
    and t of shape (n,) — a trained :class:`lib.diffusion.networks.MLPScore` with ``dim=1`` or an exact
    score. The integral is the cumulative trapezoidal rule on ``x_grid`` (strictly increasing;
    error O(h²) per unit length). The additive constant is fixed so that min S_DM = 0 on the grid;
    the paper's shift ΔS₀ is then min S. ``device``/``dtype`` default to those of the
    network's parameters (float64 on the CPU for a plain function).

    Returns a numpy array of the same length as ``x_grid``.
    """
    x = np.asarray(x_grid, dtype=np.float64)
    if x.ndim != 1 or x.size < 2 or not np.all(np.diff(x) > 0):
        raise ValueError("x_grid must be a strictly increasing 1D grid of at least two points")
    params = list(score_fn.parameters()) if isinstance(score_fn, torch.nn.Module) else []
    if device is None:
        device = params[0].device if params else torch.device("cpu")
    if dtype is None:
        dtype = params[0].dtype if params else torch.float64
    xt = torch.as_tensor(x, dtype=dtype, device=device).reshape(-1, 1)
    tt = torch.full((x.size,), float(t), dtype=dtype, device=device)
    s = score_fn(xt, tt).reshape(-1).double().cpu().numpy()
    S = -np.concatenate([[0.0], np.cumsum(0.5 * (s[1:] + s[:-1]) * np.diff(x))])
    return S - S.min()


def model_log_likelihood(model, configs, seed: int, settings: LikelihoodSettings | None = None, *,
                         normaliser: dict | None = None, batch_size: int = 64, device=None, first: int = 0,
                         progress_bar: bool = True, on_batch=None, **overrides) -> LikelihoodResult:
    r"""log q(φ) of physical configurations ``configs`` (n, *lattice) under a trained model, by the
    probability-flow ODE (:func:`lib.diffusion.likelihood.log_likelihood`, paper eq. 3.15) with
    ``settings`` (:class:`LikelihoodSettings`; keyword arguments override single settings).

    The network sees y = aφ + b (``normaliser``, as stored in the checkpoint), so the density of the
    physical field carries the Jacobian of that map:

    .. math:: \log q_φ(φ) = \log q_y(aφ + b) + V \log a .

    Configuration i's Hutchinson probes come from its own stream (seed, ``first`` + i). The
    adaptive solver takes one step size for a batch, so log q changes with the batch composition
    at the level of the solver tolerance (not bitwise). ``on_batch(start, log_q, nfe)`` is called
    after every batch. Returns a :class:`LikelihoodResult` with log_q (float64, CPU, nats), the
    encoded x_T (network units) and the solver's right-hand-side evaluations summed over batches.
    """
    settings = LikelihoodSettings.build(settings, **overrides)
    seed = check_seed(seed)
    positive_int("batch_size", batch_size)
    device = resolve_device(device)
    x = torch.as_tensor(configs)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"configs must have shape (n >= 1, *lattice), got {tuple(x.shape)}")
    model = model.to(device).eval()
    dtype = next(model.parameters()).dtype
    norm = Normaliser.from_dict(normaliser) if normaliser else Normaliser("none")
    jacobian = math.prod(x.shape[1:]) * math.log(norm.a)
    starts = list(range(0, x.shape[0], batch_size))
    log_q, x_T, nfes = [], [], []
    for start in progress(starts, desc="log q", disable=not progress_bar or len(starts) == 1):
        y = norm.forward(x[start:start + batch_size].to(device=device, dtype=torch.float64)).to(dtype)
        streams = SampleStreams(PROBE_DOMAIN, seed, first + start, y.shape[0], device)
        res = log_likelihood(model, model.sde, y, eps=settings.eps, n_probes=settings.n_probes, generator=streams,
                             rtol=settings.rtol, atol=settings.atol, method=settings.method, trace=settings.trace,
                             probe=settings.probe)
        lq = res.log_q.double().cpu() + jacobian
        log_q.append(lq), x_T.append(res.x_T.cpu()), nfes.append(res.nfe)
        if on_batch is not None:
            on_batch(start, lq, res.nfe)
    return LikelihoodResult(torch.cat(log_q), torch.cat(x_T), sum(nfes))


def data_spectrum(configs, normaliser: dict | None = None) -> torch.Tensor:
    """The power spectrum C(p) = ⟨|ỹ(p)|²⟩/V of an ensemble in the network's units y = aφ + b
    (:meth:`lib.theories.GaussianField.fit`): the per-mode scale of the path kernels."""
    from ..theories import GaussianField

    norm = Normaliser.from_dict(normaliser) if normaliser else Normaliser("none")
    return GaussianField.fit(norm.forward(torch.as_tensor(configs, dtype=torch.float64))).spectrum


def dm_path_proposals(model, n: int, seed: int, settings: PathSettings | None = None, *, theory, spectrum,
                      normaliser: dict | None = None, batch_size: int = 256, device=None, first: int = 0,
                      progress_bar: bool = True, on_batch=None, **overrides):
    r"""Proposals ``first, …, first + n − 1`` for DM-MC with exact path-space weights
    (:mod:`lib.diffusion.paths`): configurations φ (physical, float64, CPU) and

    .. math:: \log W = -S(φ) - V\log a + \sum_k \log F - \log π - \sum_k \log Q

    (log p of the field in network units y = aφ + b, up to −log Z), so that the independence
    chain :func:`lib.mcmc.independence_chain` ``(log_w, 0)`` is exact for e^{−S}. Path i draws
    from its own stream (seed, i) and costs ``settings.n_steps`` network evaluations.
    ``on_batch(start, configs, log_w)`` after every batch. Returns ``(configs, log_w)``."""
    settings = PathSettings.build(settings, **overrides)
    seed = check_seed(seed)
    positive_int("n", n)
    positive_int("batch_size", batch_size)
    device = resolve_device(device)
    model = model.to(device).eval()
    dtype = next(model.parameters()).dtype
    shape = tuple(theory.lattice_shape)
    norm = Normaliser.from_dict(normaliser) if normaliser else Normaliser("none")
    jacobian = math.prod(shape) * math.log(norm.a)
    out, weights = [], []
    starts = list(range(first, first + n, batch_size))
    for start in progress(starts, desc="DM-MC proposals", disable=not progress_bar or len(starts) == 1):
        nb = min(batch_size, first + n - start)
        streams = SampleStreams(PATH_DOMAIN, seed, start, nb, device)
        res = path_sample(model, model.sde, (nb, *shape), settings, spectrum=spectrum, noise=streams, device=device,
                          dtype=dtype, progress_bar=progress_bar and len(starts) == 1)
        phi = model.sde.canonical(norm.inverse(res.x))
        log_w = (-theory.action(phi) - jacobian + res.log_path).cpu()
        out.append(phi.cpu()), weights.append(log_w)
        if on_batch is not None:
            on_batch(start, phi.cpu(), log_w)
    return torch.cat(out), torch.cat(weights)


@torch.no_grad()
def tweedie_denoise(model, x_t: torch.Tensor, t) -> torch.Tensor:
    r"""The posterior mean of the clean field given a noisy one (Tweedie's formula), from the score:

    .. math:: \mathbb E[φ_0 \mid φ_t] = \frac{φ_t + Ξ(t)\, s_θ(φ_t, t)}{f(t, 0)}

    (VE: f = 1). With the exact score this is exact; applied to a trained model it shows, mode by
    mode, what the model has learned to denoise at time t. ``x_t`` is in the network's units.
    """
    sde = model.sde
    tt = torch.as_tensor(t, dtype=torch.float64)  # a scalar time
    s = model(x_t, torch.full((x_t.shape[0],), float(tt), dtype=x_t.dtype, device=x_t.device))
    return (x_t + float(sde.Xi(tt)) * s) / float(sde.f(tt))
