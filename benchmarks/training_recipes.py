"""Training recipes at equal CPU time: the paper's against a Gaussian skip and log-normal noise levels.

Data: lattice φ⁴ at L = 8, κ = 0.27, λ = 0.022 (near the transition), an HMC ensemble of
independent chains (2048 training and 512 held-out configurations), min–max normalised as in the
paper. Network: the library's U-Net with channels 16-32-32-32, strides 1-1-2-2.

Quality: the denoising score-matching loss of eq. (3.4) on the held-out configurations at fixed
diffusion times t, *in excess of* the loss of the Gaussian field fitted to the training set's
power spectrum (:class:`lib.theories.GaussianField`), with common random numbers (the same x₀ and
z for both), so the excess is what the network knows beyond two-point correlations (negative is
better than the Gaussian; its standard error comes from the per-configuration differences).

Recipes: ``paper`` (t ~ U(ε, 1), s = h/σ_t); ``skip`` (a Gaussian skip of the data's site
variance); ``lognormal`` (log-normal noise levels, Karras et al.); ``skip+lognormal``.

    python benchmarks/training_recipes.py [--quick] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lib  # noqa: E402
from lib.diffusion import Normaliser, Trainer, TrainSettings, default_model, make_sde  # noqa: E402
from lib.diffusion.networks import build_score_model  # noqa: E402
from lib.runtime import hardware_summary  # noqa: E402
from lib.theories import GaussianField  # noqa: E402

TIMES = (0.05, 0.3, 1.0)
RECIPES = {"paper": dict(skip=False, t_sampling="uniform"), "skip": dict(skip=True, t_sampling="uniform"),
           "lognormal": dict(skip=False, t_sampling="lognormal"),
           "skip+lognormal": dict(skip=True, t_sampling="lognormal")}


def excess(model, gauss_fn, held, t, seed=0):
    """Mean held-out DSM loss of ``model`` minus the Gaussian's at time t, and its standard error."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(held.shape, generator=g, dtype=held.dtype)
    tt = torch.full((held.shape[0],), t, dtype=held.dtype)
    sde = model.sde
    xt = sde.perturb(held, tt, z)
    std = float(sde.marginal_std(torch.tensor(t, dtype=torch.float64)))
    with torch.no_grad():
        r_net = ((std * model(xt, tt) + z) ** 2).flatten(1).sum(1)
        r_gauss = ((std * gauss_fn(xt.double(), tt.double()).to(held.dtype) + z) ** 2).flatten(1).sum(1)
    d = (r_net - r_gauss).double()
    return float(d.mean()), float(d.std() / math.sqrt(len(d)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer epochs")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    th = lib.Phi4(L=8, kappa=0.27, lam=0.022)
    ens = lib.hmc_ensemble(th, 2560, seed=0, eps=0.1, n_steps=10, n_burnin=200, n_spacing=20, progress_bar=False)[0]
    train, held = ens[:2048], ens[2048:]
    norm = Normaliser.fit(train, "minmax")
    y_train, y_held = norm.forward(train).float(), norm.forward(held).float()
    sde = make_sde("ve", 25.0)
    gauss = GaussianField.fit(y_train.double()).score_fn(sde)
    v = float(y_train.double().var())
    checkpoints = (5, 10) if a.quick else (5, 10, 20, 40)
    print(f"# {hardware_summary()}; phi4 L=8 kappa=0.27, 2048 train / 512 held out; U-Net 16-32-32-32")
    print("# held-out DSM loss minus the fitted Gaussian's (common random numbers), at t = " + ", ".join(map(str, TIMES)))
    rows = []
    for name, r in RECIPES.items():
        cfg = default_model(sde, (8, 8), channels=(16, 32, 32, 32), strides=(1, 1, 2, 2),
                            skip_var=v if r["skip"] else None).config
        model = build_score_model(cfg, seed=1)
        trainer = Trainer(model, y_train, TrainSettings(t_sampling=r["t_sampling"], epochs=checkpoints[-1]), seed=2)
        cpu0 = time.process_time()
        for ep in checkpoints:
            trainer.fit(ep, progress_bar=False)
            cpu = time.process_time() - cpu0
            trainer.model.eval()
            ex = [excess(trainer.model, gauss, y_held, t) for t in TIMES]
            rows.append(dict(recipe=name, epochs=ep, cpu_seconds=cpu,
                             excess={str(t): e for t, e in zip(TIMES, ex)}))
            print(f"  {name:15s} {ep:3d} epochs {cpu:7.1f} CPU s: " +
                  "  ".join(f"t={t}: {m:+8.3f} ± {s:.3f}" for t, (m, s) in zip(TIMES, ex)))
    if a.json:
        a.json.write_text(json.dumps({"hardware": hardware_summary(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
