"""Training recipes at equal CPU time, over training seeds: the paper's against a Gaussian skip and
log-normal noise levels.

Data: lattice φ⁴ at κ = 0.27, λ = 0.022 (near the transition) on L × L lattices (``--L``, default 8),
an HMC ensemble of independent chains (2048 training and 512 held-out configurations), min–max
normalised as in the paper. Network: the library's U-Net with channels 16-32-32-32, strides 1-1-2-2.

Quality: the denoising score-matching loss of eq. (3.4) on the held-out configurations at fixed
diffusion times t, *in excess of* the loss of the Gaussian field fitted to the training set's
power spectrum (:class:`lib.theories.GaussianField`), with common random numbers (the same x₀ and
z for both), so the excess is what the network knows beyond two-point correlations (negative is
better than the Gaussian).

Each recipe is trained from ``--seeds`` independent seeds (network initialisation, batches and
noise; the data stay fixed): the table gives the mean over seeds and its standard error from the
seed-to-seed spread, which is what decides whether one recipe beats another (the held-out error of
a single run, given for comparison, is several times smaller). "CPU to reach" is the CPU time at
the first checkpoint where a recipe's seed mean is at or below the paper recipe's final seed mean
at every t, as a fraction of the paper recipe's CPU time (the issue's target: at most 1/3).

Recipes: ``paper`` (t ~ U(ε, 1), s = h/σ_t); ``skip`` (a Gaussian skip of the data's site
variance); ``lognormal`` (log-normal noise levels, Karras et al.); ``skip+lognormal``.

    python benchmarks/training_recipes.py [--L 8] [--seeds 3] [--threads 1] [--quick] [--json out.json]
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
from lib.analysis.stats import mean_sem  # noqa: E402
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
    m, e = mean_sem(d.numpy())
    return float(m), float(e)


def seed_mean(values):
    """Mean over seeds and its standard error from their spread (:func:`lib.analysis.stats.mean_sem`;
    nan for one seed)."""
    if len(values) == 1:
        return float(values[0]), float("nan")
    m, e = mean_sem(values)
    return float(m), float(e)


def summarise(rows, recipes, checkpoints):
    """Seed means per (recipe, epochs), and each recipe's CPU to reach the paper's final quality."""
    table = {}
    for name in recipes:
        for ep in checkpoints:
            rs = [r for r in rows if r["recipe"] == name and r["epochs"] == ep]
            table[(name, ep)] = dict(
                cpu=seed_mean([r["cpu_seconds"] for r in rs]),
                excess={t: seed_mean([r["excess"][str(t)][0] for r in rs]) for t in TIMES},
                held_out_error={t: max(r["excess"][str(t)][1] for r in rs) for t in TIMES})
    reach = {}
    if "paper" in recipes:
        goal = table[("paper", checkpoints[-1])]

        def first(name, slack):
            def ok(ep, t):
                (m, e), (mg, eg) = table[(name, ep)]["excess"][t], goal["excess"][t]
                err = math.hypot(*(0.0 if math.isnan(x) else x for x in (e, eg)))  # nan: one seed
                return m <= mg + slack * err
            hit = next((ep for ep in checkpoints if all(ok(ep, t) for t in TIMES)), None)
            return None if hit is None else dict(epochs=hit, cpu_fraction=table[(name, hit)]["cpu"][0] / goal["cpu"][0])

        for name in recipes:
            # at or below the goal's seed mean; and within one combined seed error of it
            reach[name] = dict(mean=first(name, 0.0), within_error=first(name, 1.0))
    return table, reach


def report(rows, recipes, checkpoints, n_seeds):
    """Print the seed means and the CPU each recipe needs to reach the paper recipe's final quality."""
    table, reach = summarise(rows, recipes, checkpoints)
    print(f"\n# mean over {n_seeds} seed(s) ± its standard error (seed-to-seed spread); "
          "[largest held-out error of one run]")
    for (name, ep), row in table.items():
        print(f"  {name:15s} {ep:3d} epochs {row['cpu'][0]:7.1f} CPU s: " + "  ".join(
            f"t={t}: {m:+7.3f} ± {e:.3f} [{row['held_out_error'][t]:.3f}]" for t, (m, e) in row["excess"].items()))

    def say(hit):
        return "never within the run" if hit is None else f"{hit['epochs']} epochs, {hit['cpu_fraction']:.2f} of its CPU"

    print(f"# CPU to reach the paper recipe's {checkpoints[-1]}-epoch quality at every t "
          "(seed mean at or below it; within one combined seed error of it)")
    for name, hit in reach.items():
        print(f"  {name:15s} {say(hit['mean']):>32s};  {say(hit['within_error']):>32s}")
    return table, reach


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer epochs, one seed")
    ap.add_argument("--L", type=int, default=8, help="lattice extent (default 8)")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds per recipe (default 3)")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset of " + ", ".join(RECIPES))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", type=Path, default=None, help="write the rows and the summary here")
    ap.add_argument("--summarise", type=Path, nargs="+", default=None, metavar="JSON",
                    help="print the summary of earlier runs' --json output and exit; several files "
                         "(other recipes on the same L, seeds and threads) are merged into one table")
    a = ap.parse_args()
    if a.summarise:
        rows, runs = [], []
        for path in a.summarise:
            try:
                d = json.loads(path.read_text())
                rows += d["rows"]
                runs.append((d["L"], d["seeds"], d["threads"], d["hardware"]))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                ap.error(f"--summarise {path}: not the --json output of this benchmark ({exc})")
        if len(set(runs)) > 1:
            ap.error("--summarise: the files differ in L, seeds, threads or hardware, so their CPU times "
                     f"and data are not comparable: {sorted(set(runs))}")
        if len({(r["recipe"], r["seed"], r["epochs"]) for r in rows}) < len(rows):
            ap.error("--summarise: a recipe appears in more than one file")
        recipes = list(dict.fromkeys(r["recipe"] for r in rows))
        checkpoints = sorted({r["epochs"] for r in rows})
        print(f"# {d['hardware']}, {d['threads']} thread(s); phi4 L={d['L']}; {d['seeds']} seed(s)")
        report(rows, recipes, checkpoints, d["seeds"])
        return
    recipes = [r.strip() for r in a.recipes.split(",") if r.strip()]
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        ap.error(f"unknown recipe(s) {unknown}; choose from {list(RECIPES)}")
    if a.L < 8 or a.L % 4:
        ap.error("--L must be a multiple of 4 and at least 8 (the U-Net halves it twice)")
    if a.seeds < 1:
        ap.error("--seeds must be at least 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    n_seeds = 1 if a.quick else a.seeds
    th = lib.Phi4(L=a.L, kappa=0.27, lam=0.022)
    ens = lib.hmc_ensemble(th, 2560, seed=0, eps=0.1, n_steps=10, n_burnin=200, n_spacing=20, progress_bar=False)[0]
    train, held = ens[:2048], ens[2048:]
    norm = Normaliser.fit(train, "minmax")
    y_train, y_held = norm.forward(train).float(), norm.forward(held).float()
    sde = make_sde("ve", 25.0)
    gauss = GaussianField.fit(y_train.double()).score_fn(sde)
    v = float(y_train.double().var())
    checkpoints = (5, 10) if a.quick else (5, 10, 15, 20, 30, 40)
    print(f"# {hardware_summary()}, {torch.get_num_threads()} thread(s); phi4 L={a.L} kappa=0.27, "
          f"2048 train / 512 held out; U-Net 16-32-32-32; {n_seeds} training seed(s) per recipe")
    print("# held-out DSM loss minus the fitted Gaussian's (common random numbers), at t = " + ", ".join(map(str, TIMES)))
    rows = []
    for name in recipes:
        r = RECIPES[name]
        for s in range(n_seeds):
            cfg = default_model(sde, (a.L, a.L), channels=(16, 32, 32, 32), strides=(1, 1, 2, 2),
                                skip_var=v if r["skip"] else None).config
            model = build_score_model(cfg, seed=1 + 1000 * s)
            trainer = Trainer(model, y_train, TrainSettings(t_sampling=r["t_sampling"], epochs=checkpoints[-1]),
                              seed=2 + 1000 * s)
            cpu0 = time.process_time()
            for ep in checkpoints:
                trainer.fit(ep, progress_bar=False)
                cpu = time.process_time() - cpu0
                trainer.model.eval()
                ex = [excess(trainer.model, gauss, y_held, t) for t in TIMES]
                rows.append(dict(recipe=name, seed=s, epochs=ep, cpu_seconds=cpu,
                                 excess={str(t): e for t, e in zip(TIMES, ex)}))
                print(f"  {name:15s} seed {s} {ep:3d} epochs {cpu:7.1f} CPU s: " +
                      "  ".join(f"t={t}: {m:+8.3f} ± {e:.3f}" for t, (m, e) in zip(TIMES, ex)), flush=True)
    table, reach = report(rows, recipes, checkpoints, n_seeds)
    if a.json:
        out = dict(hardware=hardware_summary(), threads=torch.get_num_threads(), L=a.L, seeds=n_seeds,
                   times=list(TIMES), rows=rows, reach=reach,
                   summary=[dict(recipe=n, epochs=ep, cpu_seconds=row["cpu"],
                                 excess={str(t): v for t, v in row["excess"].items()})
                            for (n, ep), row in table.items()])
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
