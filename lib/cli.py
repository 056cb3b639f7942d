"""Command line: ``python -m lib <command> ...``.

Commands
--------
hmc          generate an ensemble with the paper's HMC protocol and write it to an .npz file
ensemble     the same with --algorithm hmc | fa-hmc | cluster | metropolis (defaults per algorithm)
merge        merge the shards (--shard K/N of hmc, ensemble, sample, dmmc) of one request into one ensemble
observables  print ⟨M⟩, ⟨|M|⟩, χ₂, U_L (jackknife errors) of an ensemble file
train        train a diffusion model (score network) on an ensemble; writes a checkpoint
sample       generate an ensemble from a checkpoint (same file format as HMC ensembles)
dmmc         run a DM-MC chain (eq. 4.9) from a checkpoint; writes the chain as an ensemble
paper-model  train (through the cache) one of the paper-scale models that ship with the book, and
             ship it into models/ (``--list`` names them; ``--check`` verifies the manifest)

Every error is reported in one line on stderr with a non-zero exit status, before any
computation where it can be known in advance; no file is overwritten without ``--force`` and
none is left half-written. The flags of a stage build its settings object
(:class:`lib.HMCSettings`, :class:`lib.TrainSettings`, :class:`lib.SampleSettings`,
:class:`lib.diffusion.DMMCSettings`), which is
validated once and stored in the output.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        # values such as -1e-3, -inf or -5,4 are values, not flags (argparse alone knows only -1 and -.5),
        # so that "--lr -1e-3" is refused for its value, not with "expected one argument"
        import re

        self._negative_number_matcher = re.compile(r"^-(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?(,[-\d.eE+]*)*$"
                                                   r"|^-(inf|infinity|nan)$", re.IGNORECASE)

    def error(self, message):  # one line, exit status 2
        raise CLIError(f"{self.prog}: {message}", status=2)


class CLIError(Exception):
    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {s}")
    return v


def _nonneg_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {s}")
    return v


def _finite(s):
    import math

    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {s!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
    return v


def _int(s):
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {s!r}") from None


class _Given(argparse.Action):
    """Store the value and record that the flag was given (``namespace._given``), so that a command
    can tell a default from a value the user typed (``--fast`` and the per-algorithm defaults)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, True if self.nargs == 0 else values)
        namespace._given = set(getattr(namespace, "_given", set())) | {self.dest}


#: (command, flag) → (settings class, field): the flags generated from settings fields
FLAG_FIELDS: dict = {}


def _settings_flags(parser, command: str, cls, flags: dict, choices: dict | None = None,
                    more_help: dict | None = None) -> None:
    """Add one flag per settings field (``flags``: field → flag): its default, type, choices and
    help text come from the field (:func:`lib.settings.setting`); its range is checked where the
    settings object is built (one line naming the flag). Booleans that default to False are
    switches. ``choices`` and ``more_help`` (field → …) add what a field's metadata cannot hold (a
    registry defined after the settings class)."""
    import dataclasses

    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, flag in flags.items():
        f = fields[name]
        doc, default = f.metadata.get("doc", ""), f.default
        if (more_help or {}).get(name):
            doc = f"{doc}: {more_help[name]}"
        shown = "" if default is None or isinstance(default, bool) else f" (default: {default})"
        if isinstance(default, bool):
            if default:
                raise ValueError(f"{cls.__name__}.{name}: a switch must default to False")
            parser.add_argument(flag, action=_Given, nargs=0, default=False, help=doc)
        else:
            kind = str(f.type)
            typ = _finite if "float" in kind else _int if "int" in kind else str
            parser.add_argument(flag, action=_Given, type=typ, default=default,
                                choices=(choices or {}).get(name, f.metadata.get("choices")), help=doc + shown)
        FLAG_FIELDS[(command, flag)] = (cls, name)


def _settings_values(a, command: str, cls) -> dict:
    """The values of ``command``'s flags generated from ``cls``'s fields, by field name."""
    return {name: getattr(a, flag[2:].replace("-", "_")) for (c, flag), (k, name) in FLAG_FIELDS.items()
            if c == command and k is cls}


def _flag_names(command: str, cls) -> dict:
    """field → flag for :func:`_build`'s messages."""
    return {name: flag for (c, flag), (k, name) in FLAG_FIELDS.items() if c == command and k is cls}


