"""Critical slowing down at κ = 0.27, λ = 0.022 (the paper's near-critical point): τ_int of |M| and M²
(Γ-method), seconds per update and effective samples per second for HMC, Fourier-accelerated HMC,
embedded-cluster + HMC and local Metropolis against L, and the dynamical exponent z of each
(τ_int ∝ L^z, a weighted fit of log τ against log L). Issue 25; chapter 9 sets DM-MC's cost per
proposal against the best of these rates.

    python benchmarks/critical_slowing.py [--quick] [--Ls 8,16,32,64] [--scale S] [--json OUT]
    python benchmarks/critical_slowing.py --summarise OUT   # the README's markdown table

One update is one trajectory of length 1 (ε = 0.1 × 10) for the HMC variants (the cluster update
adds one Swendsen–Wang sign flip per trajectory) and one checkerboard sweep for Metropolis.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lib  # noqa: E402
from lib.mcmc import dynamical_exponent, sampler_cost  # noqa: E402
from lib.runtime import hardware_summary  # noqa: E402

ALGORITHMS = {"hmc": dict(eps=0.1, n_steps=10), "fa-hmc": dict(eps=0.1, n_steps=10, mass=1.0),
              "cluster": dict(eps=0.1, n_steps=10, n_hmc=1), "metropolis": dict(delta=1.0)}
#: updates measured per chain at L = 8, 16, 32, 64 (chapter 2's defaults: 50 τ_int(|M|) or more where
#: affordable; larger L continue the last entry doubled); burn-in is a quarter of it
MEASURE = {"hmc": [4000, 8000, 16000, 40000], "fa-hmc": [4000, 8000, 16000, 16000],
           "cluster": [2000, 2000, 4000, 4000], "metropolis": [8000, 16000, 32000, 64000]}
DEFAULT_LS = [8, 16, 32, 64]


def measured_updates(alg: str, L: int, scale: float = 1.0) -> int:
    """The number of measured updates of :data:`MEASURE` for ``alg`` at ``L`` (times ``scale``)."""
    table = MEASURE[alg]
    if L in DEFAULT_LS:
        n = table[DEFAULT_LS.index(L)]
    else:  # between or beyond the table: the next larger size's entry, doubled per doubling beyond 64
        bigger = [i for i, v in enumerate(DEFAULT_LS) if v >= L]
        n = table[bigger[0]] if bigger else int(table[-1] * 2 ** math.log2(L / DEFAULT_LS[-1]))
    return max(int(n * scale), 8)


def summarise(data: dict) -> str:
    """A markdown table of a run's JSON: per L and algorithm the cost, τ_int, the rate and the pull of
    ⟨|M|⟩ and ⟨M²⟩ against HMC's at the same L (all samplers target e^{−S}: pulls of order one)."""
    lines = [f"{data['hardware']}; κ = {data['kappa']}, λ = {data['lam']}, {data['n_chains']} chains", "",
             "| L | algorithm | ms per update | τ_int(\\|M\\|) | τ_int(M²) | independent \\|M\\| per s "
             "| ⟨\\|M\\|⟩ pull vs HMC | ⟨M²⟩ pull vs HMC |", "|---|---|---|---|---|---|---|---|"]
    hmc = {r["L"]: r for r in data["rows"] if r["algorithm"] == "hmc"}
    for r in data["rows"]:
        ref = hmc.get(r["L"])
        pulls = []
        for key in ("absM", "M2"):
            a_, b_ = r[key], (ref or {}).get(key)
            ok = ref is not None and r["algorithm"] != "hmc" and math.isfinite(a_["error"]) and math.isfinite(b_["error"])
            pulls.append(f"{(a_['mean'] - b_['mean']) / math.hypot(a_['error'], b_['error']):+.1f}" if ok else "–")
        lines.append(f"| {r['L']} | {r['algorithm']} | {1e3 * r['seconds']:.3f} | {r['absM']['tau']:.1f} ± "
                     f"{r['absM']['tau_error']:.1f} | {r['M2']['tau']:.1f} ± {r['M2']['tau_error']:.1f} | "
                     f"{r['absM']['per_second']:.3g} | {pulls[0]} | {pulls[1]} |")
    lines += ["", "z (τ_int(|M|) ∝ L^z): " + ", ".join(f"{k} {v[0]:.2f} ± {v[1]:.2f}" for k, v in data["z_absM"].items()),
              "fastest per independent |M|: " + ", ".join(f"L = {k}: {v}" for k, v in data["fastest"].items())]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--summarise", type=Path, default=None, metavar="JSON",
                   help="print the markdown table of a run's JSON and exit")
    p.add_argument("--quick", action="store_true", help="L = 8, 16 and short chains (a smoke test)")
    p.add_argument("--Ls", default="8,16,32,64")
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply the measured updates of every algorithm and L (MEASURE) by this")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    if a.summarise:
        print(summarise(json.loads(a.summarise.read_text())))
        return 0
    torch.set_num_threads(a.threads)
    Ls = [8, 16] if a.quick else [int(v) for v in a.Ls.split(",")]
    scale = 0.05 if a.quick else a.scale
    device = torch.device("cpu")
    print(hardware_summary(device))
    rows, t0 = [], time.time()
    for L in Ls:
        theory = lib.Phi4(L=L, kappa=0.27, lam=0.022)
        for alg, kw in ALGORITHMS.items():
            n_measure = measured_updates(alg, L, scale)
            r = sampler_cost(theory, algorithm=alg, n_chains=a.chains, n_therm=n_measure // 4, n_measure=n_measure,
                             seed=L, start="hot", device=device, **kw)
            rows.append(r)
            print(f"L={L:3d} {alg:10s} {r['seconds'] * 1e3:8.3f} ms/update  "
                  f"tau|M| {r['absM']['tau']:7.1f} ± {r['absM']['tau_error']:5.1f}  "
                  f"tauM2 {r['M2']['tau']:7.1f} ± {r['M2']['tau_error']:5.1f}  "
                  f"|M| per s {r['absM']['per_second']:9.1f}", flush=True)
    z = {}
    for alg in ALGORITHMS:
        mine = [r for r in rows if r["algorithm"] == alg and math.isfinite(r["absM"]["tau"])]
        if len(mine) >= 2:
            z[alg] = dynamical_exponent([r["L"] for r in mine], [r["absM"]["tau"] for r in mine],
                           [r["absM"]["tau_error"] for r in mine])
            print(f"z({alg}, |M|) = {z[alg][0]:.2f} ± {z[alg][1]:.2f}")
    best = {L: max((r for r in rows if r["L"] == L), key=lambda r: r["absM"]["per_second"])["algorithm"] for L in Ls}
    print("fastest per independent |M|: " + ", ".join(f"L={L}: {alg}" for L, alg in best.items()))
    print(f"total {time.time() - t0:.0f} s")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"hardware": hardware_summary(device), "kappa": 0.27, "lam": 0.022,
                                      "settings": ALGORITHMS, "n_chains": a.chains, "measure_scale": scale,
                                      "rows": rows, "z_absM": z, "fastest": best},
                                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
