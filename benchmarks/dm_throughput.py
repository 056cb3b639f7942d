"""Diffusion-model throughput on CPU and (if present) CUDA:

* U-Net forward passes per second at L = 32 (batch of configurations),
* generated configurations per second with the paper's sampler (Euler–Maruyama, 500 steps),
  next to the paper's 97.52 configurations/s on an RTX 3090,
* training seconds per epoch (5120 configurations, batch 64) at L = 16, 32, 64, next to the
  paper's 5.80, 6.54, 8.63 s,
* the toy model's training time (5120 samples, MLP, 500 epochs; paper: 35 s on a laptop).

    python benchmarks/dm_throughput.py [--quick] [--channels 32,64,128,256] [--devices all|cpu|cuda]
        [--compile-only] [--json OUT]

``--compile-only`` measures only the forward pass, eager against torch.compile (inductor).

``--channels`` sets the U-Net widths (default: the paper's 32-64-128-256; the reduced-scale CPU
runs of chapters 4, 6 and 7 use 16,32,64,128).

With --quick, epochs and sample counts are scaled down and the per-epoch / per-sample rates
are extrapolated (stated in the output).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lib  # noqa: E402
from lib.diffusion import euler_maruyama  # noqa: E402
from lib.diffusion.networks import LatticeUNet, MLPScore  # noqa: E402
from lib.diffusion.training import Trainer  # noqa: E402
from lib.runtime import hardware_summary  # noqa: E402
from _devices import add_devices_argument, selected_devices, sync  # noqa: E402

PAPER_SAMPLES_PER_S = 97.52
PAPER_EPOCH_S = {16: 5.80, 32: 6.54, 64: 8.63}
PAPER_TOY_TRAIN_S = 35.0



CHANNELS = (32, 64, 128, 256)


def unet(device, dtype, strides=(1, 2, 2, 2)):
    torch.manual_seed(0)
    return LatticeUNet(lib.VESDE(25.0), channels=CHANNELS, strides=strides).to(device=device, dtype=dtype)


def bench_forward(device, dtype, batch, min_time, amp=False, compiled=False, strides=(1, 2, 2, 2)):
    net = unet(device, dtype, strides).eval()
    if compiled:
        net = torch.compile(net)
    x = torch.randn(batch, 32, 32, device=device, dtype=dtype)
    t = torch.rand(batch, device=device, dtype=dtype)
    ctx = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp)
    with torch.no_grad(), ctx:
        net(x, t)
        sync(device)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_time or n < 2:
            net(x, t)
            n += 1
        sync(device)
    return n * batch / (time.perf_counter() - t0)


def bench_sampling(device, dtype, batch, n_steps):
    net = unet(device, dtype).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    euler_maruyama(net, net.sde, (batch, 32, 32), n_steps=3, generator=gen, device=device, dtype=dtype,
                   progress_bar=False)
    sync(device)
    t0 = time.perf_counter()
    euler_maruyama(net, net.sde, (batch, 32, 32), n_steps=n_steps, generator=gen, device=device, dtype=dtype,
                   progress_bar=False)
    sync(device)
    return batch / (time.perf_counter() - t0) * (n_steps / 500)  # configurations/s at 500 steps


def bench_epoch(device, dtype, L, n_train, amp):
    net = unet(device, dtype)
    data = torch.randn(n_train, L, L, dtype=dtype)
    tr = Trainer(net, data, seed=0, batch_size=64, device=device, amp=amp)
    tr.train_epoch()  # warm-up
    sync(device)
    t0 = time.perf_counter()
    tr.train_epoch()
    sync(device)
    return (time.perf_counter() - t0) * 5120 / n_train


def bench_toy(device, epochs):
    theory = lib.ToyModel(1.0, 0.4)
    data = theory.sample_exact(5120, seed=0).float()
    torch.manual_seed(0)
    model = MLPScore(lib.VESDE(25.0), dim=1)
    tr = Trainer(model, data, seed=0, batch_size=64, device=device)
    t0 = time.perf_counter()
    tr.fit(epochs, progress_bar=False)
    sync(device)
    return (time.perf_counter() - t0) * 500 / epochs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    add_devices_argument(ap)
    ap.add_argument("--channels", default="32,64,128,256", help="U-Net channels, four numbers")
    ap.add_argument("--compile-only", action="store_true",
                    help="only the U-Net forward pass: eager against torch.compile, float32 and bf16 autocast")
    a = ap.parse_args()
    global CHANNELS
    CHANNELS = tuple(int(c) for c in a.channels.split(","))
    if len(CHANNELS) != 4:
        ap.error("--channels needs four numbers")
    chan = "-".join(map(str, CHANNELS))
    devices = selected_devices(a)
    out = {"hardware": {}, "channels": list(CHANNELS), "rows": []}
    for device in devices:
        hw = hardware_summary(device)
        out["hardware"][device.type] = hw
        print(f"# {hw}")
        gpu = device.type == "cuda"
        dtype = torch.float32
        if a.compile_only:
            for amp in (False, True):
                eager = bench_forward(device, dtype, 1024 if gpu else 64, 1.0 if a.quick else 3.0, amp=amp)
                comp = bench_forward(device, dtype, 1024 if gpu else 64, 1.0 if a.quick else 3.0, amp=amp,
                                     compiled=True)
                prec = "bf16 autocast" if amp else "float32"
                print(f"{device.type}: U-Net {chan} forward, L=32, {prec}: eager {eager:.0f}, torch.compile "
                      f"{comp:.0f} configurations/s (x{comp / eager:.2f})", flush=True)
                out["rows"].append(dict(device=device.type, what="unet_forward_per_s", precision=prec, eager=eager,
                                        compiled=comp, ratio=comp / eager))
            continue
        fwd = bench_forward(device, dtype, 1024 if gpu else 64, 1.0 if a.quick else 3.0)
        print(f"{device.type}: U-Net (channels {chan}, strides 1-2-2-2) forward, L=32, float32: "
              f"{fwd:.0f} configurations/s")
        fwd1 = bench_forward(device, dtype, 1024 if gpu else 16, 1.0 if a.quick else 3.0, strides=(1, 1, 1, 1))
        print(f"{device.type}: the same U-Net with stride 1 at every level (the authors' code): {fwd1:.1f} "
              f"configurations/s, x{fwd / fwd1:.1f} slower")
        batch, steps = (4096, 500) if gpu else ((16, 10) if a.quick else (64, 50))
        smp = bench_sampling(device, dtype, batch, steps)
        print(f"{device.type}: Euler-Maruyama 500 steps, U-Net {chan}, L=32, float32, batch {batch} (timed over {steps} steps): "
              f"{smp:.2f} configurations/s  (x{smp / PAPER_SAMPLES_PER_S:.3g} the paper's {PAPER_SAMPLES_PER_S}/s "
              "on an RTX 3090)")
        rows = [dict(device=device.type, what="unet_forward_per_s", value=fwd),
                dict(device=device.type, what="unet_forward_per_s_stride1", value=fwd1),
                dict(device=device.type, what="samples_per_s_500_steps", value=smp, batch=batch)]
        for L in (16, 32, 64):
            n_train = 5120 if gpu else (128 if a.quick else 640)
            for amp in ((False, True) if gpu else (False,)):
                sec = bench_epoch(device, dtype, L, n_train, amp)
                prec = "bf16 autocast" if amp else "float32"
                print(f"{device.type}: training epoch (5120 configs, batch 64), U-Net {chan}, L={L}, {prec}: {sec:.2f} s, "
                      f"timed on {n_train} configurations (paper: {PAPER_EPOCH_S[L]} s; ours is "
                      f"{PAPER_EPOCH_S[L] / sec:.3g}x as fast)")
                rows.append(dict(device=device.type, what="epoch_seconds", L=L, precision=prec, value=sec,
                                 n_timed=n_train))
        toy_epochs = 20 if a.quick else 100
        toy = bench_toy(device, toy_epochs)
        print(f"{device.type}: toy model, MLP, 500 epochs of 5120 samples: {toy:.1f} s (extrapolated from "
              f"{toy_epochs} epochs; paper: {PAPER_TOY_TRAIN_S} s on a laptop)")
        rows.append(dict(device=device.type, what="toy_train_500_epochs_s", value=toy))
        out["rows"] += rows
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