def _given(a, dest: str) -> bool:
    return dest in getattr(a, "_given", set())


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m lib", description="Lattice φ⁴ ensembles and observables (see README).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    for command in ("hmc", "ensemble"):
        h = sub.add_parser(command, help="generate an HMC ensemble (one configuration per chain)" if command == "hmc"
                           else "generate an ensemble with hmc, fa-hmc, cluster or metropolis (independent chains)",
                           description=None if command == "hmc" else
                           "--n-burnin, --n-spacing, --eps and --n-steps default to values suited to the algorithm "
                           "(lib.cli.ENSEMBLE_DEFAULTS), not to the defaults shown, which are the paper's HMC")
        _ensemble_arguments(h, command)

    o = sub.add_parser("observables", help="⟨M⟩, ⟨|M|⟩, χ₂, U_L of an ensemble file")
    o.add_argument("file", type=Path)
    o.add_argument("--json", action="store_true", help="print JSON instead of a table")
    o.add_argument("--n-blocks", type=_positive_int, default=None, help="jackknife blocks (default: delete-one)")

    t = sub.add_parser("train", help="train a diffusion model on an ensemble file")
    t.add_argument("ensemble", type=Path, help="training ensemble (.npz)")
    t.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.pt)")
    from .diffusion.training import TrainSettings

    _settings_flags(t, "train", TrainSettings, {
        "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "ema_decay": "--ema",
        "z2_augment": "--z2-augment", "normalisation": "--normalise", "grad_clip": "--grad-clip",
        "zero_mode_weight": "--zero-mode-weight", "amp": "--amp", "t_sampling": "--t-sampling",
        "patience": "--patience"})
    t.add_argument("--sde", choices=["ve", "vp"], default="ve")
    t.add_argument("--sigma", type=_finite, default=25.0, help="g(t) = sigma^t (paper: 25)")
    t.add_argument("--channels", default="32,64,128,256", help="U-Net channels (four numbers)")
    t.add_argument("--strides", default="1,2,2,2", help="U-Net strides (four numbers in {1,2})")
    t.add_argument("--hidden", default="64,64", help="MLP hidden sizes (for non-lattice data)")
    t.add_argument("--odd", action="store_true", help="make the network odd under phi -> -phi")
    t.add_argument("--zero-mode-head", action="store_true",
                   help="U-Net with a path for the magnetisation (zero mode) of the score (chapter 6)")
    t.add_argument("--zero-mode-sd", type=_finite, default=None,
                   help="scale of the zero-mode head (default: the RMS magnetisation of the data in network units)")
    t.add_argument("--gaussian-skip", action="store_true",
                   help="learn the correction to the score of Gaussian sites of the data's variance (not in the paper)")
    t.add_argument("--n-train", type=_positive_int, default=None, help="use only the first N configurations")
    t.add_argument("--n-validation", type=_positive_int, default=None,
                   help="hold out the next N configurations and record their DSM loss every epoch")
    t.add_argument("--seed", type=_nonneg_int, required=True, help="fixes the initial weights and the training")
    t.add_argument("--device", default="auto")
    t.add_argument("--resume", action="store_true", help="continue an interrupted run written to --out")
    t.add_argument("--force", action="store_true", help="overwrite an existing checkpoint")
    t.add_argument("--no-progress", action="store_true")

    g = sub.add_parser("sample", help="generate configurations from a checkpoint")
    g.add_argument("checkpoint", type=Path)
    g.add_argument("--n", type=_positive_int, required=True, help="number of configurations")
    g.add_argument("--out", type=Path, required=True, help="output ensemble (.npz)")
    g.add_argument("--seed", type=_nonneg_int, required=True)
    g.add_argument("--L", type=_positive_int, default=None, help="lattice size (default: the training L)")
    from .diffusion.samplers import SAMPLER_HELP, SAMPLERS, SampleSettings

    _settings_flags(g, "sample", SampleSettings, {
        "sampler": "--sampler", "n_steps": "--steps", "eps": "--eps", "rtol": "--rtol", "atol": "--atol",
        "churn": "--churn", "rho": "--rho", "sigma_max": "--sigma-max", "precision": "--precision"},
        choices={"sampler": list(SAMPLERS)}, more_help={"sampler": "; ".join(f"{k}: {v}" for k, v in
                                                                             SAMPLER_HELP.items())})
    g.add_argument("--fast", action="store_true",
                   help="the fastest settings measured at the accuracy of 500-step em, for this device: dpm2 "
                        "with 48 levels, bf16 on CPUs with native bf16 (lib.diffusion.fast_settings)")
    g.add_argument("--shard", default=None, metavar="K/N",
                   help="generate only the K-th of N contiguous ranges of the --n configurations")
    g.add_argument("--batch-size", type=_positive_int, default=1024)
    g.add_argument("--no-ema", action="store_true", help="use the raw weights even if EMA weights exist")
    g.add_argument("--device", default="auto")
    g.add_argument("--force", action="store_true")
    g.add_argument("--no-progress", action="store_true")

    c = sub.add_parser("dmmc", help="run a DM-MC chain from a checkpoint (the chain's configurations as an ensemble)")
    c.add_argument("checkpoint", type=Path)
    c.add_argument("--n", type=_positive_int, required=True, help="number of proposals (= length of the chain)")
    c.add_argument("--seed", type=_nonneg_int, required=True)
    c.add_argument("--out", type=Path, required=True, help="output ensemble (.npz) of the chain's configurations")
    from .diffusion.dmmc import DMMCSettings

    _settings_flags(c, "dmmc", DMMCSettings, {"variant": "--variant", "n_steps": "--steps", "variance": "--variance",
                                              "n_probes": "--probes", "rtol": "--rtol"})
    c.add_argument("--sampler", choices=["path", "em"], default=None,
                   help="the proposals' sampler: path (Gaussian reverse kernels; variant paths) or em "
                        "(Euler-Maruyama; variant paper); implied by --variant")
    c.add_argument("--data", type=Path, default=None,
                   help="the training ensemble (.npz), for the kernels' spectrum (default: the model's own samples)")
    c.add_argument("--shard", default=None, metavar="K/N",
                   help="make only the proposals of the K-th of N contiguous ranges of the --n (written to --out "
                        "with their weights; merge the N files with python -m lib merge, then run the chain "
                        "with --proposals)")
    c.add_argument("--proposals", type=Path, default=None,
                   help="run the chain through these merged proposals (from --shard) instead of making them")
    c.add_argument("--batch-size", type=_positive_int, default=256)
    c.add_argument("--device", default="auto")
    c.add_argument("--force", action="store_true")
    c.add_argument("--no-progress", action="store_true")
    mg = sub.add_parser("merge", help="merge the shards of one hmc, ensemble, sample or dmmc request into one ensemble")
    mg.add_argument("out", type=Path, help="the merged ensemble (.npz)")
    mg.add_argument("shards", type=Path, nargs="+", help="the shards' files, in any order")
    mg.add_argument("--force", action="store_true", help="overwrite an existing output file")
    m = sub.add_parser("paper-model", help="train and ship one of the paper-scale models of models/manifest.json")
    m.add_argument("name", nargs="?", help="the model (see --list)")
    m.add_argument("--list", action="store_true", help="name the paper-scale models and the chapters that use them")
    m.add_argument("--check", action="store_true", help="verify every entry of the manifest (hash, settings, key)")
    m.add_argument("--ship", action="store_true", help="after training, write the model into models/ and the manifest")
    m.add_argument("--models", help="the models directory (default: models/ of the repository, or $DMSQ_MODELS)")
    m.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    m.add_argument("--threads", type=_positive_int, default=None, help="torch threads on a CPU")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _ensemble_arguments(h, command: str) -> None:
    """The flags of ``hmc`` and ``ensemble`` (``ensemble`` adds --algorithm and its options; its burn-in,
    spacing and leapfrog defaults depend on the algorithm: :data:`ENSEMBLE_DEFAULTS`)."""
    per_algorithm = command == "ensemble"
    h.add_argument("--theory", choices=("phi4", "u1"), default="phi4",
                   help="phi4 (needs --kappa, --lam) or u1: 2D U(1) gauge theory (needs --beta)")
    h.add_argument("--L", type=_positive_int, required=True, help="lattice size")
    h.add_argument("--kappa", type=_finite, default=None, help="hopping parameter κ (phi4)")
    h.add_argument("--lam", type=_finite, default=None, help="quartic coupling λ (phi4)")
    h.add_argument("--d", type=_positive_int, default=None, help="dimensions (phi4; default 2)")
    h.add_argument("--beta", type=_finite, default=None, help="inverse coupling β (u1)")
    h.add_argument("--n-configs", type=_positive_int, required=True, help="number of configurations (= chains)")
    h.add_argument("--seed", type=_nonneg_int, required=True)
    h.add_argument("--out", type=Path, required=True, help="output .npz file")
    from .mcmc.hmc import HMCSettings

    fields = {"n_burnin": "--n-burnin", "n_spacing": "--n-spacing", "eps": "--eps", "n_steps": "--n-steps",
              "start": "--start", "n_per_chain": "--per-chain", "dtype": "--dtype"}
    if per_algorithm:  # burn-in, spacing and leapfrog not given: ENSEMBLE_DEFAULTS of the algorithm
        fields.update(algorithm="--algorithm", mass="--mass", n_hmc="--n-hmc", delta="--delta")
    _settings_flags(h, command, HMCSettings, fields)
    h.add_argument("--batch-size", type=_positive_int, default=1024, help="chains updated together")
    h.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    h.add_argument("--checkpoint-dir", type=Path, default=None, help="save sampler state here; rerun to resume")
    h.add_argument("--fused", action="store_true",
                   help="compiled leapfrog (torch.compile): same trajectories to round-off, faster in float64")
    h.add_argument("--shard", default=None, metavar="K/N",
                   help="make only the K-th of N contiguous ranges of chains (merge the N files with "
                        "python -m lib merge)")
    h.add_argument("--force", action="store_true", help="overwrite an existing output file")
    h.add_argument("--no-progress", action="store_true", help="no progress bars")


