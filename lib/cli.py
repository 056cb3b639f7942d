"""Command line: ``python -m lib <command> ...``.

Commands
--------
hmc          generate an ensemble with the paper's HMC protocol and write it to an .npz file
observables  print ⟨M⟩, ⟨|M|⟩, χ₂, U_L (jackknife errors) of an ensemble file
train        train a diffusion model (score network) on an ensemble; writes a checkpoint
sample       generate an ensemble from a checkpoint (same file format as HMC ensembles)

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
    h.add_argument("--start", choices=["hot", "ordered", "cold"], default="hot",
                   help="hot (paper), or ordered: the classical vacuum with a random sign (broken phase)")
    h.add_argument("--per-chain", type=_positive_int, default=1,
                   help="configurations kept per chain, --n-spacing apart (paper: 1)")
    h.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    h.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    h.add_argument("--checkpoint-dir", type=Path, default=None, help="save sampler state here; rerun to resume")
    h.add_argument("--force", action="store_true", help="overwrite an existing output file")
    h.add_argument("--no-progress", action="store_true", help="no progress bars")

    o = sub.add_parser("observables", help="⟨M⟩, ⟨|M|⟩, χ₂, U_L of an ensemble file")
    o.add_argument("file", type=Path)
    o.add_argument("--json", action="store_true", help="print JSON instead of a table")
    o.add_argument("--n-blocks", type=_positive_int, default=None, help="jackknife blocks (default: delete-one)")

    t = sub.add_parser("train", help="train a diffusion model on an ensemble file")
    t.add_argument("ensemble", type=Path, help="training ensemble (.npz)")
    t.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.pt)")
    t.add_argument("--epochs", type=_positive_int, default=250, help="paper: 250")
    t.add_argument("--batch-size", type=_positive_int, default=64, help="paper: 64")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (paper: 1e-3)")
    t.add_argument("--sde", choices=["ve", "vp"], default="ve")
    t.add_argument("--sigma", type=float, default=25.0, help="g(t) = sigma^t (paper: 25)")
    t.add_argument("--channels", default="32,64,128,256", help="U-Net channels (four numbers)")
    t.add_argument("--strides", default="1,2,2,2", help="U-Net strides (four numbers in {1,2})")
    t.add_argument("--hidden", default="64,64", help="MLP hidden sizes (for non-lattice data)")
    t.add_argument("--normalise", choices=["minmax", "maxabs", "none"], default="minmax",
                   help="field rescaling before training (authors: minmax)")
    t.add_argument("--z2-augment", action="store_true", help="flip the sign of training configurations at random")
    t.add_argument("--odd", action="store_true", help="make the network odd under phi -> -phi")
    t.add_argument("--zero-mode-head", action="store_true",
                   help="U-Net with a path for the magnetisation (zero mode) of the score (chapter 6)")
    t.add_argument("--zero-mode-sd", type=float, default=None,
                   help="scale of the zero-mode head (default: the RMS magnetisation of the data in network units)")
    t.add_argument("--zero-mode-weight", type=float, default=1.0,
                   help="weight of the zero mode in the DSM loss (paper: 1; chapter 6)")
    t.add_argument("--ema", type=float, default=None, help="EMA decay of the weights, e.g. 0.999")
    t.add_argument("--n-train", type=_positive_int, default=None, help="use only the first N configurations")
    t.add_argument("--seed", type=_nonneg_int, required=True)
    t.add_argument("--device", default="auto")
    t.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run written to --out")
    t.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    t.add_argument("--no-progress", action="store_true")

    g = sub.add_parser("sample", help="generate configurations from a checkpoint")
    g.add_argument("checkpoint", type=Path)
    g.add_argument("--n", type=_positive_int, required=True, help="number of configurations")
    g.add_argument("--out", type=Path, required=True, help="output ensemble (.npz)")
    g.add_argument("--seed", type=_nonneg_int, required=True)
    g.add_argument("--L", type=_positive_int, default=None, help="lattice size (default: the training L)")
    g.add_argument("--sampler", choices=["em", "pc", "ode"], default="em")
    g.add_argument("--steps", type=_positive_int, default=500, help="Euler-Maruyama steps (paper: 500)")
    g.add_argument("--eps", type=float, default=1e-3, help="last diffusion time (paper: 1e-3)")
    g.add_argument("--batch-size", type=_positive_int, default=1024)
    g.add_argument("--no-ema", action="store_true", help="use the raw weights even if EMA weights exist")
    g.add_argument("--device", default="auto")
    g.add_argument("--force", action="store_true")
    g.add_argument("--no-progress", action="store_true")
    return p


def _ints(s: str, name: str, n: int | None = None) -> tuple:
    try:
        v = tuple(int(x) for x in s.split(","))
    except ValueError:
        raise CLIError(f"--{name} must be comma-separated integers, got {s!r}") from None
    if n is not None and len(v) != n:
        raise CLIError(f"--{name} needs {n} numbers, got {len(v)}")
    return v


def _device(name: str):
    import torch

    from .utils import resolve_device

    try:
        device = resolve_device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise CLIError(f"device {name!r} is not available: {str(exc).splitlines()[0]}") from exc
    return device


def _check_out(path: Path, suffix: str, force: bool, resume: bool = False):
    if path.suffix != suffix:
        raise CLIError(f"--out must name a {suffix} file, got {path}")
    if not path.parent.exists():
        raise CLIError(f"directory {path.parent} does not exist")
    if path.exists() and not (force or resume):
        raise CLIError(f"{path} exists; pass --force to overwrite it" + (" or --resume to continue it" if suffix == ".pt" else ""))


def cmd_train(a) -> int:
    from .diffusion import check_lattice, default_model, make_sde, train_score_model, zero_mode_scale
    from .ensemble import load_ensemble

    _check_out(a.out, ".pt", a.force, a.resume)
    if a.force and a.out.exists() and not a.resume:
        a.out.unlink()
    if a.resume and not a.out.exists():
        raise CLIError(f"--resume: {a.out} does not exist")
    try:
        ens = load_ensemble(a.ensemble)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    configs = ens.configs[: a.n_train] if a.n_train else ens.configs
    if a.n_train and a.n_train > len(ens):
        raise CLIError(f"--n-train {a.n_train} exceeds the {len(ens)} configurations in {a.ensemble}")
    if not (a.lr > 0 and a.sigma > 1 and a.zero_mode_weight > 0):
        raise CLIError("need --lr > 0, --sigma > 1 and --zero-mode-weight > 0")
    device = _device(a.device)
    sde = make_sde(a.sde, a.sigma)
    try:
        model = default_model(sde, configs.shape[1:], channels=_ints(a.channels, "channels", 4),
                              strides=_ints(a.strides, "strides", 4), odd=a.odd, hidden=_ints(a.hidden, "hidden"),
                              zero_mode_head=a.zero_mode_head,
                              zero_mode_sd=(a.zero_mode_sd if a.zero_mode_sd is not None
                                            else zero_mode_scale(configs, a.normalise) if a.zero_mode_head else 0.5))
        check_lattice(model, {"lattice_shape": list(configs.shape[1:])}, None)
        meta = {"training_ensemble": {k: ens.metadata.get(k) for k in ("theory", "sampler", "settings", "seed")},
                "theory": ens.metadata.get("theory"), "normalisation": a.normalise}
        trainer = train_score_model(configs, model, seed=a.seed, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                                    ema_decay=a.ema, z2_augment=a.z2_augment, normalisation=a.normalise,
                                    checkpoint=a.out, device=device, amp=a.amp, metadata=meta,
                                    progress_bar=not a.no_progress, zero_mode_weight=a.zero_mode_weight)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    print(f"trained {trainer.epoch} epochs, final loss {trainer.history[-1]:.4g}; checkpoint {a.out}", file=sys.stderr)
    return 0


def cmd_sample(a) -> int:
    from .diffusion import generate_from_checkpoint
    from .ensemble import make_metadata, save_ensemble
    from .training import load_checkpoint

    _check_out(a.out, ".npz", a.force)
    try:
        state = load_checkpoint(a.checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    if not 0 < a.eps < 1:
        raise CLIError(f"--eps must lie in (0, 1), got {a.eps}")
    device = _device(a.device)
    meta_ck = state.get("metadata", {})
    trained_shape = tuple(meta_ck.get("lattice_shape", ()))
    shape = (a.L,) * len(trained_shape) if a.L else None
    try:
        configs, _, state = generate_from_checkpoint(a.checkpoint, a.n, a.seed, lattice_shape=shape, device=device,
                                                     ema=not a.no_ema, sampler=a.sampler, n_steps=a.steps, eps=a.eps,
                                                     batch_size=a.batch_size, progress_bar=not a.no_progress)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    theory = dict(meta_ck.get("theory") or {"name": "unknown"})
    if a.L and "L" in theory:
        theory["L"] = a.L
    settings = {"checkpoint": str(a.checkpoint), "sampler": a.sampler, "n_steps": a.steps, "eps": a.eps,
                "ema": not a.no_ema, "epochs": state["epoch"], "model": state["model_config"],
                "trained_on": meta_ck.get("training_ensemble")}
    meta = make_metadata(theory, "dm", settings, a.seed, device=str(device))
    save_ensemble(a.out, configs, meta, overwrite=a.force)
    print(f"wrote {a.n} configurations to {a.out}", file=sys.stderr)
    return 0


def cmd_hmc(a) -> int:
    import torch

    from .ensemble import make_metadata, save_ensemble
    from .hmc import hmc_ensemble
    from .phi4 import Phi4

    if a.out.suffix != ".npz":
        raise CLIError(f"--out must name a .npz file, got {a.out}")
    if a.out.exists() and not a.force:
        raise CLIError(f"{a.out} exists; pass --force to overwrite it")
    if not a.out.parent.exists():
        raise CLIError(f"directory {a.out.parent} does not exist")
    if not a.eps > 0:
        raise CLIError(f"--eps must be positive, got {a.eps}")
    if a.n_configs % a.per_chain:
        raise CLIError(f"--n-configs {a.n_configs} is not a multiple of --per-chain {a.per_chain}")
    try:
        theory = Phi4(L=a.L, kappa=a.kappa, lam=a.lam, d=a.d)
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    device = _device(a.device)
    dtype = getattr(torch, a.dtype)
    configs, info = hmc_ensemble(theory, a.n_configs, a.seed, n_burnin=a.n_burnin, n_spacing=a.n_spacing,
                                 eps=a.eps, n_steps=a.n_steps, batch_size=a.batch_size, device=device, dtype=dtype,
                                 progress_bar=not a.no_progress, checkpoint_dir=a.checkpoint_dir,
                                 start=a.start, n_per_chain=a.per_chain)
    settings = {"protocol": "independent-chains", "n_configs": a.n_configs, "n_burnin": a.n_burnin,
                "n_spacing": a.n_spacing, "eps": a.eps, "n_steps": a.n_steps, "batch_size": a.batch_size,
                "dtype": a.dtype, "start": a.start, "n_per_chain": a.per_chain}
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


COMMANDS = {"hmc": cmd_hmc, "observables": cmd_observables, "train": cmd_train, "sample": cmd_sample}


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
