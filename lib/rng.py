"""Per-sample random streams: the random numbers that make sample *i* depend only on (seed, i).

Every configuration of an ensemble (an HMC chain, a diffusion-model sample) draws from its own
``torch.Generator``, seeded from a NumPy ``SeedSequence`` of ``(domain, seed, i)``. Hence

* the batch size, splitting the work across devices and resuming an interrupted run change
  nothing: sample i is the same whichever batch it was made in;
* two seeds never share a stream (seed s, sample i and seed s', sample i' collide only if
  (s, i) = (s', i')), unlike "batch b uses seed + b";
* the domain (``"hmc"``, ``"dm"``, …) separates the streams of different stages made with the
  same seed.

The cost is one small generator call per sample and draw; on a CPU it is a few per cent of an
HMC trajectory or a network evaluation (``benchmarks/``).
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

from .runtime import resolve_device

MAX_SEED = 2**63 - 1


def check_seed(seed) -> int:
    """A seed is an integer in [0, 2⁶³ − 1]; anything else is refused in one line."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed must be an integer between 0 and 2**63 - 1, got {seed!r}")
    return int(seed)


def stream_seed(domain: str, seed: int, index: int) -> int:
    """The 63-bit seed of stream ``index`` of ``seed`` in ``domain`` (a SeedSequence hash)."""
    tag = zlib.crc32(domain.encode())
    state = np.random.SeedSequence([tag, check_seed(seed), int(index)]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def generator(seed: int, device=None) -> torch.Generator:
    """One ``torch.Generator`` on ``device`` seeded with ``seed`` (no global RNG state is touched).
    Without a device it is a CPU generator, as torch's own default (and the default of the tensors
    it fills): not the automatic choice of :func:`lib.runtime.resolve_device`, which would hand a
    CUDA generator to CPU tensors whenever a GPU is visible."""
    g = torch.Generator(device="cpu" if device is None else resolve_device(device))
    g.manual_seed(check_seed(seed))
    return g


def default_block(sample_numel: int) -> int:
    """Samples per stream: 1 for lattice fields; for samples of fewer than 64 numbers (the 0D
    model, 1D/2D mixtures) a block of 1024 consecutive samples shares one stream, so that
    millions of tiny samples do not cost one generator call each. Part of the definition of
    the streams: sample i uses stream (seed, i // block), row i % block of each draw."""
    return 1 if sample_numel >= 64 else 1024


class SampleStreams:
    """Streams for samples ``first, …, first + n − 1``: sample i draws from stream i // block,
    as row i % block of every draw of that stream (``block`` = 1: one stream per sample).

    ``first`` must be a multiple of ``block``; draws cover whole blocks and are cut to the n
    requested rows, so sample i gets the same numbers in whatever batch it is made.
    Draws have shape ``(n, *shape)``.
    """

    def __init__(self, domain: str, seed: int, first: int, n: int, device=None, block: int = 1):
        self.domain, self.seed = str(domain), check_seed(seed)
        self.first, self.n, self.block = int(first), int(n), int(block)
        if self.n < 1 or self.first < 0 or self.block < 1:
            raise ValueError("SampleStreams needs n >= 1 samples from a non-negative first index")
        if self.first % self.block:
            raise ValueError(f"the first sample ({first}) must be a multiple of the stream block ({block})")
        self.device = resolve_device(device)
        n_streams = -(-self.n // self.block)
        self.streams = [self.first // self.block + j for j in range(n_streams)]
        self.generators = [generator(stream_seed(self.domain, self.seed, j), self.device) for j in self.streams]

    def __len__(self) -> int:
        return self.n

    def _draw(self, fn, shape, dtype) -> torch.Tensor:
        k = self.block
        out = torch.empty((len(self.generators) * k, *shape), dtype=dtype, device=self.device)
        for j, g in enumerate(self.generators):
            if k == 1:
                fn(shape, generator=g, dtype=dtype, out=out[j])
            else:
                fn((k, *shape), generator=g, dtype=dtype, out=out[j * k:(j + 1) * k])
        return out[:self.n]

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        """Standard normal draws, shape ``(n, *shape)``."""
        return self._draw(torch.randn, tuple(shape), dtype)

    def rand(self, shape=(), dtype=torch.float32) -> torch.Tensor:
        """Uniform draws on [0, 1), shape ``(n, *shape)``."""
        return self._draw(torch.rand, tuple(shape), dtype)

    # ---------------------------------------------------------------- state (for resumable chains)
    def get_state(self) -> torch.Tensor:
        """The generators' states stacked into one uint8 tensor (CPU)."""
        return torch.stack([g.get_state() for g in self.generators])

    def set_state(self, state: torch.Tensor) -> None:
        if not isinstance(state, torch.Tensor) or state.shape[0] != len(self.generators):
            raise ValueError("stream state does not match the number of streams")
        for g, s in zip(self.generators, state):
            g.set_state(s.clone())


__all__ = ["SampleStreams", "default_block", "normal", "check_seed", "stream_seed", "generator", "MAX_SEED"]


def normal(source, shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal draws of shape ``(n, *sample_shape)`` from ``source``: a
    :class:`SampleStreams` (row i from sample i's stream), a batch stream with a ``randn`` method,
    or a ``torch.Generator`` / None (one stream for the whole batch)."""
    shape = tuple(shape)
    if source is None or isinstance(source, torch.Generator):
        return torch.randn(shape, generator=source, device=device, dtype=dtype)
    if len(source) != shape[0]:
        raise ValueError(f"the random streams cover {len(source)} samples, the batch has {shape[0]}")
    return source.randn(shape[1:], dtype)