#: burn-in, spacing and leapfrog of ``python -m lib ensemble`` per algorithm, where not given:
#: hmc the paper's protocol; fa-hmc and cluster decorrelate the long modes in far fewer updates
#: (trajectory length 1 with step 0.1); metropolis sweeps are cheap and local.
ENSEMBLE_DEFAULTS = {"hmc": dict(n_burnin=100, n_spacing=64, eps=0.01, n_steps=100),
                     "fa-hmc": dict(n_burnin=100, n_spacing=16, eps=0.1, n_steps=10),
                     "cluster": dict(n_burnin=100, n_spacing=8, eps=0.1, n_steps=10),
                     "metropolis": dict(n_burnin=1000, n_spacing=64, eps=0.01, n_steps=100)}


def _ints(s: str, name: str, n: int | None = None, allowed=None) -> tuple:
    """Comma-separated positive integers (from ``allowed`` if given), ``n`` of them if given."""
    try:
        v = tuple(int(x) for x in s.split(","))
    except ValueError:
        raise CLIError(f"--{name} must be comma-separated integers, got {s!r}", status=2) from None
    if n is not None and len(v) != n:
        raise CLIError(f"--{name} needs {n} numbers, got {len(v)} ({s!r})", status=2)
    if min(v) < 1:
        raise CLIError(f"--{name} must be positive integers, got {s!r}", status=2)
    if allowed is not None and any(x not in allowed for x in v):
        raise CLIError(f"--{name} must be numbers in {{{', '.join(map(str, allowed))}}}, got {s!r}", status=2)
    return v


def _check_model_memory(model, what: str, copies: int = 1, hint: str = "use fewer channels") -> None:
    """Refuse, before allocating it, a network whose parameters (built on the ``meta`` device,
    which allocates nothing) would not fit in this machine's memory ``copies`` times over
    (training keeps weights, gradients and two Adam moments, and maybe EMA weights)."""
    from .runtime import memory_limit

    n = sum(p.numel() for p in model.parameters())
    need = n * 4 * copies
    if need > memory_limit():
        raise CLIError(f"{what}: the network has {n:.3g} parameters and needs about {need / 2**30:.0f} GiB, more "
                       f"than this machine has; {hint}")


def _meta_model(build, what: str):
    """``build()`` on the ``meta`` device (no memory is allocated); a bad configuration is one line."""
    import torch

    try:
        with torch.device("meta"):
            return build()
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise CLIError(f"{what}: {_one_line(exc)}") from None


def _device(name: str):
    import torch

    from .runtime import resolve_device

    device = resolve_device(name)
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise CLIError(f"device {name!r} is not available: {str(exc).splitlines()[0]}") from None
    return device


def _build(cls, flags: dict, **values):
    """Build a settings object from command-line values; an invalid value is reported with the
    name of the flag the user typed (``flags`` maps setting names to flags)."""
    try:
        return cls(**values)
    except ValueError as exc:
        msg = str(exc)
        for name, flag in flags.items():
            if msg.startswith(name + " "):
                msg = flag + msg[len(name):]
                break
        raise CLIError(msg, status=2) from None


def _check_out(path: Path, suffix: str, force: bool, resume: bool = False) -> None:
    """Refuse a bad output path before computing (see :func:`lib.storage.files.check_writable`)."""
    from .storage.files import check_writable

    try:
        check_writable(path, suffix, overwrite=force or resume)
    except FileExistsError:
        raise CLIError(f"{path} exists; pass --force to overwrite it" + (" or --resume to continue it" if suffix == ".pt"
                                                                         else "")) from None


def _load_ensemble(path):
    from .storage.ensembles import load_ensemble

    return load_ensemble(path)


