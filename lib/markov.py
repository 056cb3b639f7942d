"""Common machinery of the batched Markov-chain samplers (HMC, Metropolis, Langevin):
start configurations, a private generator, a run loop with progress bar and measurements,
and a complete saved state so that an interrupted run resumes bit for bit."""
from __future__ import annotations

import abc
import os

import numpy as np
import torch

from .utils import check_batch, make_generator, progress, resolve_device


class MarkovChainSampler(abc.ABC):
    """Base class: ``n_chains`` independent chains stored as one tensor ``phi`` of shape
    ``(n_chains, *theory.lattice_shape)``. Subclasses implement :meth:`update` (one step of
    every chain) and list their constructor arguments in :meth:`settings`."""

    sampler = "markov"
    unit = "update"

    def __init__(self, theory, n_chains: int = 1, seed: int = 0, start="hot", device=None, dtype=torch.float64):
        if not isinstance(n_chains, int) or n_chains < 1:
            raise ValueError(f"n_chains must be a positive integer, got {n_chains!r}")
        self.theory, self.seed = theory, int(seed)
        self.device = resolve_device(device)
        self.dtype = dtype
        self.generator = make_generator(seed, self.device)
        shape = (n_chains, *theory.lattice_shape)
        if isinstance(start, torch.Tensor):
            check_batch(start, theory.lattice_shape)
            if start.shape[0] != n_chains:
                raise ValueError(f"start holds {start.shape[0]} chains, expected {n_chains}")
            self.phi = start.to(device=self.device, dtype=dtype).clone()
        elif start == "cold":
            self.phi = torch.zeros(shape, device=self.device, dtype=dtype)
        elif start == "hot":
            self.phi = torch.randn(shape, generator=self.generator, device=self.device, dtype=dtype)
        elif start == "ordered":
            # constant field at the classical vacuum, sign ±1 drawn per chain (both vacua equally)
            vac = getattr(theory, "classical_vacuum", None)
            if vac is None:
                raise ValueError(f"an ordered start needs theory.classical_vacuum(); {type(theory).__name__} has none")
            sign = torch.randint(0, 2, (n_chains,), generator=self.generator, device=self.device).to(dtype) * 2 - 1
            self.phi = (vac() * sign).reshape(-1, *([1] * len(theory.lattice_shape))).expand(shape).clone()
        else:
            raise ValueError(f"start must be 'cold', 'hot', 'ordered' or a tensor, got {start!r}")
        self.n_updates = 0

    @property
    def n_chains(self) -> int:
        return self.phi.shape[0]

    def settings(self) -> dict:
        """Constructor arguments (besides theory, start, device) that define the chain."""
        return {"seed": self.seed, "n_chains": self.n_chains, "dtype": str(self.dtype).replace("torch.", "")}

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
        return {"sampler": self.sampler, "theory": self.theory.to_dict(), "settings": self.settings(),
                "phi": self.phi.cpu(), "generator": self.generator.get_state(), "n_updates": self.n_updates,
                "device_type": self.device.type, **self._extra_state()}

    def save(self, path) -> None:
        """Write the complete sampler state atomically (temporary file, then rename)."""
        from .ensemble import atomic_torch_save

        atomic_torch_save(self.state_dict(), path)

    @classmethod
    def load(cls, path, theory, device=None):
        """Resume a sampler written by :meth:`save`; ``theory`` must equal the saved one."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise ValueError(f"{path} is not a sampler checkpoint") from exc
        if not isinstance(state, dict) or state.get("sampler") != cls.sampler:
            raise ValueError(f"{path} is not a {cls.sampler} checkpoint")
        if state["theory"] != theory.to_dict():
            raise ValueError(f"checkpoint {path} was made for {state['theory']}, not {theory.to_dict()}")
        device = resolve_device(device)
        if device.type != state["device_type"]:
            raise ValueError(f"checkpoint {path} holds a {state['device_type']} generator; resume it on that device")
        kw = dict(state["settings"])
        kw["dtype"] = getattr(torch, kw.pop("dtype"))
        self = cls(theory, start=state["phi"], device=device, **kw)
        self.generator.set_state(state["generator"])
        self.n_updates = state["n_updates"]
        self._load_extra_state(state)
        return self
