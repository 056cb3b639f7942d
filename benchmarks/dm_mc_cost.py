"""What an independent sample costs: effective samples per second of |M| and M² for local
Metropolis, HMC and exact DM-MC (path-space weights) at κ = 0.27, λ = 0.022, L = 8, 16, 32.

For each L, on this machine and in one run:

* HMC (ε = 0.1, 10 leapfrog steps, trajectory length 1) and local Metropolis (δ = 1): 16 chains
  in a batch, thermalised from ordered starts, then measured; τ_int with Wolff's window over the
  16 replicas. The rate (chain-trajectories or sweeps per second) is that of the 16-chain run on
  a CPU and of a batch of 4096 chains on a GPU, where 16 chains would leave it idle.
* DM-MC: a model trained on equilibrium HMC data (ordered starts with random vacuum signs,
  2000 trajectories of burn-in, 16 configurations per chain 128 apart; 5120 for training) with
  a Gaussian skip and log-normal noise levels (or the paper's recipe, ``--recipes``), U-Net
  16-32-64-128 (``--channels``), ``--epochs`` epochs, as in chapter 9 (cached in ``$DMSQ_CACHE``:
  a rerun with the chapter's cache only measures; several epoch counts continue one run).
  Proposals are 100-step reverse paths with propagator kernels; the chain is the exact
  independence sampler on their path weights; the proposals' generation is timed here.
  The training's CPU time is stated separately (amortised over ``N / ESS`` it is a fixed cost).

ESS per second = rate / (2 τ_int); the table also gives the ratio DM-MC / HMC.

    python benchmarks/dm_mc_cost.py [--quick] [--epochs 40[,100,...]] [--sizes 8,16,32]
        [--channels 16,32,64,128] [--recipes skip+lognormal,paper] [--devices all|cpu|cuda] [--json out.json]
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
from _devices import add_devices_argument, selected_devices, sync  # noqa: E402

KAPPA, LAM = 0.27, 0.022
EQUILIBRIUM = dict(n_burnin=2000, n_spacing=128, n_per_chain=16, start="ordered", eps=0.1, n_steps=10)


RECIPES = {"skip+lognormal": dict(skip=True, t_sampling="lognormal"),
           "paper": dict(skip=False, t_sampling="uniform")}


def ess(series, rate):
    """τ_int (Γ-method) of a (time × replicas) series and effective samples per second,
    ``rate / (2 τ_int)`` with ``rate`` the measurements (or proposals) per second."""
    ac = autocorrelation(series, name="x")
    return {"tau_int": float(ac.tau_int), "tau_error": float(ac.tau_int_error),
            "ess_per_s": rate / (2 * ac.tau_int)}



def make_local(kind, th, n_chains, device, seed):
    if kind == "HMC":
        return lib.HMC(th, n_chains, eps=0.1, n_steps=10, seed=seed, start="ordered", device=device)
    return lib.Metropolis(th, n_chains, delta=1.0, seed=seed, device=device)


def local(kind, th, n_meas, device, rate_chains):
    """τ_int from 16 chains; the rate (chain-trajectories or sweeps per second) from a batch of
    ``rate_chains`` chains, which on a GPU is larger than 16 (the rate a user would run at)."""
    s = make_local(kind, th, 16, device, 11 if kind == "HMC" else 12)
    s.run(2000, progress_bar=False)
    t0 = time.perf_counter()
    m = np.asarray(s.run(n_meas, measure=lambda p: p.mean(dim=tuple(range(1, p.ndim))), progress_bar=False))
    sync(device)
    rate = m.size / (time.perf_counter() - t0)
    if rate_chains != 16:
        r = make_local(kind, th, rate_chains, device, 13)
        r.run(3, progress_bar=False)
        sync(device)
        t0, n = time.perf_counter(), 0
        while n < 10 or time.perf_counter() - t0 < 2.0:
            r.run(5, progress_bar=False)
            n += 5
        sync(device)
        rate = n * rate_chains / (time.perf_counter() - t0)
    return {"rate_per_s": rate, "rate_chains": rate_chains, "n": m.size, "absM": ess(np.abs(m), rate),
            "M2": ess(m ** 2, rate)}


def dm_mc(th, n, epochs, device, channels, recipe, batch_size):
    sde = make_sde("ve", 25.0)
    data = lib.cached_hmc_ensemble(th, 6144, seed=2025, device=device, progress_bar=False, verbose=False,
                                   **EQUILIBRIUM)
    torch.manual_seed(1)
    skip = site_variance(data.configs[:5120]) if RECIPES[recipe]["skip"] else None
    net = default_model(sde, th.lattice_shape, channels=channels, strides=(1, 2, 2, 2), skip_var=skip)
    _, state, ckpt = cached_score_model(data, net, n_train=5120, normalisation="minmax", epochs=epochs, seed=1,
                                        batch_size=64, lr=1e-3, ema_decay=0.999,
                                        t_sampling=RECIPES[recipe]["t_sampling"],
                                        device=device, progress_bar=False, verbose=False)
    model, loaded = load_model(ckpt, device=device)
    train_s = float(np.sum(loaded.get("epoch_seconds", [float("nan")])))
    spec = data_spectrum(data.configs[:5120], state["metadata"]["normaliser"])
    sync(device)
    t0 = time.perf_counter()
    phi, log_w = dm_path_proposals(model, n, 41, theory=th, spectrum=spec, normaliser=state["metadata"]["normaliser"],
                                   batch_size=batch_size, device=device, progress_bar=False)
    sync(device)
    sec = time.perf_counter() - t0
    chain = independence_chain(log_w.numpy(), seed=42)
    m = chain.take(phi.mean(dim=(1, 2)).numpy())
    out = {"rate_per_s": n / sec, "n": n, "acceptance": chain.acceptance, "train_seconds": train_s,
           "epochs": epochs, "recipe": recipe, "checkpoint": str(ckpt)}
    for name, x in (("absM", np.abs(m)), ("M2", m ** 2)):
        out[name] = ess(x, n / sec) if np.ptp(x) > 0 else {"tau_int": float("inf"), "tau_error": float("nan"),
                                                           "ess_per_s": 0.0}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="L = 8, 16 only, shorter chains, 10 epochs")
    ap.add_argument("--epochs", default=None,
                    help="training epochs of the DM, one number or several (comma-separated: each longer "
                         "run continues the shorter one); default 40, quick 10")
    ap.add_argument("--sizes", default=None, help="lattice sizes L, comma-separated (default 8,16,32; quick 8,16)")
    ap.add_argument("--channels", default="16,32,64,128", help="U-Net channels, four numbers (the paper's: "
                    "32,64,128,256)")
    ap.add_argument("--recipes", default="skip+lognormal",
                    help=f"training recipes, comma-separated, from {', '.join(RECIPES)}")
    ap.add_argument("--no-local", action="store_true", help="skip the Metropolis and HMC chains (only DM-MC)")
    ap.add_argument("--json", type=Path, default=None)
    add_devices_argument(ap)
    a = ap.parse_args()
    try:
        epochs_list = [int(e) for e in (a.epochs or ("10" if a.quick else "40")).split(",")]
        sizes = [int(x) for x in (a.sizes or ("8,16" if a.quick else "8,16,32")).split(",")]
        channels = tuple(int(c) for c in a.channels.split(","))
    except ValueError:
        ap.error("--epochs, --sizes and --channels take comma-separated whole numbers")
    if min(epochs_list) < 1 or min(sizes) < 2 or min(channels) < 1:
        ap.error("--epochs, --sizes and --channels must be positive (sizes at least 2)")
    recipes = a.recipes.split(",")
    if len(channels) != 4:
        ap.error("--channels needs four numbers")
    if any(r not in RECIPES for r in recipes):
        ap.error(f"--recipes: choose from {', '.join(RECIPES)}")
    n_meas, n_prop = (2048, 2048) if a.quick else (8192, 8192)
    devices = selected_devices(a)
    results = {"hardware": {}, "channels": list(channels), "rows": {}}
    for dev in devices:
        results["hardware"][dev.type] = hardware_summary(dev)
        gpu = dev.type == "cuda"
        print(f"# {hardware_summary(dev)}; U-Net {'-'.join(map(str, channels))}")
        print("| L | sampler | acceptance | τ_int(|M|) | ESS/s (|M|) | τ_int(M²) | ESS/s (M²) | ratio to HMC (|M|) |")
        print("|---|---|---|---|---|---|---|---|")
        rows = results["rows"].setdefault(dev.type, [])
        for L in sizes:
            th = lib.Phi4(L=L, kappa=KAPPA, lam=LAM)
            res = {} if a.no_local else {"Metropolis": local("Metropolis", th, n_meas, dev, 4096 if gpu else 16),
                                         "HMC": local("HMC", th, n_meas, dev, 4096 if gpu else 16)}
            for epochs in epochs_list:  # every recipe at one training length before the next length
                for recipe in recipes:
                    res[f"DM-MC ({recipe}, {epochs} epochs)"] = dm_mc(th, n_prop, epochs, dev, channels, recipe,
                                                                     1024 if gpu else 256)
                    hmc = res["HMC"]["absM"]["ess_per_s"] if "HMC" in res else float("nan")
                    for name, r in res.items():
                        if any(row["L"] == L and row["sampler"] == name for row in rows):
                            continue
                        acc = f"{r['acceptance']:.3f}" if "acceptance" in r else "–"
                        print(f"| {L} | {name} | {acc} | {r['absM']['tau_int']:.1f} ± {r['absM']['tau_error']:.1f} | "
                              f"{r['absM']['ess_per_s']:.3g} | {r['M2']['tau_int']:.1f} ± {r['M2']['tau_error']:.1f} | "
                              f"{r['M2']['ess_per_s']:.3g} | {r['absM']['ess_per_s'] / hmc:.2g} |"
                              + (f" (training {r['train_seconds']:.0f} s)" if "train_seconds" in r else ""), flush=True)
                        rows.append({"L": L, "sampler": name, **r})
                    if a.json:  # after every point, so that an interrupted run keeps what it measured
                        a.json.write_text(json.dumps(results, indent=1))
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