def cmd_train(a) -> int:
    import os

    import torch

    from .diffusion import (TrainSettings, check_lattice, default_model, make_sde, site_variance, train_score_model,
                            zero_mode_scale)
    from .diffusion.networks import build_score_model
    from .diffusion.training import NonFiniteLoss
    from .rng import check_seed
    from .storage.cache import exclusive_lock

    # everything is validated before anything is written or deleted
    _check_out(a.out, ".pt", a.force, a.resume)
    if a.resume and a.force:
        raise CLIError("--resume and --force exclude each other", status=2)
    if a.resume and not a.out.exists():
        raise CLIError(f"--resume: {a.out} does not exist (drop --resume to start a new run)")
    seed = check_seed(a.seed)
    channels = _ints(a.channels, "channels", 4)
    strides = _ints(a.strides, "strides", 4, allowed=(1, 2))
    hidden = _ints(a.hidden, "hidden")
    if not a.sigma > 1:
        raise CLIError(f"--sigma must be > 1, got {a.sigma}", status=2)
    if a.zero_mode_sd is not None and not a.zero_mode_sd > 0:
        raise CLIError(f"--zero-mode-sd must be positive, got {a.zero_mode_sd}", status=2)
    settings = _build(TrainSettings, _flag_names("train", TrainSettings), **_settings_values(a, "train", TrainSettings))
    if a.patience and not a.n_validation:
        raise CLIError("--patience needs held-out configurations: add --n-validation N", status=2)
    device = _device(a.device)
    ens = _load_ensemble(a.ensemble)
    if a.n_train and a.n_train > len(ens):
        raise CLIError(f"--n-train {a.n_train} exceeds the {len(ens)} configurations in {a.ensemble}", status=2)
    n_train = a.n_train or len(ens)
    if a.n_validation and n_train + a.n_validation > len(ens):
        raise CLIError(f"--n-validation {a.n_validation}: only {len(ens) - n_train} configurations follow the "
                       f"{n_train} training ones in {a.ensemble}", status=2)
    configs = ens.configs[:n_train]
    validation = ens.configs[n_train:n_train + a.n_validation] if a.n_validation else None
    th = ens.metadata.get("theory")
    if isinstance(th, dict) and th.get("name") == "u1":
        # U(1) links: the gauge-invariant plaquette network on the torus, angles as they are
        from .diffusion.gauge import PlaquetteScoreNet, TorusVESDE

        stray = [flag for flag, on in (("--sde vp", a.sde != "ve"), ("--strides", a.strides != "1,2,2,2"),
                                       ("--zero-mode-head", a.zero_mode_head), ("--zero-mode-sd", a.zero_mode_sd),
                                       ("--gaussian-skip", a.gaussian_skip), ("--z2-augment", settings.z2_augment))
                 if on]
        if stray:
            raise CLIError(f"{', '.join(stray)} has no meaning for U(1) links (the network is "
                           "lib.diffusion.gauge.PlaquetteScoreNet on the VE process of the torus)", status=2)
        if _given(a, "normalisation") and settings.normalisation != "none":
            raise CLIError("U(1) links are angles: they are trained as they are (--normalise none)", status=2)
        settings = settings.replace(normalisation="none")
        a.normalise = "none"
        sde = TorusVESDE(a.sigma)
        model = _meta_model(lambda: PlaquetteScoreNet(sde, channels=channels, odd=a.odd), "bad network")
    else:
        sde = make_sde(a.sde, a.sigma)
        zm_sd = (a.zero_mode_sd if a.zero_mode_sd is not None
                 else zero_mode_scale(configs, a.normalise) if a.zero_mode_head else 0.5)
        skip_var = site_variance(configs, a.normalise) if a.gaussian_skip else None
        # the architecture is checked on the meta device (nothing allocated), then built for real
        model = _meta_model(lambda: default_model(sde, configs.shape[1:], channels=channels, strides=strides,
                                                  odd=a.odd, hidden=hidden, zero_mode_head=a.zero_mode_head,
                                                  zero_mode_sd=zm_sd, skip_var=skip_var),
                            "bad network")
    _check_model_memory(model, f"--hidden {a.hidden}" if len(configs.shape[1:]) == 1 else f"--channels {a.channels}",
                        copies=5)
    check_lattice(model, {"lattice_shape": list(configs.shape[1:])}, None)
    model = build_score_model(model.config, seed=seed)  # the initial weights are a function of the seed
    with torch.no_grad():  # a forward pass on two configurations catches an unusable network before training
        model(torch.zeros((2, *configs.shape[1:])), torch.full((2,), 0.5))
    meta = {"training_ensemble": {k: ens.metadata.get(k) for k in ("theory", "sampler", "settings", "seed")},
            "theory": ens.metadata.get("theory"), "normalisation": a.normalise}
    # --force over an existing checkpoint trains into a sibling file that replaces it only when the run
    # succeeds: a run that fails (a NaN loss, Ctrl-C) leaves the old model as it was
    replacing = a.force and a.out.exists()
    target = a.out.with_name(f".{a.out.name}.new.pt") if replacing else a.out
    times = lambda p: p.with_name(p.name + ".times.json")  # noqa: E731 - the per-epoch wall times beside it
    # under torchrun (WORLD_SIZE > 1): data-parallel training, rank 0 the only one that writes
    from .diffusion.training import init_distributed

    rank, world = init_distributed(device)
    if world > 1:
        return _train_rank(a, configs, model, settings, seed, target, replacing, times, meta, validation, device,
                           rank, world)
    with exclusive_lock(a.out, "checkpoint"):
        try:
            trainer = train_score_model(configs, model, settings, seed=seed, checkpoint=target, device=device,
                                        metadata=meta, progress_bar=not a.no_progress, resume=a.resume,
                                        validation=validation)
        except BaseException as exc:
            if replacing:
                for p in (target, times(target)):
                    p.unlink(missing_ok=True)
            if isinstance(exc, NonFiniteLoss):
                raise CLIError(str(exc) + (f"; {a.out} was left as it was" if replacing else "")) from None
            if replacing and isinstance(exc, KeyboardInterrupt):
                raise CLIError(f"interrupted; {a.out} was left as it was", status=130) from None
            raise
        if replacing:
            os.replace(times(target), times(a.out))
            os.replace(target, a.out)
    held = (f", held-out loss {trainer.validation_history[-1]:.4g} (best at epoch {trainer.best_epoch}"
            + ("; stopped early" if trainer.stopped_early else "") + ")") if trainer.validation_history else ""
    print(f"trained {trainer.epoch} epochs, final loss {trainer.history[-1]:.4g}{held}; checkpoint {a.out}",
          file=sys.stderr)
    return 0


def _train_rank(a, configs, model, settings, seed, target, replacing, times, meta, validation, device, rank: int,
                world: int) -> int:
    """One rank of ``torchrun --nproc-per-node N -m lib train ...``: every rank trains on its slice of
    every global batch (lib.diffusion.Trainer with DistributedDataParallel); rank 0 alone holds the
    lock, writes the checkpoint after every epoch and, with --force, replaces the old file at the end."""
    import contextlib

    import torch.distributed as dist

    from .diffusion import train_score_model
    from .storage.cache import exclusive_lock

    if settings.batch_size < world:
        raise CLIError(f"--batch-size {settings.batch_size} is smaller than the {world} ranks: every rank needs a "
                       "share of every batch", status=2)
    lock = exclusive_lock(a.out, "checkpoint") if rank == 0 else contextlib.nullcontext()
    with lock:
        trainer = train_score_model(configs, model, settings, seed=seed, checkpoint=target, device=device,
                                    metadata=dict(meta, world_size=world), progress_bar=not a.no_progress and rank == 0,
                                    resume=a.resume, validation=validation)
        if rank == 0 and replacing:
            os.replace(times(target), times(a.out))
            os.replace(target, a.out)
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        print(f"trained {trainer.epoch} epochs on {world} ranks, final loss {trainer.history[-1]:.4g}; "
              f"checkpoint {a.out}", file=sys.stderr)
    return 0


