"""The devices a benchmark runs on: ``--devices all`` (the CPU, and CUDA when present; the
default), ``cpu`` or ``cuda`` (only the GPU, e.g. on a lent GPU machine whose time is short)."""
from __future__ import annotations

import torch


def add_devices_argument(ap) -> None:
    ap.add_argument("--devices", choices=("all", "cpu", "cuda"), default="all",
                    help="run on the CPU and CUDA when present (all), or on one of them")


def selected_devices(a) -> list[torch.device]:
    cuda = torch.cuda.is_available()
    if a.devices == "cuda" and not cuda:
        raise SystemExit("--devices cuda: no CUDA GPU is visible")
    if a.devices == "cuda":
        return [torch.device("cuda")]
    if a.devices == "cpu":
        return [torch.device("cpu")]
    return [torch.device("cpu")] + ([torch.device("cuda")] if cuda else [])


def sync(device) -> None:
    """Wait for the GPU's queued work (a timer reads nothing meaningful before that)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
