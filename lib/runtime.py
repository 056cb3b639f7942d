"""Runtime helpers shared by every stage: shape checks, devices, progress bars, broadcasting."""
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
    """``None`` or ``"auto"`` picks CUDA when available, else the CPU. A device that cannot hold
    data (``meta``), an unknown name or an absent GPU is refused in one line."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} cannot run computations; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} is not available: no CUDA GPU is visible")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} is not available: {torch.cuda.device_count()} CUDA GPU(s) visible")
    return dev


def progress(iterable=None, total=None, desc=None, disable=False, **kw):
    """A progress bar: ``tqdm.auto`` (a notebook widget in Jupyter, text elsewhere) by default.
    The environment variable ``DMSQ_PROGRESS`` chooses: ``auto``, ``text`` (plain text on stderr)
    or ``none``. Notebooks executed for the book (``make execute``, the tests) use ``none``: a
    widget stored in a notebook renders as a frozen bar without a live kernel."""
    import os

    mode = os.environ.get("DMSQ_PROGRESS", "auto")
    if mode == "text":
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(iterable, total=total, desc=desc, disable=disable or mode == "none", leave=False, **kw)


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
    cap = cpu_capability()
    return (f"CPU {cpu} ({cap['capability']}{', native bf16' if cap['native_bf16'] else ', no native bf16'}), "
            f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads (torch {torch.__version__})")


def cpu_capability() -> dict:
    """What this CPU offers the network's arithmetic: torch's dispatch level
    (``torch.backends.cpu.get_cpu_capability()``, e.g. ``AVX2``, ``AVX512``) and whether it has
    native bfloat16 instructions (the ``avx512_bf16`` or ``amx_bf16`` flags of ``/proc/cpuinfo``).
    Recorded with every CPU benchmark, since the same code is several times faster or slower in
    bf16 depending on them."""
    level = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    flags = set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    native = bool(flags & {"avx512_bf16", "amx_bf16"}) or "AMX" in level.upper()
    return {"capability": level, "native_bf16": native}


def per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample vector ``(batch,)`` (or a scalar) reshaped to broadcast against ``x`` of shape
    ``(batch, ...)``, in x's dtype and device."""
    v = torch.as_tensor(v).to(dtype=x.dtype, device=x.device)
    return v if v.ndim == 0 else v.reshape(-1, *([1] * (x.ndim - 1)))


def memory_limit() -> int:
    """Physical memory of this machine in bytes (a generous bound when unknown): requests that
    would need more are refused before anything is allocated."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 2**40
