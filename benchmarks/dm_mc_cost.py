"""What an independent sample costs: effective samples per second of |M| and M² for local
Metropolis, HMC and exact DM-MC (path-space weights) at κ = 0.27, λ = 0.022, L = 8, 16, 32.

For each L, on this machine and in one run:

* HMC (ε = 0.1, 10 leapfrog steps, trajectory length 1) and local Metropolis (δ = 1): 16 chains
  in a batch, thermalised from ordered starts, then measured; τ_int with Wolff's window over the
  16 replicas; seconds per chain-trajectory (or sweep) of the batched run.
* DM-MC: a model trained on equilibrium HMC data (ordered starts with random vacuum signs,
  2000 trajectories of burn-in, 16 configurations per chain 128 apart; 5120 for training) with
  a Gaussian skip and log-normal noise levels, U-Net 16-32-64-128, ``--epochs`` epochs, as in
  chapter 9 (cached in ``$DMSQ_CACHE``: a rerun with the chapter's cache only measures).
  Proposals are 100-step reverse paths with propagator kernels; the chain is the exact
  independence sampler on their path weights; the proposals' generation is timed here.
  The training's CPU time is stated separately (amortised over ``N / ESS`` it is a fixed cost).

ESS per second = N / (2 τ_int) / seconds; the table also gives the ratio DM-MC / HMC.

    python benchmarks/dm_mc_cost.py [--quick] [--epochs 40] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lib  # noqa: E402
from lib.analysis.stats import autocorrelation  # noqa: E402
from lib.diffusion import (cached_score_model, data_spectrum, default_model, dm_path_proposals, load_model,  # noqa: E402
                           make_sde, site_variance)
from lib.mcmc.independence import independence_chain  # noqa: E402
from lib.runtime import hardware_summary  # noqa: E402

KAPPA, LAM = 0.27, 0.022
EQUILIBRIUM = dict(n_burnin=2000, n_spacing=128, n_per_chain=16, start="ordered", eps=0.1, n_steps=10)


def ess(series, seconds):
    """τ_int (Γ-method) and effective samples per second of a (time × replicas) series."""
    ac = autocorrelation(series, name="x")
    n = series.size
    return {"tau_int": float(ac.tau_int), "tau_error": float(ac.tau_int_error),
            "ess_per_s": n / (2 * ac.tau_int) / seconds}


def local(kind, th, n_meas, device):
    if kind == "HMC":
        s = lib.HMC(th, 16, eps=0.1, n_steps=10, seed=11, start="ordered", device=device)
    else:
        s = lib.Metropolis(th, 16, delta=1.0, seed=12, device=device)
    s.run(2000, progress_bar=False)
    t0 = time.perf_counter()
    m = s.run(n_meas, measure=lambda p: p.mean(dim=tuple(range(1, p.ndim))), progress_bar=False)
    sec = time.perf_counter() - t0
    m = np.asarray(m)
    return {"seconds": sec, "n": m.size, "absM": ess(np.abs(m), sec), "M2": ess(m ** 2, sec)}


def dm_mc(th, n, epochs, device):
    sde = make_sde("ve", 25.0)
    data = lib.cached_hmc_ensemble(th, 6144, seed=2025, device=device, progress_bar=False, verbose=False,
                                   **EQUILIBRIUM)
    torch.manual_seed(1)
    net = default_model(sde, th.lattice_shape, channels=(16, 32, 64, 128), strides=(1, 2, 2, 2),
                        skip_var=site_variance(data.configs[:5120]))
    _, state, ckpt = cached_score_model(data, net, n_train=5120, normalisation="minmax", epochs=epochs, seed=1,
                                        batch_size=64, lr=1e-3, ema_decay=0.999, t_sampling="lognormal",
                                        device=device, progress_bar=False, verbose=False)
    model, loaded = load_model(ckpt, device=device)
    train_s = float(np.sum(loaded.get("epoch_seconds", [float("nan")])))
    spec = data_spectrum(data.configs[:5120], state["metadata"]["normaliser"])
    t0 = time.perf_counter()
    phi, log_w = dm_path_proposals(model, n, 41, theory=th, spectrum=spec, normaliser=state["metadata"]["normaliser"],
                                   batch_size=256, device=device, progress_bar=False)
    sec = time.perf_counter() - t0
    chain = independence_chain(log_w.numpy(), np.zeros(n), seed=42)
    m = chain.take(phi.mean(dim=(1, 2)).numpy())
    out = {"seconds": sec, "n": n, "acceptance": chain.acceptance, "train_seconds": train_s}
    for name, x in (("absM", np.abs(m)), ("M2", m ** 2)):
        out[name] = ess(x, sec) if np.ptp(x) > 0 else {"tau_int": float("inf"), "tau_error": float("nan"),
                                                       "ess_per_s": 0.0}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="L = 8, 16 only, shorter chains, 10 epochs")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs of the DM (default 40; quick 10)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    epochs = a.epochs or (10 if a.quick else 40)
    sizes = (8, 16) if a.quick else (8, 16, 32)
    n_meas, n_prop = (2048, 2048) if a.quick else (8192, 8192)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    results = {}
    for dev in devices:
        print(f"# {hardware_summary(dev)}")
        print("| L | sampler | acceptance | τ_int(|M|) | ESS/s (|M|) | τ_int(M²) | ESS/s (M²) | ratio to HMC (|M|) |")
        print("|---|---|---|---|---|---|---|---|")
        rows = []
        for L in sizes:
            th = lib.Phi4(L=L, kappa=KAPPA, lam=LAM)
            res = {"Metropolis": local("Metropolis", th, n_meas, dev), "HMC": local("HMC", th, n_meas, dev),
                   f"DM-MC ({epochs} epochs)": dm_mc(th, n_prop, epochs, dev)}
            hmc = res["HMC"]["absM"]["ess_per_s"]
            for name, r in res.items():
                acc = f"{r['acceptance']:.3f}" if "acceptance" in r else "–"
                print(f"| {L} | {name} | {acc} | {r['absM']['tau_int']:.1f} ± {r['absM']['tau_error']:.1f} | "
                      f"{r['absM']['ess_per_s']:.3g} | {r['M2']['tau_int']:.1f} ± {r['M2']['tau_error']:.1f} | "
                      f"{r['M2']['ess_per_s']:.3g} | {r['absM']['ess_per_s'] / hmc:.2g} |", flush=True)
                rows.append({"L": L, "sampler": name, **r})
            print(f"(L = {L}: DM training took {res[f'DM-MC ({epochs} epochs)']['train_seconds']:.0f} s)", flush=True)
        results[dev.type] = rows
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
