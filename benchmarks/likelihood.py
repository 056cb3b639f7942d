"""Cost of the likelihood (paper eq. 3.15): one evaluation of the probability-flow ODE's right-hand
side with its divergence, per configuration, for the exact trace (batched vector–Jacobian products,
D of them) and for Skilling–Hutchinson with 1 and 10 probes, with the library's default U-Net at
L = 8, 16, 32. A whole log q costs this times the solver's number of evaluations (NFE), which
the last column measures on the exact free field at the authors' tolerance (RK45, 10⁻⁵), where the
score is exact, so the count is the solver's own, not a network's roughness.

    python benchmarks/likelihood.py [--quick] [--json out.json]
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
from lib.diffusion import default_model, log_likelihood, make_sde  # noqa: E402
from lib.diffusion.likelihood import divergence_exact, divergence_hutchinson  # noqa: E402
from lib.diffusion.networks import build_score_model  # noqa: E402
from lib.runtime import hardware_summary  # noqa: E402
from lib.theories import GaussianField  # noqa: E402


def timed(fn, min_time):
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        if time.perf_counter() - t0 > min_time and n >= 2:
            return (time.perf_counter() - t0) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="L = 8, 16 only")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    sde = make_sde("ve", 25.0)
    rows = []
    print(f"# {hardware_summary()}; default U-Net (32-64-128-256, strides 1-2-2-2), float32")
    for L in ((8, 16) if a.quick else (8, 16, 32)):
        net = build_score_model(default_model(sde, (L, L)).config, seed=0).eval()
        batch = 4
        y = torch.randn(batch, L, L)
        t = torch.full((batch,), 0.5)
        f = lambda z: sde.ode_drift(z, t, net(z, t))  # noqa: E731
        row = {"L": L}
        row["exact_s"] = timed(lambda: divergence_exact(f, y, chunk=64), 1.0) / batch
        for n in (1, 10):
            probes = torch.randn(n, batch, L, L)
            row[f"hutchinson{n}_s"] = timed(lambda: divergence_hutchinson(f, y, probes), 1.0) / batch
        with torch.no_grad():
            row["forward_s"] = timed(lambda: f(y), 1.0) / batch
        th = lib.Phi4(L=L, kappa=0.2, lam=0.0)
        field = GaussianField(th.free_momentum_propagator())
        res = log_likelihood(field.score_fn(sde), sde, field.sample(2, seed=0), eps=1e-5, n_probes=1,
                             prior_logp=lambda x: field.log_prob(x, sde, sde.T))
        row["ode_nfe_free_field"] = res.nfe
        rows.append(row)
        print(f"  L={L:3d}: per configuration and evaluation: forward {row['forward_s'] * 1e3:8.2f} ms, "
              f"Hutchinson 1 probe {row['hutchinson1_s'] * 1e3:8.2f} ms, 10 probes {row['hutchinson10_s'] * 1e3:8.2f} ms, "
              f"exact trace {row['exact_s']:8.3f} s (x{row['exact_s'] / row['hutchinson10_s']:.0f} the 10-probe "
              f"estimate); RK45 at 1e-5 takes {res.nfe} evaluations on the free field -> a full exact log q "
              f"{row['exact_s'] * res.nfe / 60:.1f} min, Hutchinson-10 {row['hutchinson10_s'] * res.nfe:.1f} s")
    if a.json:
        a.json.write_text(json.dumps({"hardware": hardware_summary(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
