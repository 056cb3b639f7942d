"""Training a score network: :class:`TrainSettings` (the training stage's settings), an
exponential moving average of the weights, and a resumable :class:`Trainer` on the
denoising score-matching loss of :mod:`lib.diffusion.loss` (paper eq. 3.4).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..rng import SampleStreams, check_seed, default_block
from ..runtime import memory_limit, per_sample, progress, resolve_device
from ..settings import Settings, choice, dtype_name, positive_float, positive_int, setting
from ..storage.files import lib_version, load_checkpoint_file, save_checkpoint
from .loss import dsm_loss, sample_times
from .networks import build_score_model

CHECKPOINT_FORMAT = "dmsq-checkpoint-v2"


@dataclass(frozen=True)
class TrainSettings(Settings):
    """Settings of the training stage (defaults: the paper's — Adam, lr 10⁻³, batch 64, 250 epochs,
    t ~ U(10⁻⁵, T)).

    ``ema_decay``: keep an EMA of the weights (sampled with); ``z2_augment``: flip the sign of each
    training configuration with probability ½; ``normalisation``: how fields are mapped to the
    network's range (:class:`Normaliser`); ``zero_mode_weight``: weight of the zero mode in the
    loss (:func:`lib.diffusion.loss.dsm_loss`; 1 is eq. 3.4); ``grad_clip``: clip the gradient
    norm; ``amp``: bf16 autocast on CUDA; ``dtype``: of the network and data; ``t_sampling``:
    how diffusion times are drawn (:func:`lib.diffusion.loss.sample_times`; ``"uniform"`` is eq. 3.4);
    ``patience``: early stopping — with held-out data (:class:`Trainer`'s ``validation``), stop
    when the held-out loss (:func:`held_out_loss`) has not improved for this many epochs, and
    sample with the weights of its best epoch (not in the paper, which trains 250 epochs).
    """

    stage = "train"
    epochs: int = setting(250, doc="training epochs (paper: 250)")
    batch_size: int = setting(64, doc="configurations per optimiser step (paper: 64)")
    lr: float = setting(1e-3, doc="Adam learning rate (paper: 1e-3)")
    ema_decay: float | None = setting(None, doc="EMA decay of the weights that are sampled with, e.g. 0.999")
    z2_augment: bool = setting(False, doc="flip the sign of training configurations at random")
    normalisation: str = setting("minmax", doc="field rescaling before training (authors: minmax)",
                                 choices=("minmax", "maxabs", "none"))
    eps: float = setting(1e-5, doc="smallest diffusion time of the loss (paper: 1e-5)")
    grad_clip: float | None = setting(None, doc="clip the gradient norm")
    zero_mode_weight: float = setting(1.0, doc="weight of the zero mode in the DSM loss (paper: 1; chapter 6)")
    amp: bool = setting(False, doc="bf16 autocast on CUDA")
    dtype: str = setting("float32", doc="dtype of the network and data", choices=("float32", "float64"))
    t_sampling: str = setting("uniform", omit_at_default=True,
                              doc="diffusion times of the loss: uniform in t (paper) or log-normal noise levels "
                                  "(EDM)", choices=("uniform", "lognormal"))
    patience: int | None = setting(None, omit_at_default=True,
                                   doc="early stopping: stop when the held-out loss has not improved for this many "
                                       "epochs (needs --n-validation); sampling then uses the best epoch's weights")

    def __post_init__(self):
        positive_int("epochs", self.epochs)
        positive_int("batch_size", self.batch_size)
        self._set("lr", positive_float("lr", self.lr))
        if self.ema_decay is not None:
            d = float(self.ema_decay)
            if not 0 < d < 1:
                raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay!r}")
            self._set("ema_decay", d)
        self._set("z2_augment", bool(self.z2_augment))
        choice("normalisation", self.normalisation, Normaliser.KINDS)
        eps = positive_float("eps", self.eps)
        if eps >= 1:
            raise ValueError(f"eps (the smallest training time) must lie in (0, 1), got {self.eps!r}")
        self._set("eps", eps)
        if self.grad_clip is not None:
            self._set("grad_clip", positive_float("grad_clip", self.grad_clip))
        self._set("zero_mode_weight", positive_float("zero_mode_weight", self.zero_mode_weight))
        self._set("amp", bool(self.amp))
        self._set("dtype", dtype_name("dtype", self.dtype))
        choice("t_sampling", self.t_sampling, ("uniform", "lognormal"))
        if self.patience is not None:
            positive_int("patience", self.patience)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


VALIDATION_DOMAIN = "dm-validation"


class HeldOutLoss:
    r"""The DSM loss of eq. (3.4) on held-out configurations, with every random number fixed.

    Each held-out configuration i is evaluated at ``n_times`` stratified diffusion times
    t_{ik} = F⁻¹((k + u_{ik})/n_times), k = 0 … n_times − 1, with F the training's own time
    distribution (``t_sampling``, ``eps``), and noise z_{ik}; u and z come from the random stream
    (seed, i) alone. The estimate

    .. math:: \hat{\mathcal L} = \frac{1}{n\,K}\sum_{i,k}
              \big\| σ_{t_{ik}}\, s_θ(x_{0,i} + σ_{t_{ik}} z_{ik},\, t_{ik}) + z_{ik} \big\|^2

    is unbiased for the loss the training minimises, but on data the network never saw; with the
    draws fixed, its changes from one epoch to the next are the network's. It falls while the
    model generalises and rises once it memorises its training set (chapter 9). Holds
    n · n_times copies of a configuration in memory.
    """

    def __init__(self, data: torch.Tensor, seed: int, settings: TrainSettings, n_times: int = 4,
                 batch_size: int = 256):
        if not isinstance(data, torch.Tensor) or data.ndim < 2 or data.shape[0] < 1:
            raise ValueError("held-out data must be a tensor of shape (n >= 1, *shape)")
        if not bool(torch.isfinite(data).all()):
            raise ValueError("held-out data contain NaN or inf")
        self.data, self.settings = data, settings
        self.n_times, self.batch_size = positive_int("n_times", n_times), positive_int("batch_size", batch_size)
        n, shape = data.shape[0], tuple(data.shape[1:])
        streams = SampleStreams(VALIDATION_DOMAIN, check_seed(seed), 0, n, "cpu",
                                block=default_block(math.prod(shape)))
        self.u = streams.rand((self.n_times,), dtype=torch.float64)
        self.z = streams.randn((self.n_times, *shape), dtype=torch.float64)

    @torch.no_grad()
    def __call__(self, model) -> float:
        p = next(model.parameters())
        like = dict(device=p.device, dtype=p.dtype)
        n, k_max, st = self.data.shape[0], self.n_times, self.settings
        total = 0.0
        for k in range(k_max):
            t = sample_times(model.sde, n, eps=st.eps, t_sampling=st.t_sampling, u=(k + self.u[:, k]) / k_max)
            for i in range(0, n, self.batch_size):
                j = min(n, i + self.batch_size)
                loss = dsm_loss(model, self.data[i:j].to(**like), t=t[i:j].to(**like),
                                z=self.z[i:j, k].to(**like), zero_mode_weight=st.zero_mode_weight,
                                reduction="none")
                total += float(loss.double().sum())
        return total / (n * k_max)


def held_out_loss(model, data: torch.Tensor, settings: TrainSettings | None = None, *, seed: int,
                  n_times: int = 4) -> float:
    """The held-out DSM loss of ``model`` on ``data`` (network units): see :class:`HeldOutLoss`."""
    return HeldOutLoss(torch.as_tensor(data), seed, TrainSettings.build(settings), n_times)(model)


class NonFiniteLoss(ValueError):
    """Training produced a NaN or infinite loss (the checkpoint keeps the last finite epoch)."""


class EMA:
    """Exponential moving average of parameters, θ̄ ← d_n·θ̄ + (1 − d_n)·θ, with the warm-up
    d_n = min(d, (1 + n)/(10 + n)) after n updates, so that the random initial weights are
    forgotten quickly (without it they keep a weight d^n, still 9 % after 2400 steps at d = 0.999)."""

    def __init__(self, model, decay: float = 0.999):
        if not 0 < decay < 1:
            raise ValueError("EMA decay must lie in (0, 1)")
        self.decay = decay
        self.n_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model):
        d = min(self.decay, (1 + self.n_updates) / (10 + self.n_updates))
        self.n_updates += 1
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self):
        return self.shadow

    def load_state_dict(self, d):
        """Load averages saved by :meth:`state_dict`, onto the device of the current averages (a
        checkpoint is read onto the CPU; the model may live on a GPU)."""
        self.shadow = {k: v.to(self.shadow[k].device if k in self.shadow else v.device, copy=True)
                       for k, v in d.items()}


class Trainer:
    """Adam on the DSM loss over a fixed training set, with per-epoch atomic checkpoints.

    Parameters
    ----------
    model : a :class:`lib.diffusion.networks.ScoreModel` (its weights are trained in place).
    data : tensor (n, *shape) of training configurations, already normalised (see
        :class:`Normaliser`); must be finite.
    settings : :class:`TrainSettings` (keyword arguments override single settings).
    seed : seeds the batch order, diffusion times, noise and augmentation signs.
    checkpoint : path, written atomically at the end of every epoch. If it exists when
        :meth:`fit` starts and ``resume`` is true, training resumes from it (the data, model
        configuration, seed and settings but ``epochs`` must match), so an interrupted run
        continues to the same result; with ``resume=False`` it is replaced after the first epoch.
    metadata : dict stored in the checkpoint (e.g. the training ensemble's metadata).
    validation : tensor (m, *shape) of held-out configurations, normalised like ``data``. After
        every epoch the held-out loss of the sampling weights (:class:`HeldOutLoss`, draws fixed
        by ``seed``) is recorded in ``validation_history`` and the weights of the best epoch are
        kept (``best_epoch``); with ``settings.patience`` training stops once the loss has not
        improved for that many epochs (``stopped_early``).
    """

    def __init__(self, model, data: torch.Tensor, settings: TrainSettings | None = None, *, seed: int,
                 checkpoint=None, device=None, metadata: dict | None = None, resume: bool = True,
                 validation: torch.Tensor | None = None, **overrides):
        self.settings = TrainSettings.build(settings, **overrides)
        if self.settings.patience is not None and validation is None:
            raise ValueError("early stopping (patience) needs held-out configurations: pass validation=...")
        self.seed = check_seed(seed)
        if not isinstance(data, torch.Tensor) or data.ndim < 2 or data.shape[0] < 1:
            raise ValueError("training data must be a tensor of shape (n >= 1, *shape)")
        if not bool(torch.isfinite(data).all()):
            raise ValueError("training data contain NaN or inf")
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.dtype = next(model.parameters()).dtype
        self.data = data.to(device=self.device, dtype=self.dtype)
        self.amp = self.settings.amp and self.device.type == "cuda"
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.settings.lr)
        self.ema = EMA(self.model, self.settings.ema_decay) if self.settings.ema_decay else None
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.epoch = 0
        self.history: list[float] = []
        self.epoch_seconds: list[float] = []
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.resume = bool(resume)
        self.metadata = dict(metadata or {})
        self.held_out = (HeldOutLoss(validation.to(self.dtype), self.seed, self.settings)
                         if validation is not None else None)
        self.validation_history: list[float] = []
        self.best_epoch = 0
        self.best_weights: dict | None = None
        self.stopped_early = False
        # data parallel (torchrun): every rank draws the global batches, times and noise from the same
        # generator and computes the loss of its slice; DistributedDataParallel averages the gradients
        self.rank, self.world = distributed_rank()
        self.ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" and self.device.index is not None else None
            # unused parameters occur legitimately (a U-Net's 1×1 bottleneck at small L, where the
            # normalised value is constant), so DDP is told to look for them
            self.ddp = DistributedDataParallel(self.model, device_ids=ids, find_unused_parameters=True)

    # ------------------------------------------------------------------ training
    def _batch_loss(self, x0: torch.Tensor):
        """(loss to differentiate, the batch's summed loss for the record) of one global batch: in one
        process the mean DSM loss (eq. 3.4); with ``world`` ranks, rank r takes the r-th contiguous slice
        of the batch with the times and noise the single process would draw, and its loss is the slice's
        sum × world / batch, so that the gradients DDP averages are those of the batch mean."""
        st = self.settings
        if self.ddp is None:
            loss = dsm_loss(self.model, x0, generator=self.generator, eps=st.eps,
                            zero_mode_weight=st.zero_mode_weight, t_sampling=st.t_sampling)
            return loss, loss.detach().double() * x0.shape[0]  # as float64 arithmetic: the record of before
        import torch.distributed as dist

        n = x0.shape[0]
        t = sample_times(self.model.sde, n, self.generator, st.eps, st.t_sampling, device=x0.device, dtype=x0.dtype)
        z = torch.randn(x0.shape, generator=self.generator, device=x0.device, dtype=x0.dtype)
        lo, hi = n * self.rank // self.world, n * (self.rank + 1) // self.world
        per = dsm_loss(self.model, x0[lo:hi], t=t[lo:hi], z=z[lo:hi], score_fn=self.ddp,
                       zero_mode_weight=st.zero_mode_weight, reduction="none")
        total = per.sum()
        record = total.detach().clone()
        dist.all_reduce(record)
        return total * (self.world / n), record

    def train_epoch(self) -> float:
        self.model.train()
        st = self.settings
        n = self.data.shape[0]
        perm = torch.randperm(n, generator=self.generator, device=self.device)
        total, count = 0.0, 0
        for i in range(0, n, st.batch_size):
            x0 = self.data[perm[i:i + st.batch_size]]
            if st.z2_augment:
                sign = torch.randint(0, 2, (x0.shape[0],), generator=self.generator, device=self.device) * 2 - 1
                x0 = x0 * per_sample(sign, x0)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.amp):
                loss, batch_total = self._batch_loss(x0)
            if not bool(torch.isfinite(batch_total)):
                raise NonFiniteLoss(f"the training loss became {batch_total.item()} at epoch {self.epoch + 1} "
                                    f"(learning rate {st.lr:g} too large, or data out of range?); "
                                    f"the checkpoint keeps epoch {self.epoch}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if st.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), st.grad_clip)
            self.optimizer.step()
            if self.ema:
                self.ema.update(self.model)
            total += batch_total.item()
            count += x0.shape[0]
        return total / count

    def fit(self, epochs: int | None = None, progress_bar: bool = True) -> list[float]:
        """Train until ``epochs`` (default: the settings') epochs are done in total (resuming from
        the checkpoint if any)."""
        epochs = self.settings.epochs if epochs is None else positive_int("epochs", epochs)
        if self.checkpoint is not None and self.checkpoint.exists() and self.epoch == 0 and self.resume:
            self._resume(self.checkpoint)
        bar = progress(total=epochs, initial=min(self.epoch, epochs), desc="training",
                       disable=not progress_bar or self.rank != 0,
                       unit="epoch")
        while self.epoch < epochs and not self.stopped_early:
            t0 = time.perf_counter()
            loss = self.train_epoch()
            self.epoch += 1
            self.history.append(loss)
            if self.held_out is not None:
                self._validate()
            self.epoch_seconds.append(time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", **({"held_out": f"{self.validation_history[-1]:.4g}"}
                                                   if self.validation_history else {}))
            if self.checkpoint is not None and self.rank == 0:  # one writer; every rank resumes from it
                self.save(self.checkpoint)
        bar.close()
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()  # the last checkpoint is written before any rank goes on
        return self.history

    def _validate(self) -> None:
        """Record the held-out loss of this epoch; keep the best weights; decide early stopping."""
        model = self.sampling_model()
        value = self.held_out(model)
        self.validation_history.append(value)
        if self.best_weights is None or value < min(self.validation_history[:-1]):
            self.best_epoch = self.epoch
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if self.settings.patience is not None and self.epoch - self.best_epoch >= self.settings.patience:
            self.stopped_early = True

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything to resume or sample: tensors, numbers, strings, lists and dicts only."""
        return {"format": CHECKPOINT_FORMAT, "model_config": self.model.config,
                "model": self.model.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "ema_updates": self.ema.n_updates if self.ema else 0,
                "device_type": self.device.type, "epoch": self.epoch, "history": self.history,
                "settings": self.settings.to_dict(), "seed": self.seed,
                "data_fingerprint": _fingerprint(self.data),
                "validation_history": self.validation_history, "best_epoch": self.best_epoch,
                "validation_fingerprint": _fingerprint(self.held_out.data) if self.held_out is not None else None,
                "best_weights": self.best_weights, "stopped_early": self.stopped_early,
                "metadata": self.metadata, "lib_version": lib_version()}

    def save(self, path) -> None:
        """The checkpoint (bit-identical for identical runs) and, beside it, the wall times per epoch."""
        save_checkpoint(self.state_dict(), path)
        save_epoch_seconds(path, self.epoch_seconds)

    def _resume(self, path):
        state = load_checkpoint(path)
        if state["model_config"] != self.model.config:
            raise ValueError(f"checkpoint {path} holds a different model configuration; not resuming")
        saved = _resume_key(TrainSettings.from_dict(state["settings"]), state["seed"])
        if saved != _resume_key(self.settings, self.seed):
            raise ValueError(f"checkpoint {path} was trained with other settings ({saved}); "
                             "not resuming")
        if state["data_fingerprint"] != _fingerprint(self.data):
            raise ValueError(f"checkpoint {path} was trained on other data; not resuming")
        if state["device_type"] != self.device.type:
            raise ValueError(f"checkpoint {path} was made on {state['device_type']}; resume it there")
        # the held-out record must stay one record: the same held-out set, never a second one or none
        saved_v = state.get("validation_fingerprint")  # absent from checkpoints of earlier versions
        mine_v = _fingerprint(self.held_out.data) if self.held_out is not None else None
        if (saved_v is not None and saved_v != mine_v) or (state.get("validation_history") and mine_v is None):
            had = f"{saved_v[0][0]} held-out configurations" if saved_v else "a held-out loss"
            raise ValueError(f"checkpoint {path} recorded {had} every epoch; resume it with the same held-out set "
                             "(--n-validation), or its record would mix two sets or be erased")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
            self.ema.n_updates = int(state["ema_updates"])
        self.generator.set_state(state["generator"])
        self.epoch, self.history = state["epoch"], list(state["history"])
        self.epoch_seconds = list(state["epoch_seconds"])[:self.epoch]
        if self.held_out is not None:
            if len(state.get("validation_history") or []) != self.epoch:
                raise ValueError(f"checkpoint {path} has no held-out loss for every epoch; not resuming")
            self.validation_history = list(state["validation_history"])
            self.best_epoch, self.best_weights = int(state["best_epoch"]), state["best_weights"]
            self.stopped_early = bool(state.get("stopped_early", False))

    def sampling_model(self, best: bool = False):
        """The model to sample with: a copy carrying the EMA weights if EMA is on; with ``best``,
        the sampling weights of the epoch with the lowest held-out loss (needs ``validation``)."""
        if best:
            if self.best_weights is None:
                raise ValueError("no held-out loss was recorded: train with validation=... to keep the best weights")
            m = copy.deepcopy(self.model)
            m.load_state_dict(self.best_weights)
            return m
        if not self.ema:
            return self.model
        m = copy.deepcopy(self.model)
        m.load_state_dict(self.ema.state_dict())
        return m


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process in an initialised ``torch.distributed`` process group
    (``torchrun``), or (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device) -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment (WORLD_SIZE > 1):
    ``nccl`` on CUDA (each rank on the GPU LOCAL_RANK), ``gloo`` on CPUs. Returns (rank, world)."""
    import os

    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return distributed_rank()
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return distributed_rank()


def _resume_key(settings: TrainSettings, seed: int) -> dict:
    """What must match to resume a run (besides the data and the network): the settings' key
    without ``epochs`` (a run may be continued further) and the seed."""
    return {**{k: v for k, v in settings.key().items() if k != "epochs"}, "seed": seed}


def _fingerprint(x: torch.Tensor) -> list:
    """Cheap identity check of a training set: shape, sum and sum of squares (float64)."""
    xd = x.detach().double()
    return [list(x.shape), round(float(xd.sum()), 6), round(float((xd * xd).sum()), 6)]


_CHECKPOINT_KEYS = ("model_config", "model", "ema", "epoch", "settings", "seed", "metadata", "history",
                    "optimizer", "generator", "device_type", "data_fingerprint")


def _times_path(path) -> Path:
    return Path(str(path) + ".times.json")


def save_epoch_seconds(path, seconds: list) -> None:
    """Wall-clock seconds per epoch, kept beside the checkpoint (``<checkpoint>.times.json``) so
    that the checkpoint itself depends only on the data, settings and seed."""
    import json

    from ..storage.files import atomic_write

    atomic_write(_times_path(path), lambda fh: fh.write(json.dumps([float(x) for x in seconds]).encode()))


def load_epoch_seconds(path) -> list[float]:
    """The wall-clock seconds per epoch of the training that wrote the checkpoint ``path`` (its
    ``.times.json``), or ``[]`` where none was kept (a shipped model, a file copied alone)."""
    import json

    p = _times_path(path)
    if not p.exists():
        return []
    return [float(x) for x in json.loads(p.read_text())]


def load_checkpoint(path) -> dict:
    """Read a trainer checkpoint safely (no code in the file can run); a one-line error for a
    missing file, a foreign or damaged file, or a checkpoint of an earlier library version.
    ``state["epoch_seconds"]`` comes from the times file beside it (NaN where it is missing)."""
    state = load_checkpoint_file(path, "checkpoint")
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    if state.get("format") == "dmsq-checkpoint-v1":
        raise ValueError(f"{path} was written by lib < 0.2 (format v1), whose sampling used other random streams; "
                         "retrain it with this version (python -m lib train ...)")
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} is an incomplete checkpoint (missing {', '.join(missing)})")
    if not isinstance(state["model_config"], dict) or not isinstance(state["metadata"], dict):
        raise ValueError(f"{path} is a damaged checkpoint (model_config/metadata are not dicts)")
    import json

    try:
        seconds = [float(x) for x in json.loads(_times_path(path).read_text())]
    except (OSError, ValueError, TypeError):  # a shipped model carries its times inside
        seconds = [float(x) for x in state["epoch_seconds"]] if isinstance(state.get("epoch_seconds"), list) else []
    state["epoch_seconds"] = (seconds + [math.nan] * state["epoch"])[:state["epoch"]]
    return state


def load_model(path, device=None, ema: bool = True, best: bool | None = None):
    """Rebuild the score model stored in a checkpoint (EMA weights when present and ``ema``).

    ``best``: the sampling weights of the epoch with the lowest held-out loss instead; by default
    exactly when the checkpoint was trained with early stopping (``patience``).

    The stored configuration is first built on the ``meta`` device, which allocates nothing: a
    damaged or forged configuration, weights that do not fit it, or a network larger than this
    machine's memory are refused in one line before any memory is taken. The weights must be finite.
    Returns ``(model, state)``.
    """
    state = load_checkpoint(path)
    if best is None:
        best = state["settings"].get("patience") is not None
    if best and state.get("best_weights") is None:
        raise ValueError(f"{path} has no best weights (trained without held-out data)")
    weights = (state["best_weights"] if best
               else state["ema"] if (ema and state.get("ema") is not None) else state["model"])
    if weights is None:  # a shipped model keeps only the weights it is sampled with
        raise ValueError(f"{path} holds only the weights it is sampled with by default (a shipped model); "
                         f"sample it with ema={not ema}")
    try:
        with torch.device("meta"):
            shell = build_score_model(state["model_config"])
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ValueError(f"{path} is a damaged checkpoint: {str(exc).splitlines()[0][:120]}") from None
    want = {k: tuple(v.shape) for k, v in shell.state_dict().items()}
    have = {k: tuple(getattr(v, "shape", ())) for k, v in weights.items()} if isinstance(weights, dict) else None
    if have != want:
        raise ValueError(f"{path} is a damaged checkpoint: its weights do not fit its model configuration; "
                         "retrain it (python -m lib train ...)")
    n = sum(p.numel() for p in shell.parameters())
    if 4 * n > memory_limit():
        raise ValueError(f"checkpoint {path}: the network has {n:.3g} parameters, more than this machine's "
                         "memory holds; sample on a larger machine")
    if not all(bool(torch.isfinite(v).all()) for v in weights.values() if v.dtype.is_floating_point):
        raise ValueError(f"{path} holds NaN or infinite weights (training diverged?); retrain it")
    model = build_score_model(state["model_config"])
    model.load_state_dict(weights)
    dtype = next(iter(weights.values())).dtype
    return model.to(device=resolve_device(device), dtype=dtype).eval(), state


class Normaliser:
    """Affine map y = a·x + b between physical fields and the network's input range.

    * ``"minmax"`` — the authors' global min–max rescaling of the whole ensemble to [−1, 1];
      it does not commute with φ → −φ unless min = −max;
    * ``"maxabs"`` — y = x / max|x|, symmetric, so Z₂ augmentation and odd networks stay exact;
    * ``"none"`` — identity.

    Stored in checkpoints, so generated samples are mapped back to physical fields.
    """

    KINDS = ("none", "minmax", "maxabs")

    def __init__(self, kind: str = "none", lo: float = -1.0, hi: float = 1.0):
        if kind not in self.KINDS:
            raise ValueError(f"unknown normalisation {kind!r}; choose from {self.KINDS}")
        if not hi > lo:
            raise ValueError("need hi > lo")
        self.kind, self.lo, self.hi = kind, float(lo), float(hi)

    @classmethod
    def fit(cls, data, kind: str = "minmax"):
        """Fit to an ensemble (all sites of all configurations)."""
        d = torch.as_tensor(data)
        if kind == "none":
            return cls("none")
        if kind == "maxabs":
            m = float(d.abs().max())
            return cls(kind, -m, m)
        return cls(kind, float(d.min()), float(d.max()))

    @property
    def symmetric(self) -> bool:
        return self.kind == "none" or self.lo == -self.hi

    @property
    def a(self) -> float:
        """Slope of y = a·x + b (network units per physical unit)."""
        return 1.0 if self.kind == "none" else 2.0 / (self.hi - self.lo)

    @property
    def b(self) -> float:
        """Offset of y = a·x + b."""
        return 0.0 if self.kind == "none" else -1.0 - self.a * self.lo

    def forward(self, x):
        """Physical field → network space."""
        if self.kind == "none":
            return x
        return 2 * (x - self.lo) / (self.hi - self.lo) - 1

    def inverse(self, y):
        """Network space → physical field."""
        if self.kind == "none":
            return y
        return (y + 1) * (self.hi - self.lo) / 2 + self.lo

    def to_dict(self):
        return {"kind": self.kind, "lo": self.lo, "hi": self.hi}

    @classmethod
    def from_dict(cls, d):
        return cls(d["kind"], d["lo"], d["hi"])
