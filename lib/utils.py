"""Small helpers shared by the samplers: shape checks, devices, generators, progress bars."""
from __future__ import annotations

import torch


def check_batch(phi: torch.Tensor, lattice_shape: tuple[int, ...]) -> None:
    """Raise a clear error unless ``phi`` has shape ``(batch, *lattice_shape)``."""
    if not isinstance(phi, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of shape (batch, {lattice_shape}), got {type(phi).__name__}")
    if tuple(phi.shape[1:]) != tuple(lattice_shape) or phi.ndim != len(lattice_shape) + 1:
        raise ValueError(
            f"expected a batch of configurations with shape (batch, {', '.join(map(str, lattice_shape))}), "
            f"got {tuple(phi.shape)}"
        )


def resolve_device(device=None) -> torch.device:
    """``None`` or ``"auto"`` picks CUDA when available, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def make_generator(seed: int, device) -> torch.Generator:
    """A torch.Generator on ``device`` seeded with ``seed`` (no global RNG state is touched)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    g = torch.Generator(device=resolve_device(device))
    g.manual_seed(seed)
    return g


def progress(iterable=None, total=None, desc=None, disable=False, **kw):
    """``tqdm.auto`` progress bar (a notebook widget in Jupyter, text elsewhere)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=disable, leave=False, **kw)


def hardware_summary(device=None) -> str:
    """One line naming the hardware a computation ran on (CPU model and cores, or the GPU)."""
    import os
    import platform

    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(dev)} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads (torch {torch.__version__})"
