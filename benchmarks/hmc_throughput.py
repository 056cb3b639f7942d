"""HMC throughput: trajectories per second for batched chains, CPU and (if present) CUDA.

Compared with the paper's figure: 1.57 configurations/s on a Xeon Gold 6226R CPU at 32²,
κ = 0.21, each configuration costing 100 + 64 = 164 trajectories of 100 leapfrog steps,
i.e. 1.57 × 164 ≈ 257 trajectories/s.

    python benchmarks/hmc_throughput.py [--quick] [--json OUT]
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
from lib.runtime import hardware_summary  # noqa: E402
from _devices import add_devices_argument, selected_devices  # noqa: E402

PAPER_TRAJ_PER_S = 1.57 * 164  # 100 leapfrog steps of 0.01 per trajectory


def measure(L, n_chains, n_steps, eps, device, dtype, min_time=2.0, per_chain_streams=False, fused=False):
    theory = lib.Phi4(L=L, kappa=0.21, lam=0.022)
    h = lib.HMC(theory, n_chains, eps=eps, n_steps=n_steps, seed=0, device=device, dtype=dtype,
                per_chain_streams=per_chain_streams, fused=fused)
    h.run(2, progress_bar=False)  # warm-up
    n, t0 = 0, time.perf_counter()
    while True:
        h.trajectory()
        n += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if dt > min_time and n >= 3:
            break
    return n * n_chains / dt, h.acceptance_rate


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer configurations, shorter timing")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    add_devices_argument(ap)
    a = ap.parse_args()
    devices = selected_devices(a)
    rows = []
    for device in devices:
        print(f"# {hardware_summary(device)}")
        chains = [1024] if a.quick else [256, 1024, 4096]
        if device.type == "cuda":
            chains = [16384] if a.quick else [4096, 16384, 65536]
        for L in ((32,) if a.quick and device.type == "cuda" else (32, 64)):
            for dtype in (torch.float64, torch.float32):
                for n_steps, eps in ((100, 0.01), (10, 0.1)):
                    for nc in chains:
                      # per-chain random streams (what hmc_ensemble uses: batch-size independent results)
                      # cost one generator call per chain and trajectory; measured against one stream.
                      # fused: the compiled leapfrog, measured against the eager one (one stream)
                      for variant in ("batch", "per-chain", "fused"):
                        nc_eff = max(nc // (L // 32) ** 2, 64)
                        rate, acc = measure(L, nc_eff, n_steps, eps, device, dtype, min_time=1.0 if a.quick else 3.0,
                                            per_chain_streams=variant == "per-chain", fused=variant == "fused")
                        row = dict(device=device.type, L=L, dtype=str(dtype)[6:], n_steps=n_steps, eps=eps,
                                   n_chains=nc_eff, variant=variant, traj_per_s=rate, acceptance=acc,
                                   ratio_to_paper=rate / PAPER_TRAJ_PER_S * (n_steps / 100) if L == 32 else None)
                        if variant != "batch":
                            row["ratio_to_eager_batch"] = rate / rows[-1 if variant == "per-chain" else -2]["traj_per_s"]
                        rows.append(row)
                        print(f"{device.type:5s} L={L:3d} {row['dtype']:8s} {n_steps:3d} steps x {eps:<5} "
                              f"chains={nc_eff:6d} {variant:9s}: {rate:10.0f} traj/s  (acc {acc:.2f}; "
                              + (f"x{row['ratio_to_eager_batch']:.2f} of eager, one stream; " if variant != "batch"
                                 else "")
                              + (f"x{row['ratio_to_paper']:.1f} the paper's {PAPER_TRAJ_PER_S:.0f} traj/s "
                                 "in units of 100-step trajectories)" if L == 32 else "no paper figure at L=64)"))
    if a.json:
        a.json.write_text(json.dumps({"hardware": [hardware_summary(d) for d in devices], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