def cmd_sample(a) -> int:
    import numpy as np

    from .diffusion import SampleSettings, check_lattice, generate, load_model
    from .diffusion.samplers import SamplerFailed
    from .rng import check_seed
    from .storage.ensembles import make_metadata, save_ensemble

    _check_out(a.out, ".npz", a.force)
    seed = check_seed(a.seed)
    device = _device(a.device)
    values = _settings_values(a, "sample", SampleSettings)
    if a.fast:
        from .diffusion import fast_settings

        given = [flag for flag, dest in (("--sampler", "sampler"), ("--steps", "steps"), ("--precision", "precision"))
                 if _given(a, dest)]
        if given:
            raise CLIError(f"--fast chooses the sampler, the steps and the precision; drop {', '.join(given)}",
                           status=2)
        winners = fast_settings(device)
        values.update(sampler=winners.sampler, n_steps=winners.n_steps, precision=winners.precision)
    # a flag the chosen sampler would ignore is refused, not dropped silently
    used_by = {"rtol": ("ode",), "atol": ("ode",), "churn": ("churn",),
               "rho": ("heun", "churn", "ddim", "dpm2"), "sigma_max": ("heun", "churn", "ddim", "dpm2")}
    ignored = [f"--{dest.replace('_', '-')}" for dest, samplers in used_by.items()
               if _given(a, dest) and values["sampler"] not in samplers]
    if ignored:
        raise CLIError(f"{', '.join(ignored)} {'has' if len(ignored) == 1 else 'have'} no effect on the "
                       f"{values['sampler']} sampler{' that --fast chose' if a.fast else ''}; drop "
                       f"{'it' if len(ignored) == 1 else 'them'}", status=2)
    settings = _build(SampleSettings, _flag_names("sample", SampleSettings), ema=not a.no_ema, **values)
    model, state = load_model(a.checkpoint, device=device, ema=settings.ema)
    meta_ck = state["metadata"]
    trained_shape = tuple(meta_ck.get("lattice_shape", ()))
    shape = check_lattice(model, meta_ck, (a.L,) * len(trained_shape) if a.L else None)
    _check_memory(a.n, shape)
    first, count, shard = 0, a.n, None
    if a.shard is not None:
        from .storage.shards import parse_shard, shard_metadata, shard_range

        k, n_shards = parse_shard(a.shard)
        first, stop = shard_range(a.n, k, n_shards)
        count, shard = stop - first, shard_metadata(k, n_shards, first, stop, a.n, "configurations")
    done = []
    try:
        configs, _ = generate(model, count, seed, settings, lattice_shape=shape, normaliser=meta_ck.get("normaliser"),
                              batch_size=a.batch_size, device=device, progress_bar=not a.no_progress, first=first,
                              on_batch=lambda start, x: done.append(x))
    except SamplerFailed as exc:
        kept = ""
        if done:
            import torch

            part = a.out.with_name(a.out.stem + ".partial.npz")
            theory = dict(meta_ck.get("theory") or {"name": "unknown"})
            save_ensemble(part, torch.cat(done), make_metadata(theory, "dm", settings, seed, incomplete=True),
                          overwrite=True)
            kept = f"; the {sum(len(x) for x in done)} configurations finished before are in {part}"
        raise CLIError(f"{exc}{kept}") from None
    theory = dict(meta_ck.get("theory") or {"name": "unknown"})
    if a.L and "L" in theory:
        theory["L"] = a.L
    bad = int((~np.isfinite(configs.numpy().reshape(len(configs), -1))).any(axis=1).sum())
    if bad:
        raise CLIError(f"{bad} of {count} generated configurations are NaN or inf (the model is broken?); nothing written")
    meta = make_metadata(theory, "dm", settings, seed, device=str(device), checkpoint=str(a.checkpoint),
                         epochs=state["epoch"], model=state["model_config"],
                         trained_on=meta_ck.get("training_ensemble"))
    if shard is not None:
        meta["shard"] = shard
    save_ensemble(a.out, configs, meta, overwrite=a.force)
    print(f"wrote {count} configurations to {a.out}" + (f" (shard {a.shard} of {a.n})" if shard else ""),
          file=sys.stderr)
    return 0


def _check_memory(n: int, shape, itemsize: int = 8) -> None:
    import math

    from .runtime import memory_limit

    need = n * math.prod(shape) * itemsize
    if need > memory_limit():
        raise CLIError(f"{n} configurations of shape {tuple(shape)} need {need / 2**30:.1f} GiB, more than this "
                       "machine has; ask for fewer")


def _check_checkpoint_dir(path) -> None:
    """``--checkpoint-dir`` must be a writable directory or creatable in one (checked before computing)."""
    import os

    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise CLIError(f"--checkpoint-dir {path} exists and is not a directory; pick a directory")
    where = path.absolute()
    while not where.exists():  # the directory is created with its parents: the first existing one must be writable
        where = where.parent
    if not where.is_dir():
        raise CLIError(f"--checkpoint-dir {path}: {where} is not a directory")
    if not os.access(where, os.W_OK | os.X_OK):
        raise CLIError(f"--checkpoint-dir {path}: directory {where} is not writable")


def cmd_hmc(a) -> int:
    import warnings

    from .mcmc.hmc import HMCSettings, hmc_ensemble
    from .rng import check_seed
    from .storage.ensembles import make_metadata, save_ensemble

    _check_out(a.out, ".npz", a.force)
    seed = check_seed(a.seed)
    values = _settings_values(a, a.command, HMCSettings)
    algorithm = values.get("algorithm", "hmc")
    if a.command == "ensemble":
        own = {"mass": "fa-hmc", "n_hmc": "cluster", "delta": "metropolis"}
        stray = [f"--{k.replace('_', '-')}" for k, alg in own.items() if _given(a, k) and alg != algorithm]
        if stray:
            raise CLIError(f"{', '.join(stray)} has no effect with --algorithm {algorithm}; drop it", status=2)
        for k, v in ENSEMBLE_DEFAULTS[algorithm].items():
            if not _given(a, k):
                values[k] = v
    if a.fused and algorithm != "hmc":
        raise CLIError(f"--fused compiles the plain HMC leapfrog; it has no effect with --algorithm {algorithm}",
                       status=2)
    settings = _build(HMCSettings, _flag_names(a.command, HMCSettings), **values)
    if a.n_configs % settings.n_per_chain:
        raise CLIError(f"--n-configs {a.n_configs} is not a multiple of --per-chain {settings.n_per_chain}", status=2)
    theory = _ensemble_theory(a, settings)
    _check_checkpoint_dir(a.checkpoint_dir)
    device = _device(a.device)
    shard, chains = None, None
    if a.shard is not None:
        from .storage.shards import parse_shard, shard_metadata, shard_range

        k, n = parse_shard(a.shard)
        n_chains = a.n_configs // settings.n_per_chain
        chains = shard_range(n_chains, k, n)
        shard = shard_metadata(k, n, *chains, n_chains, "chains")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        configs, info = hmc_ensemble(theory, a.n_configs, seed, settings, batch_size=a.batch_size, device=device,
                                     progress_bar=not a.no_progress, checkpoint_dir=a.checkpoint_dir, fused=a.fused,
                                     chains=chains)
    for w in caught:  # lib's own warnings (acceptance, compile fallback); not third-party deprecations
        if issubclass(w.category, RuntimeWarning):
            print(f"warning: {w.message}", file=sys.stderr)
    meta = make_metadata(theory, settings.algorithm, settings, seed, n_configs=a.n_configs,
                         acceptance=info["acceptance"], device=str(device))
    if shard is not None:
        meta.update(shard=shard, n_accepted=info["n_accepted"])
    save_ensemble(a.out, configs, meta, overwrite=a.force)
    print(f"wrote {len(configs)} configurations to {a.out}" + (f" (shard {a.shard} of {a.n_configs})" if shard else "")
          + f" (acceptance {info['acceptance']:.3f})", file=sys.stderr)
    return 0


