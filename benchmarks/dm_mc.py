"""DM-MC proposals with exact path-space weights (lib.diffusion.paths): throughput and acceptance.

Two parts, on CPU and (where present) CUDA:

1. With the exact score of the free field (λ = 0, κ = 0.21) at L = 8, 16, 32: the acceptance of
   the independence chain on path weights against the number of steps, for kernels with the
   data's propagator and with the site variance only. The propagator kernels are the exact
   posteriors of a Gaussian field, so their acceptance stays near 1 at any step count; the
   isotropic ones need steps. The exact score costs almost nothing, so this measures the kernels.
2. With the library's default U-Net (untrained; cost only) at L = 32: proposals per second for
   100-step paths against the paper's 500-step Euler–Maruyama, which also needs an ODE
   log-likelihood per proposal (benchmarks/likelihood.py) before it can be weighed.

    python benchmarks/dm_mc.py [--quick] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lib  # noqa: E402
from lib.diffusion import PathSettings, default_model, make_sde, path_sample  # noqa: E402
from lib.diffusion.networks import build_score_model  # noqa: E402
from lib.diffusion.samplers import euler_maruyama  # noqa: E402
from lib.mcmc.independence import independence_chain  # noqa: E402
from lib.runtime import hardware_summary  # noqa: E402
from _devices import add_devices_argument, selected_devices  # noqa: E402


def acceptance_table(sde, device, quick):
    rows = []
    for L in ((8, 16) if quick else (8, 16, 32)):
        th = lib.Phi4(L=L, kappa=0.21, lam=0.0)
        field = th.free_field()
        n = 2048 if quick else 8192
        for var in ("propagator", "isotropic"):
            for steps in (2, 5, 10, 20, 50, 100):
                res = path_sample(field.score_fn(sde), sde, (n, L, L), PathSettings(n_steps=steps, variance=var),
                                  spectrum=field.spectrum, noise=torch.Generator(device).manual_seed(steps),
                                  device=device, dtype=torch.float64)
                w = (-th.action(res.x) + res.log_path).cpu().numpy()
                acc = independence_chain(w, seed=1).acceptance
                rows.append({"L": L, "kernels": var, "steps": steps, "acceptance": acc, "std_log_w": float(w.std())})
                print(f"L={L:3d} {var:10s} steps={steps:4d}  acceptance {acc:.3f}  std log w {w.std():.3f}", flush=True)
    return rows


def throughput(sde, device, quick):
    L, batch = 32, (16 if quick else 64)
    net = build_score_model(default_model(sde, (L, L)).config, seed=0).eval().to(device)
    spectrum = torch.ones(L, L, dtype=torch.float64)
    out = {}
    for name, fn in [("paths, 100 steps", lambda: path_sample(net, sde, (batch, L, L), PathSettings(n_steps=100),
                                                               spectrum=spectrum, device=device)),
                     ("Euler-Maruyama, 500 steps", lambda: euler_maruyama(net, sde, (batch, L, L), n_steps=500,
                                                                          device=device, progress_bar=False))]:
        fn() if device.type == "cuda" else None
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        rate = batch / (time.perf_counter() - t0)
        out[name] = rate
        print(f"L=32 default U-Net, {name}: {rate:.2f} proposals/s (batch {batch})", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller lattices and batches")
    ap.add_argument("--json", type=Path, default=None)
    add_devices_argument(ap)
    a = ap.parse_args()
    sde = make_sde("ve", 25.0)
    results = {}
    devices = selected_devices(a)
    for dev in devices:
        print(f"# {hardware_summary(dev)}")
        results[dev.type] = {"acceptance": acceptance_table(sde, dev, a.quick), "throughput": throughput(sde, dev, a.quick)}
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
