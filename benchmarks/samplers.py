"""Samplers at equal accuracy: network evaluations (NFE) and configurations per second.

Accuracy is measured where it is known exactly: the free field (λ = 0) at L = 32, κ = 0.2, VE with
σ = 25, whose diffused score is exact and diagonal in momentum space. Every sampler is then a
linear map per Fourier mode, so the variance of each mode of its output is computable without
statistical error:

* deterministic samplers (heun, ddim, dpm2): run the library's sampler on x_T = δ (a unit field at
  the origin); the Fourier transform of the output is the per-mode gain a(p), and the output
  variance is a(p)² v_T(p);
* Euler–Maruyama: the per-mode variance recursion of its step
  (:meth:`lib.theories.GaussianField.em_variance` of `Phi4.free_field()`, checked against the library's sampler by Monte Carlo in
  tests/test_diffusion_samplers.py).

The error is the root mean square over modes of var_out(p)/v_ε(p) − 1, with x_T drawn from the
exact p_T (so that the prior, the same for every sampler, is not what is measured). For each
few-step sampler the table gives the fewest levels whose error is below that of the paper's
500-step Euler–Maruyama, the NFE that costs, and the configurations per second that NFE gives
with the library's default U-Net at L = 32 (time per NFE measured in the same run, batch 64,
float32 and bf16 autocast). The paper: 97.52 configurations/s on an RTX 3090 with 500 EM steps.

    python benchmarks/samplers.py [--quick] [--json out.json]
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
from lib.diffusion import default_model, make_sde  # noqa: E402
from lib.diffusion.networks import build_score_model  # noqa: E402
from lib.diffusion.samplers import exponential_integrator, heun  # noqa: E402
from lib.runtime import hardware_summary  # noqa: E402
from _devices import add_devices_argument, selected_devices  # noqa: E402

PAPER_CONFIGS_PER_S = 97.52
EPS = 1e-3


def deterministic_variance(th, sde, run, start_var):
    """a(p)² v_T(p) from the library's sampler applied to a unit field at the origin."""
    delta = torch.zeros((1, *th.lattice_shape), dtype=torch.float64)
    delta[(0,) * (1 + th.d)] = 1.0
    res = run(th.free_field().score_fn(sde), sde, delta)
    gain = torch.fft.fftn(res.x[0]).real  # symmetric in p: the gain is real
    return gain ** 2 * start_var, res.nfe


def rel_error(var, target):
    return float(((var / target - 1) ** 2).mean().sqrt())


def nfe_cost(L, device, dtype, amp, batch=64, min_time=2.0):
    """Seconds per configuration per network evaluation of the default U-Net."""
    sde = make_sde("ve", 25.0)
    net = build_score_model(default_model(sde, (L, L)).config, seed=0).to(device=device, dtype=dtype).eval()
    x = torch.randn(batch, L, L, device=device, dtype=dtype)
    t = torch.full((batch,), 0.5, device=device, dtype=dtype)
    ctx = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if amp else torch.autocast(
        device_type=device.type, enabled=False))
    with torch.no_grad(), ctx:
        net(x, t)
        n, t0 = 0, time.perf_counter()
        while True:
            net(x, t)
            n += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            if time.perf_counter() - t0 > min_time and n >= 3:
                break
    return (time.perf_counter() - t0) / (n * batch)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="L = 16 and shorter timing")
    ap.add_argument("--json", type=Path, default=None)
    add_devices_argument(ap)
    a = ap.parse_args()
    L = 16 if a.quick else 32
    th = lib.Phi4(L=L, kappa=0.2, lam=0.0)
    sde = make_sde("ve", 25.0)
    field = th.free_field()
    v_T, v_eps = field.variance(sde, sde.T), field.variance(sde, EPS)
    print(f"# free field L={L}, kappa=0.2, VE sigma=25; error = rms over modes of var/exact - 1 (exact p_T start)")
    rows = []
    ref = rel_error(field.em_variance(sde, 500, EPS, v_T), v_eps)
    rows.append(dict(sampler="em", levels=500, nfe=499, error=ref))
    for n in (50, 100, 200, 1000):
        rows.append(dict(sampler="em", levels=n, nfe=n - 1, error=rel_error(field.em_variance(sde, n, EPS, v_T), v_eps)))
    runs = {
        "heun": lambda n: lambda s, sde_, x: heun(s, sde_, x.shape, n_steps=n, eps=EPS, x_init=x, dtype=x.dtype),
        "ddim": lambda n: lambda s, sde_, x: exponential_integrator(s, sde_, x.shape, n_steps=n, eps=EPS, order=1,
                                                                    x_init=x, dtype=x.dtype),
        "dpm2": lambda n: lambda s, sde_, x: exponential_integrator(s, sde_, x.shape, n_steps=n, eps=EPS, order=2,
                                                                    x_init=x, dtype=x.dtype),
    }
    # the prior sample is scaled by σ̃_max / prior_std = 1 for VE: x_T is used as given
    for name, make in runs.items():
        for n in (3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64, 128):
            var, nfe = deterministic_variance(th, sde, make(n), v_T)
            rows.append(dict(sampler=name, levels=n, nfe=nfe, error=rel_error(var, v_eps)))
    for r in rows:
        print(f"  {r['sampler']:5s} levels={r['levels']:4d} NFE={r['nfe']:4d}  error={r['error']:.2e}"
              + ("   <- the paper's sampler" if r["sampler"] == "em" and r["levels"] == 500 else ""))
    match = {}
    for name in runs:
        ok = [r for r in rows if r["sampler"] == name and r["error"] <= ref]
        match[name] = min(ok, key=lambda r: r["nfe"]) if ok else None
    device_rows = []
    devices = selected_devices(a)
    for device in devices:
        print(f"# {hardware_summary(device)}; default U-Net (32-64-128-256, strides 1-2-2-2) at L={L}, "
              f"batch {1024 if device.type == 'cuda' else 64}")
        for amp in (False, True):
            cost = nfe_cost(L, device, torch.float32, amp, batch=1024 if device.type == "cuda" else 64,
                            min_time=1.0 if a.quick else 3.0)
            label = "bf16 autocast" if amp else "float32"
            em_rate = 1 / (499 * cost)
            print(f"  {label:14s} {cost * 1e3:.3f} ms per configuration per NFE; EM-500: {em_rate:.2f} configs/s")
            for name, r in match.items():
                if r is None:
                    print(f"    {name}: never reaches EM-500's error in the levels tried")
                    continue
                rate = 1 / (r["nfe"] * cost)
                device_rows.append(dict(device=device.type, precision=label, sampler=name, levels=r["levels"],
                                        nfe=r["nfe"], error=r["error"], ms_per_nfe=cost * 1e3, configs_per_s=rate,
                                        ratio_to_em500=rate / em_rate, ratio_to_paper=rate / PAPER_CONFIGS_PER_S))
                print(f"    {name:5s} {r['levels']:3d} levels, {r['nfe']:3d} NFE (error {r['error']:.1e} <= EM-500 "
                      f"{ref:.1e}): {rate:7.2f} configs/s = x{rate / em_rate:.0f} EM-500, "
                      f"x{rate / PAPER_CONFIGS_PER_S:.2f} the paper's GPU rate")
    if a.json:
        a.json.write_text(json.dumps({"hardware": [hardware_summary(d) for d in devices], "L": L,
                                      "em500_error": ref, "accuracy": rows, "throughput": device_rows}, indent=1))


if __name__ == "__main__":
    main()