def _ensemble_theory(a, settings):
    """The theory of ``hmc``/``ensemble`` from --theory and its couplings; flags of the other theory,
    and algorithms or starts the theory has no use for, are refused in one line."""
    from .theories import Phi4, U1Gauge

    if a.theory == "u1":
        stray = [f"--{k}" for k in ("kappa", "lam", "d") if getattr(a, k) is not None]
        if stray:
            raise CLIError(f"{', '.join(stray)} belongs to --theory phi4; U(1) takes --beta", status=2)
        if a.beta is None:
            raise CLIError("--theory u1 needs --beta (the inverse coupling)", status=2)
        if settings.algorithm not in ("hmc", "metropolis"):
            raise CLIError(f"--algorithm {settings.algorithm} is written for phi4; U(1) runs hmc or metropolis",
                           status=2)
        if settings.start == "ordered":
            raise CLIError("--start ordered is phi4's classical vacuum; for U(1) use cold (all links 1) or hot",
                           status=2)
        if settings.algorithm == "metropolis" and a.L % 2:
            raise CLIError(f"--L {a.L}: the link checkerboard of U(1) Metropolis needs an even L", status=2)
        return U1Gauge(L=a.L, beta=a.beta)
    if a.beta is not None:
        raise CLIError("--beta belongs to --theory u1; phi4 takes --kappa and --lam", status=2)
    missing = [f"--{k}" for k in ("kappa", "lam") if getattr(a, k) is None]
    if missing:
        raise CLIError(f"--theory phi4 needs {' and '.join(missing)}", status=2)
    d = 2 if a.d is None else a.d
    if d > 4:
        raise CLIError(f"--d {d}: lattices of more than 4 dimensions are not supported", status=2)
    return Phi4(L=a.L, kappa=a.kappa, lam=a.lam, d=d)


def cmd_merge(a) -> int:
    from .storage.ensembles import load_ensemble, save_ensemble
    from .storage.shards import merge

    _check_out(a.out, ".npz", a.force)
    ensembles = [load_ensemble(p) for p in a.shards]
    per = ensembles[0].metadata.get("settings", {}).get("n_per_chain", 1) if ensembles[0].metadata.get(
        "shard", {}).get("unit") == "chains" else 1
    configs, meta = merge(ensembles, per_configs=per)
    save_ensemble(a.out, configs, meta, overwrite=a.force)
    print(f"merged {len(ensembles)} shards into {a.out} ({len(configs)} configurations)", file=sys.stderr)
    return 0


def cmd_observables(a) -> int:
    from .analysis.observables import summary

    ens = _load_ensemble(a.file)
    if len(ens) < 2:
        raise CLIError(f"{a.file} holds {len(ens)} configuration(s); need at least 2 for errors")
    if a.n_blocks is not None and not 2 <= a.n_blocks <= len(ens):
        raise CLIError(f"--n-blocks must lie between 2 and {len(ens)}, the number of configurations in {a.file}",
                       status=2)
    import warnings

    import numpy as np

    th = ens.metadata.get("theory", {})
    if isinstance(th, dict) and th.get("name") == "u1":
        return _gauge_observables(a, ens, th)

    m = ens.configs.reshape(len(ens), -1).mean(axis=1)
    if not np.any(m):
        raise CLIError(f"{a.file}: every configuration has M = 0 (all-zero fields, e.g. a cold start that never "
                       "moved), so U_L = 1 - <M^4>/(3<M^2>^2) is undefined and no error can be estimated")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        s = summary(ens.configs, n_blocks=a.n_blocks)
    labels = {"M": "<M>", "absM": "<|M|>", "chi2": "chi2", "binder": "U_L"}
    for k, label in labels.items():
        v, e = s[k]
        if not (np.isfinite(v) and np.isfinite(e) and e > 1e-12 * max(1.0, abs(v))):
            raise CLIError(f"{a.file}: the jackknife gives {label} = {v:.6g} +- {e:.3g} from {len(ens)} configurations, "
                           "not a usable error; measure more (or less degenerate) configurations")
    th = ens.metadata.get("theory", {})
    th = th if isinstance(th, dict) else {}
    out = {k: list(s[k]) for k in ("M", "absM", "chi2", "binder")}
    out.update(n_configs=s["n_configs"], L=th.get("L"), kappa=th.get("kappa"), lam=th.get("lam"), d=th.get("d"),
               theory=th, sampler=ens.metadata.get("sampler"), seed=ens.metadata.get("seed"))
    if a.json:
        print(json.dumps(out, allow_nan=False))
    else:
        print(f"{a.file}: {th.get('name')} L={th.get('L')} kappa={th.get('kappa')} lam={th.get('lam')}, "
              f"{s['n_configs']} configurations from {ens.metadata.get('sampler')}")
        for k, label in labels.items():
            v, e = s[k]
            print(f"  {label:6s} = {v: .6f} ± {e:.6f}")
    return 0


