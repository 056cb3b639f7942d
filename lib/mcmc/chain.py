"""Common machinery of the batched Markov-chain samplers (HMC, Metropolis, Langevin): start
configurations, random numbers, a run loop with progress bar and measurements, and a complete
saved state so that an interrupted run resumes bit for bit."""
from __future__ import annotations

import abc
import math
import os
import warnings

import numpy as np
import torch

from ..rng import SampleStreams, check_seed, generator
from ..runtime import check_batch, per_sample, progress, resolve_device
from ..storage.files import load_checkpoint_file, save_checkpoint

CHAIN_FORMAT = "dmsq-chain-v2"


class BatchStream:
    """One generator for the whole batch of chains (the same interface as
    :class:`lib.rng.SampleStreams`): fast for many cheap chains, but chain i's numbers depend on
    how many chains run together."""

    def __init__(self, seed: int, n: int, device):
        self.n, self.device = n, device
        self.generator = generator(seed, device)

    def randn(self, shape, dtype=torch.float32):
        return torch.randn((self.n, *shape), generator=self.generator, device=self.device, dtype=dtype)

    def rand(self, shape=(), dtype=torch.float32):
        return torch.rand((self.n, *shape), generator=self.generator, device=self.device, dtype=dtype)

    def get_state(self):
        return self.generator.get_state()

    def set_state(self, state):
        self.generator.set_state(state)


