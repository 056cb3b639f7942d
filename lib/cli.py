"""Command line: ``python -m lib <command> ...``.

Commands
--------
hmc          generate an ensemble with the paper's HMC protocol and write it to an .npz file
observables  print ⟨M⟩, ⟨|M|⟩, χ₂, U_L (jackknife errors) of an ensemble file

Every error is reported in one line on stderr with a non-zero exit status; no file is
overwritten without ``--force``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        raise CLIError(f"{self.prog}: {message}", status=2)


class CLIError(Exception):
    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


def _positive_int(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _nonneg_int(s):
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {s}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m lib", description="Lattice φ⁴ ensembles and observables (see README).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    h = sub.add_parser("hmc", help="generate an HMC ensemble (one configuration per chain)")
    h.add_argument("--L", type=_positive_int, required=True, help="lattice size")
    h.add_argument("--kappa", type=float, required=True, help="hopping parameter κ")
    h.add_argument("--lam", type=float, required=True, help="quartic coupling λ")
    h.add_argument("--d", type=_positive_int, default=2, help="dimensions (default 2)")
    h.add_argument("--n-configs", type=_positive_int, required=True, help="number of configurations (= chains)")
    h.add_argument("--seed", type=_nonneg_int, required=True)
    h.add_argument("--out", type=Path, required=True, help="output .npz file")
    h.add_argument("--n-burnin", type=_nonneg_int, default=100, help="burn-in trajectories (paper: 100)")
    h.add_argument("--n-spacing", type=_positive_int, default=64, help="further trajectories before keeping one (paper: 64)")
    h.add_argument("--eps", type=float, default=0.01, help="leapfrog step (paper: 0.01)")
    h.add_argument("--n-steps", type=_positive_int, default=100, help="leapfrog steps per trajectory (paper: 100)")
    h.add_argument("--batch-size", type=_positive_int, default=1024, help="chains updated together")
    h.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    h.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    h.add_argument("--checkpoint-dir", type=Path, default=None, help="save sampler state here; rerun to resume")
    h.add_argument("--force", action="store_true", help="overwrite an existing output file")
    h.add_argument("--no-progress", action="store_true", help="no progress bars")

    o = sub.add_parser("observables", help="⟨M⟩, ⟨|M|⟩, χ₂, U_L of an ensemble file")
    o.add_argument("file", type=Path)
    o.add_argument("--json", action="store_true", help="print JSON instead of a table")
    o.add_argument("--n-blocks", type=_positive_int, default=None, help="jackknife blocks (default: delete-one)")
    return p


def cmd_hmc(a) -> int:
    import torch

    from .ensemble import make_metadata, save_ensemble
    from .hmc import hmc_ensemble
    from .phi4 import Phi4
    from .utils import resolve_device

    if a.out.suffix != ".npz":
        raise CLIError(f"--out must name a .npz file, got {a.out}")
    if a.out.exists() and not a.force:
        raise CLIError(f"{a.out} exists; pass --force to overwrite it")
    if not a.out.parent.exists():
        raise CLIError(f"directory {a.out.parent} does not exist")
    if not a.eps > 0:
        raise CLIError(f"--eps must be positive, got {a.eps}")
    try:
        theory = Phi4(L=a.L, kappa=a.kappa, lam=a.lam, d=a.d)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    try:
        device = resolve_device(a.device)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise CLIError(f"device {a.device!r} is not available: {str(exc).splitlines()[0]}") from exc
    dtype = getattr(torch, a.dtype)
    configs, info = hmc_ensemble(theory, a.n_configs, a.seed, n_burnin=a.n_burnin, n_spacing=a.n_spacing,
                                 eps=a.eps, n_steps=a.n_steps, batch_size=a.batch_size, device=device, dtype=dtype,
                                 progress_bar=not a.no_progress, checkpoint_dir=a.checkpoint_dir)
    settings = {"protocol": "independent-chains", "n_configs": a.n_configs, "n_burnin": a.n_burnin,
                "n_spacing": a.n_spacing, "eps": a.eps, "n_steps": a.n_steps, "batch_size": a.batch_size,
                "dtype": a.dtype}
    meta = make_metadata(theory, "hmc", settings, a.seed, acceptance=info["acceptance"], device=str(device))
    save_ensemble(a.out, configs, meta, overwrite=a.force)
    print(f"wrote {a.n_configs} configurations to {a.out} (acceptance {info['acceptance']:.3f})", file=sys.stderr)
    return 0


def cmd_observables(a) -> int:
    from .ensemble import load_ensemble
    from .observables import summary

    try:
        ens = load_ensemble(a.file)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    if len(ens) < 2:
        raise CLIError(f"{a.file} holds {len(ens)} configuration(s); need at least 2 for errors")
    if a.n_blocks is not None and not 2 <= a.n_blocks <= len(ens):
        raise CLIError(f"--n-blocks must lie between 2 and {len(ens)}")
    s = summary(ens.configs, n_blocks=a.n_blocks)
    th = ens.metadata.get("theory", {})
    out = {k: list(s[k]) for k in ("M", "absM", "chi2", "binder")}
    out.update(n_configs=s["n_configs"], L=th.get("L"), kappa=th.get("kappa"), lam=th.get("lam"), d=th.get("d"),
               theory=th, sampler=ens.metadata.get("sampler"), seed=ens.metadata.get("seed"))
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{a.file}: {th.get('name')} L={th.get('L')} kappa={th.get('kappa')} lam={th.get('lam')}, "
              f"{s['n_configs']} configurations from {ens.metadata.get('sampler')}")
        for k, label in (("M", "<M>"), ("absM", "<|M|>"), ("chi2", "chi2"), ("binder", "U_L")):
            v, e = s[k]
            print(f"  {label:6s} = {v: .6f} ± {e:.6f}")
    return 0


COMMANDS = {"hmc": cmd_hmc, "observables": cmd_observables}


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