def _gauge_observables(a, ens, th: dict) -> int:
    """``observables`` of a U(1) ensemble: plaquette, ⟨Q⟩, ⟨Q²⟩ and χ_top (per site) with jackknife
    errors, beside the exact finite-volume values."""
    import numpy as np

    from .analysis.observables import gauge_summary
    from .theories import theory_from_dict

    try:
        theory = theory_from_dict(th)
    except (ValueError, TypeError) as e:
        raise CLIError(f"{a.file}: {e}") from None
    s = gauge_summary(theory, ens.configs, n_blocks=a.n_blocks)
    v, e = s["plaquette"]
    if not (np.isfinite(v) and np.isfinite(e) and e > 0):
        raise CLIError(f"{a.file}: the jackknife gives plaquette = {v:.6g} +- {e:.3g} from {len(ens)} configurations, "
                       "not a usable error; measure more (or less degenerate) configurations")
    exact = {"plaquette": theory.exact_plaquette(), "Q": 0.0, "Q2": theory.exact_Q2(),
             "chi_top": theory.exact_chi_top()}
    out = {k: list(s[k]) for k in ("plaquette", "Q", "Q2", "chi_top")}
    out.update(exact=exact, n_configs=s["n_configs"], L=th.get("L"), beta=th.get("beta"), theory=th,
               sampler=ens.metadata.get("sampler"), seed=ens.metadata.get("seed"))
    if a.json:
        print(json.dumps(out, allow_nan=False))
    else:
        print(f"{a.file}: u1 L={th.get('L')} beta={th.get('beta')}, {s['n_configs']} configurations from "
              f"{ens.metadata.get('sampler')}")
        for k in ("plaquette", "Q", "Q2", "chi_top"):
            v, e = s[k]
            print(f"  {k:9s} = {v: .6f} ± {e:.6f}   (exact {exact[k]:.6f})")
    return 0


def cmd_dmmc(a) -> int:
    import math

    import numpy as np

    from .diffusion import DMMCSettings, check_lattice, data_spectrum, dm_mc_chain, load_model, theory_of_checkpoint
    from .rng import check_seed
    from .storage.ensembles import make_metadata, save_ensemble

    _check_out(a.out, ".npz", a.force)
    seed = check_seed(a.seed)
    if a.n < 2:
        raise CLIError(f"--n {a.n}: a chain needs at least 2 proposals", status=2)
    implied = {"paths": "path", "paper": "em"}[a.variant]
    if a.sampler is not None and a.sampler != implied:
        raise CLIError(f"--sampler {a.sampler} does not go with --variant {a.variant} (which uses {implied})", status=2)
    values = _settings_values(a, "dmmc", DMMCSettings)
    if not _given(a, "steps"):  # the paper's recipe takes its 500 Euler-Maruyama steps
        values["n_steps"] = 100 if a.variant == "paths" else 500
    device = _device(a.device)
    model, state = load_model(a.checkpoint, device=device)
    theory = theory_of_checkpoint(state)
    gauge = theory.name == "u1"
    if gauge and a.variant == "paths" and not _given(a, "variance"):
        values["variance"] = "forward"  # angles: the lift of the data is flat on the noise's scale
    settings = _build(DMMCSettings, _flag_names("dmmc", DMMCSettings), **values)
    shape = check_lattice(model, state["metadata"], tuple(theory.lattice_shape))
    _check_memory(a.n, shape)
    spectrum = None
    if a.data is not None:
        if a.variant != "paths" or settings.variance == "forward":
            raise CLIError("--data sets the path kernels' spectrum; it has no use with "
                           + ("--variant paper" if a.variant != "paths" else "the forward kernels (--variance forward, "
                              "the default for U(1))"), status=2)
        data = _load_ensemble(a.data)
        dth = data.metadata.get("theory") if isinstance(data.metadata.get("theory"), dict) else {}
        target = theory.to_dict()
        couplings = [k for k in target if k not in ("L", "d")]
        other = [f"{k}={dth.get(k)}" for k in couplings if dth.get(k) != target.get(k)]
        if other:
            raise CLIError(f"--data {a.data} was made at {', '.join(other)}; the chain targets "
                           + " ".join(f"{k}={target[k]}" for k in couplings)
                           + ": give training data of the target theory", status=2)
        if len(data) < 2 or not np.any(data.configs):
            raise CLIError(f"--data {a.data} holds {len(data)} configuration(s)"
                           + (" that are all zero" if len(data) >= 2 else "")
                           + ": a power spectrum needs at least two non-trivial configurations", status=2)
        if tuple(data.configs.shape[1:]) != tuple(shape):
            raise CLIError(f"--data {a.data} holds configurations of shape {tuple(data.configs.shape[1:])}, "
                           f"the model makes {tuple(shape)}")
        spectrum = data_spectrum(data.configs, state["metadata"].get("normaliser"))
    import warnings

    if a.shard is not None:
        return _dmmc_shard(a, settings, seed, theory, spectrum, model, state, device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        if a.proposals is not None:
            from .diffusion.dmmc import chain_from_proposals

            res = chain_from_proposals(_merged_proposals(a, settings, seed, theory, spectrum, model, state), seed,
                                       settings)
        else:
            res = dm_mc_chain(a.checkpoint, a.n, seed, settings, theory=theory, spectrum=spectrum,
                              batch_size=a.batch_size, device=device, progress_bar=not a.no_progress, verbose=False)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    s = res.summary
    meta = make_metadata(theory, "dm-mc", settings, seed, n_configs=a.n, device=str(device),
                         checkpoint=str(a.checkpoint), epochs=state["epoch"], model=state["model_config"],
                         trained_on=state["metadata"].get("training_ensemble"),
                         spectrum="training data" if a.data is not None else "the model's own samples",
                         **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                            for k, v in s.items() if k != "variant"})
    save_ensemble(a.out, res.configs, meta, overwrite=a.force)
    key = s["tau_observable"]
    tau = s[f"tau_int_{key}"]
    print(f"wrote a chain of {a.n} configurations to {a.out}: acceptance {s['acceptance']:.3f} "
          f"(erfc(s/2) = {s['predicted_acceptance']:.3f}), tau_int({'|M|' if key == 'absM' else key}) = "
          + (f"{tau:.1f} +- {s[f'tau_int_{key}_error']:.1f}" if np.isfinite(tau)
             else "unmeasurable (no move)" if tau == float("inf")
             else "unmeasurable (constant along the chain, or fewer than 5 configurations)")
          + ("" if s["exact"] else "; the paper's recipe: the chain does not sample e^-S exactly"), file=sys.stderr)
    return 0


def _proposal_request(settings, seed, theory, spectrum, model, state, n: int) -> dict:
    """What the shards of one DM-MC proposal request share: theory, settings, seed, the model's
    identity (weights, normaliser, training data), the kernels' spectrum and the number of proposals."""
    from .diffusion.derived import model_identity
    from .storage.ensembles import make_metadata
    from .storage.files import array_hash

    return make_metadata(theory, "dm-mc-proposals", settings, seed, n_proposals=int(n),
                         model=model_identity(model, state),
                         spectrum=None if spectrum is None else array_hash(spectrum))