class MarkovChainSampler(abc.ABC):
    """Base class: ``n_chains`` independent chains stored as one tensor ``phi`` of shape
    ``(n_chains, *theory.lattice_shape)``. Subclasses implement :meth:`update` (one step of
    every chain) and list their constructor arguments in :meth:`settings`.

    Random numbers: with ``per_chain_streams`` (what :func:`lib.mcmc.hmc.hmc_ensemble` uses)
    chain k draws from its own stream (seed, ``first_chain`` + k) (:class:`lib.rng.SampleStreams`),
    so an ensemble does not depend on how its chains are batched; by default from one generator
    for the batch (cheaper for thousands of one-site chains)."""

    sampler = "markov"
    unit = "update"
    per_chain_streams = False

    def __init__(self, theory, n_chains: int = 1, seed: int = 0, start="hot", device=None, dtype=torch.float64,
                 first_chain: int = 0, per_chain_streams: bool | None = None):
        if isinstance(n_chains, bool) or not isinstance(n_chains, int) or n_chains < 1:
            raise ValueError(f"n_chains must be a positive integer, got {n_chains!r}")
        self.theory, self.seed, self.first_chain = theory, check_seed(seed), int(first_chain)
        self.device = resolve_device(device)
        self.dtype = dtype
        if per_chain_streams is not None:
            self.per_chain_streams = bool(per_chain_streams)
        self.noise = (SampleStreams(self.sampler, seed, self.first_chain, n_chains, self.device)
                      if self.per_chain_streams else BatchStream(seed, n_chains, self.device))
        shape = (n_chains, *theory.lattice_shape)
        self.start = start if isinstance(start, str) else "given"
        if isinstance(start, torch.Tensor):
            check_batch(start, theory.lattice_shape)
            if start.shape[0] != n_chains:
                raise ValueError(f"start holds {start.shape[0]} chains, expected {n_chains}")
            self.phi = start.to(device=self.device, dtype=dtype).clone()
        elif start == "cold":
            self.phi = torch.zeros(shape, device=self.device, dtype=dtype)
        elif start == "hot":
            self.phi = self.noise.randn(theory.lattice_shape, dtype)
        elif start == "ordered":
            # constant field at the classical vacuum, sign ±1 drawn per chain (both vacua equally)
            vac = getattr(theory, "classical_vacuum", None)
            if vac is None:
                raise ValueError(f"an ordered start needs theory.classical_vacuum(); {type(theory).__name__} has none")
            sign = torch.where(self.noise.rand((), dtype) < 0.5, -1.0, 1.0).to(dtype)
            self.phi = torch.full(shape, vac(), device=self.device, dtype=dtype)
            self.phi *= per_sample(sign, self.phi)
        else:
            raise ValueError(f"start must be 'cold', 'hot', 'ordered' or a tensor, got {start!r}")
        self.n_updates = 0
        self.protocol: dict | None = None  # the ensemble's HMCSettings, when run by lib.mcmc.hmc_ensemble
        self.samples: list = []  # configurations kept so far by hmc_ensemble (saved with the state)

    @property
    def n_chains(self) -> int:
        return self.phi.shape[0]

    def settings(self) -> dict:
        """Constructor arguments (besides theory, device) that define the chain."""
        return {"seed": self.seed, "n_chains": self.n_chains, "dtype": str(self.dtype).replace("torch.", ""),
                "start": self.start, "first_chain": self.first_chain, "per_chain_streams": self.per_chain_streams}

    @abc.abstractmethod
    def update(self):
        """One update of every chain (a trajectory, a sweep, a Langevin step)."""

    def run(self, n: int, measure=None, progress_bar: bool = True, desc: str | None = None,
            checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 50):
        """Make ``n`` updates of every chain. With ``measure``, call it on the fields after each
        update and return the stacked results (numpy, shape ``(n, ...)``). With ``checkpoint``,
        write the complete state there atomically every ``checkpoint_every`` updates and at the end.
        """
        if n < 0:
            raise ValueError(f"number of updates must be >= 0, got {n}")
        out = []
        for _ in progress(range(n), desc=desc or self.sampler, disable=not progress_bar, unit=self.unit):
            self.update()
            self.n_updates += 1
            if measure is not None:
                v = measure(self.phi)
                out.append(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
            if checkpoint is not None and self.n_updates % checkpoint_every == 0:
                self.save(checkpoint)
        if checkpoint is not None:
            self.save(checkpoint)
        return np.stack(out) if out else None

    # ------------------------------------------------------------------ state
    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        """Everything needed to resume: tensors, numbers and strings only (safe to load)."""
        return {"format": CHAIN_FORMAT, "sampler": self.sampler, "theory": self.theory.to_dict(),
                "settings": self.settings(), "phi": self.phi.cpu(), "noise": self.noise.get_state(),
                "n_updates": self.n_updates, "device_type": self.device.type, "samples": list(self.samples),
                "hmc": self.protocol, **self._extra_state()}

    def save(self, path) -> None:
        """Write the complete sampler state atomically (temporary file, then rename)."""
        save_checkpoint(self.state_dict(), path)

    @classmethod
    def load(cls, path, theory, device=None, expect: dict | None = None, **options):
        """Resume a sampler written by :meth:`save`. ``theory`` must equal the saved one, and every
        item of ``expect`` the saved settings; anything else is refused in one line. ``options`` are
        runtime options of the constructor that do not define the chain (e.g. ``fused``)."""
        state = load_checkpoint_file(path, f"{cls.sampler} checkpoint")
        if not isinstance(state, dict) or state.get("format") != CHAIN_FORMAT or state.get("sampler") != cls.sampler:
            raise ValueError(f"{path} is not a {cls.sampler} checkpoint of this library version")
        if state["theory"] != theory.to_dict():
            raise ValueError(f"checkpoint {path} was made for {state['theory']}, not {theory.to_dict()}; "
                             "remove it or pick another checkpoint directory")
        for k, v in (expect or {}).items():
            saved = state["settings"].get(k, state.get(k))
            if saved != v:
                raise ValueError(f"checkpoint {path} was made with {k} = {saved!r}, not {v!r}; "
                                 "remove it or pick another checkpoint directory")
        device = resolve_device(device)
        if device.type != state["device_type"]:
            raise ValueError(f"checkpoint {path} holds {state['device_type']} generators; resume it on that device")
        kw = dict(state["settings"])
        kw["dtype"] = getattr(torch, kw.pop("dtype"))
        kw.pop("start")
        self = cls(theory, start=state["phi"], device=device, **kw, **options)
        self.start = state["settings"]["start"]
        self.noise.set_state(state["noise"])
        self.n_updates = state["n_updates"]
        self.samples, self.protocol = list(state.get("samples") or []), state.get("hmc")
        self._load_extra_state(state)
        return self


def warn_if_frozen(acceptance: float, what: str = "chain", threshold: float = 0.01) -> None:
    """Warn loudly when a Metropolis-type sampler (almost) never accepts: its output is its start."""
    if not (isinstance(acceptance, float) and math.isfinite(acceptance)) or acceptance < threshold:
        warnings.warn(f"{what}: acceptance {acceptance:.3g} is (near) zero; the output is essentially the "
                      "starting configurations, not samples of the theory (step size too large? parameters "
                      "outside the stable range?)", RuntimeWarning, stacklevel=2)
