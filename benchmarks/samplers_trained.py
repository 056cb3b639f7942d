"""Samplers on a trained φ⁴ model: observables against network evaluations (NFE).

A U-Net (16-32-64-128, strides 1-1-2-2, Gaussian skip, EMA) is trained on an HMC ensemble of φ⁴
at L = 8, λ = 0.022 and the κ given (default 0.21), through the library's cache (``--cache``).
Then N configurations are generated with the paper's 500-step Euler–Maruyama and with the few-step
samplers at several numbers of levels, and χ₂, U_L and the mean action per site are compared with a
large HMC reference (jackknife errors). A sampler is as accurate as EM-500 when its differences
from the reference are no larger than EM-500's; the network's own error (EM-500 against HMC) is the
floor every sampler shares.

``--bf16`` runs every sampler a second time with the network under bfloat16 autocast
(``SampleSettings(precision="bf16")``) from the same seed, so the two sets share their random
numbers, and reports the paired difference bf16 − float32 of each observable with its paired
jackknife error (delete-one over configurations, the same ones from both sets): a difference within
two paired errors and small against the statistical error of one set means the accuracy survives
bf16. The CPU-time ratio is measured in the same run.

    python benchmarks/samplers_trained.py [--quick] [--kappa 0.21] [--bf16] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lib  # noqa: E402
from lib.analysis import observables as obs  # noqa: E402
from lib.analysis.stats import jackknife, pull  # noqa: E402
from lib.diffusion import cached_score_model, default_model, generate, make_sde, site_variance  # noqa: E402
from lib.runtime import hardware_summary  # noqa: E402


def measure(configs, theory):
    c = np.asarray(configs)
    s = obs.summary(c)
    act = theory.action(torch.as_tensor(c)).numpy() / theory.volume
    return {"chi2": s["chi2"], "binder": s["binder"], "action": jackknife(np.mean, act)}


def paired_difference(x_a, x_b, theory, n_blocks: int = 256) -> dict:
    """Observable(x_a) − observable(x_b) for two sets of the same length whose configuration i was
    made from the same random numbers, with a paired jackknife error: both sets lose the same
    block, so the shared fluctuation cancels and what remains is the difference of the samplers."""
    a, b = np.asarray(x_a), np.asarray(x_b)
    v = theory.volume
    m = np.stack([a.reshape(len(a), -1).mean(1), b.reshape(len(b), -1).mean(1)], axis=1)
    act = np.stack([theory.action(torch.as_tensor(x)).numpy() / v for x in (a, b)], axis=1)
    fs = {"chi2": lambda d: obs.susceptibility_from_m(d[:, 0], v) - obs.susceptibility_from_m(d[:, 1], v),
          "binder": lambda d: obs.binder_from_m(d[:, 0]) - obs.binder_from_m(d[:, 1])}
    out = {k: jackknife(f, m, n_blocks=n_blocks) for k, f in fs.items()}
    out["action"] = jackknife(lambda d: d[:, 0].mean() - d[:, 1].mean(), act, n_blocks=n_blocks)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer configurations and epochs")
    ap.add_argument("--kappa", type=float, default=0.21)
    ap.add_argument("--cache", type=Path, default=None, help="cache directory (default: a temporary one)")
    ap.add_argument("--bf16", action="store_true",
                    help="also run every sampler with the network under bf16 autocast, paired with float32")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    cache = a.cache or Path(tempfile.mkdtemp(prefix="dmsq-bench-"))
    L, n_gen = 8, (512 if a.quick else 2048)
    th = lib.Phi4(L=L, kappa=a.kappa, lam=0.022)
    hmc = dict(eps=0.1, n_steps=10, n_burnin=200, n_spacing=20, cache_dir=cache, progress_bar=False, verbose=False)
    train = lib.cached_hmc_ensemble(th, 2048, seed=0, **hmc)
    ref = lib.cached_hmc_ensemble(th, 8192 if not a.quick else 2048, seed=1, **hmc)
    sde = make_sde("ve", 25.0)
    net = default_model(sde, (L, L), channels=(16, 32, 64, 128), strides=(1, 1, 2, 2),
                        skip_var=site_variance(train.configs, "minmax"))
    t0 = time.process_time()
    model, state, _ = cached_score_model(train, net, seed=0, epochs=10 if a.quick else 60, ema_decay=0.999,
                                         cache_dir=cache, progress_bar=False, verbose=False)
    print(f"# {hardware_summary()}; phi4 L={L} kappa={a.kappa}; {n_gen} generated per sampler; "
          f"training {time.process_time() - t0:.0f} CPU s")
    norm = state["metadata"]["normaliser"]
    reference = measure(ref.configs, th)
    print("  HMC reference: " + ", ".join(f"{k} {v[0]:.4f} ± {v[1]:.4f}" for k, v in reference.items()))
    runs = [("em", 500)] + [(s, n) for s in ("heun", "dpm2") for n in (6, 10, 18, 32)]
    rows = []
    for sampler, n in runs:
        sets = {}
        for precision in ("float32", "bf16") if a.bf16 else ("float32",):
            t0 = time.process_time()
            x, _ = generate(model, n_gen, 7, lattice_shape=(L, L), normaliser=norm, sampler=sampler, n_steps=n,
                            batch_size=512, progress_bar=False, precision=precision)
            cpu = time.process_time() - t0
            sets[precision] = (x, cpu)
            m = measure(x, th)
            dev = {k: pull(m[k], reference[k]) for k in m}
            row = dict(sampler=sampler, levels=n, nfe=(n - 1) * (1 if sampler == "em" else 2), precision=precision,
                       cpu_seconds=cpu, **{k: list(v) for k, v in m.items()}, sigma_from_reference=dev)
            print(f"  {sampler:4s} {n:3d} levels ({row['nfe']:3d} NFE, {precision:7s}, {cpu:6.1f} CPU s): " +
                  ", ".join(f"{k} {m[k][0]:.4f} ± {m[k][1]:.4f} ({dev[k]:+.1f}σ)" for k in m))
            if precision == "bf16":
                d = paired_difference(x, sets["float32"][0], th)
                row["bf16_minus_float32"] = {k: list(v) for k, v in d.items()}
                row["bf16_cpu_speedup"] = sets["float32"][1] / cpu
                print("       bf16 - float32 (paired): " + ", ".join(
                    f"{k} {v[0]:+.4f} ± {v[1]:.4f} ({pull(v, 0.0):+.1f}σ paired, {v[0] / m[k][1]:+.2f} of one set's "
                    f"error)" for k, v in d.items()) + f"; CPU time ×{row['bf16_cpu_speedup']:.2f} faster")
            rows.append(row)
    if a.json:
        a.json.write_text(json.dumps({"hardware": hardware_summary(), "kappa": a.kappa, "reference":
                                      {k: list(v) for k, v in reference.items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