def _dmmc_shard(a, settings, seed, theory, spectrum, model, state, device) -> int:
    """``dmmc --shard K/N``: the proposals of one range, with their log weights, as a shard file."""
    from .diffusion.dmmc import dm_mc_proposal_range, model_spectrum
    from .storage.ensembles import save_ensemble
    from .storage.shards import parse_shard, shard_metadata, shard_range

    if a.proposals is not None:
        raise CLIError("--shard makes proposals and --proposals uses them: give one of the two", status=2)
    try:
        k, n_shards = parse_shard(a.shard)
        first, stop = shard_range(a.n, k, n_shards)
    except ValueError as e:
        raise CLIError(str(e), status=2) from None
    if spectrum is None and settings.variant == "paths" and settings.variance != "forward":
        # the model's own spectrum is a function of the checkpoint and the seed: the same in every shard
        spectrum = model_spectrum(a.checkpoint, seed, theory=theory, batch_size=a.batch_size, device=device)
    got = dm_mc_proposal_range(a.checkpoint, a.n, seed, settings, first=first, stop=stop, theory=theory,
                               spectrum=spectrum, batch_size=a.batch_size, device=device,
                               progress_bar=not a.no_progress)
    meta = _proposal_request(settings, seed, theory, spectrum, model, state, a.n)
    meta.update(shard=shard_metadata(k, n_shards, first, stop, a.n, "configurations"), device=str(device),
                log_weight=[float(v) for v in got.log_weight], nfe=[float(v) for v in got.nfe])
    save_ensemble(a.out, got.proposals.numpy(), meta, overwrite=a.force)
    print(f"wrote proposals {first}…{stop - 1} of {a.n} with their weights to {a.out} (shard {a.shard})",
          file=sys.stderr)
    return 0


def _merged_proposals(a, settings, seed, theory, spectrum, model, state):
    """The proposals of ``--proposals`` (merged shards), checked against this chain's request."""
    import numpy as np
    import torch

    from .diffusion.dmmc import DMMCProposals

    ens = _load_ensemble(a.proposals)
    meta = ens.metadata
    if meta.get("sampler") != "dm-mc-proposals" or "shard" in meta:
        raise CLIError(f"--proposals {a.proposals} is not a merged set of DM-MC proposals (make them with dmmc "
                       "--shard K/N and join the shards with python -m lib merge)", status=2)
    if spectrum is None and settings.variant == "paths" and settings.variance != "forward":
        spectrum = "unchecked"  # the shards' own (the model's samples): compared by hash below
    want = _proposal_request(settings, seed, theory, None if spectrum in (None, "unchecked") else spectrum, model,
                             state, a.n)
    keys = ["theory", "settings", "seed", "model", "n_proposals"] + ([] if spectrum == "unchecked" else ["spectrum"])
    diff = [k for k in keys if meta.get(k) != want.get(k)]
    if diff:
        raise CLIError(f"--proposals {a.proposals} were made for another chain (they differ in {', '.join(diff)}; "
                       f"this chain: --n {a.n}, --seed {seed}, {a.checkpoint})", status=2)
    x = torch.as_tensor(ens.configs)
    log_w = np.asarray(meta["log_weight"], dtype=np.float64)
    if len(log_w) != len(x):
        raise CLIError(f"--proposals {a.proposals}: {len(x)} configurations but {len(log_w)} weights")
    return DMMCProposals(x, log_w, theory.action(x.double()).numpy(), None, np.asarray(meta["nfe"]), theory)


def cmd_paper_model(a) -> int:
    import os
    import time

    import torch

    from .diffusion import shipped
    from .runtime import resolve_device
    from .study import PAPER_STUDIES, paper_study

    if a.list:
        for name, (use, study) in PAPER_STUDIES.items():
            print(f"{name:28s} {use}")
        return 0
    if a.check:
        directory = Path(a.models) if a.models else shipped.models_dir()
        if directory is None or not (directory / shipped.MANIFEST).is_file():
            raise CLIError(f"no {shipped.MANIFEST} in {directory} (DMSQ_MODELS={os.environ.get('DMSQ_MODELS')!r})"
                           if directory is not None else "DMSQ_MODELS is 'none': no shipped models to check")
        entries = shipped.read_manifest(directory)
        for e in entries:
            shipped.check_entry(e, directory)
            print(f"ok  {e['file']}  L={e['L']} kappa={e['kappa']} epochs={e['epochs']} key={e['cache_key']}")
        print(f"{len(entries)} shipped models verified in {directory}")
        return 0
    if not a.name:
        raise CLIError("python -m lib paper-model: name a model (--list shows them)", status=2)
    study = paper_study(a.name)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    start = time.time()
    model, state, ckpt = study.model(device, progress_bar=not a.quiet)
    loss = study.held_out_loss(device)
    seconds = [s for s in state["epoch_seconds"] if s == s]
    print(f"{a.name}: {state['epoch']} epochs, {sum(seconds):.0f} s of training on {state['device_type']}, "
          f"held-out DSM loss {loss:.5f} ({time.time() - start:.0f} s in this run)")
    if a.ship:
        cpu = torch.backends.cpu.get_cpu_capability() if state["device_type"] == "cpu" else None
        entry = shipped.ship(ckpt, a.name, Path(a.models) if a.models else None, chapter=PAPER_STUDIES[a.name][0],
                             study=study.to_dict(), held_out_loss=round(loss, 6), cpu_capability=cpu,
                             threads=torch.get_num_threads(),
                             command=f"python -m lib paper-model {a.name} --ship")
        print(f"shipped {entry['file']} (sha256 {entry['sha256'][:16]}…, cache key {entry['cache_key']})")
    return 0


COMMANDS = {"hmc": cmd_hmc, "ensemble": cmd_hmc, "merge": cmd_merge, "observables": cmd_observables, "train": cmd_train, "sample": cmd_sample,
            "dmmc": cmd_dmmc, "paper-model": cmd_paper_model}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def main(argv=None) -> int:
    """Run a command; every failure is one line on stderr and a non-zero exit status."""
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except CLIError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        print("error: interrupted (finished work is kept: rerun the same command to resume where supported)",
              file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except MemoryError:
        print("error: out of memory; ask for fewer configurations or a smaller --batch-size", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the command line never shows a traceback
        print(f"error: internal error ({type(exc).__name__}: {_one_line(exc)}); please report it", file=sys.stderr)
        return 1
