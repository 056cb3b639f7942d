r"""Denoising score matching (paper eq. 3.4) and a resumable trainer.

With the perturbation kernel x_t = f(t,0) x₀ + σ_t z (σ_t² = Ξ(t)), the σ_t²-weighted loss is

.. math:: \mathcal L(θ) = \mathbb E_{t∼U(ε,T)}\,\mathbb E_{x_0}\,\mathbb E_{z}
          \big\| σ_t\, s_θ(x_t, t) + z \big\|_2^2 ,

summed over the degrees of freedom and averaged over the batch (the authors' convention).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from .ensemble import atomic_torch_save
from .networks import build_score_model
from .utils import progress, resolve_device

CHECKPOINT_FORMAT = "dmsq-checkpoint-v1"


def dsm_loss(model, x0: torch.Tensor, generator: torch.Generator | None = None, eps: float = 1e-5,
             t: torch.Tensor | None = None, z: torch.Tensor | None = None, score_fn=None,
             zero_mode_weight: float = 1.0) -> torch.Tensor:
    r"""Denoising score-matching loss of eq. (3.4) with σ_t² weighting, t ~ U(ε, T).

    ``model`` is a score network with an ``sde`` attribute (or pass ``score_fn(x, t)`` and an
    ``sde`` via ``model``). ``t`` and ``z`` may be given to evaluate the loss at fixed draws.

    ``zero_mode_weight`` w (not in the paper; 1 gives eq. 3.4) weights the zero mode of the
    residual r = σ_t s_θ + z by w instead of 1:

    .. math:: \|r\|^2 + (w - 1)\, V\, \bar r^2, \qquad \bar r = \frac1V \sum_x r(x),

    i.e. E‖W^{1/2} r‖² with W = 1 + (w − 1)P₀ and P₀ the projector on constant fields. For any
    positive-definite W the loss equals E‖W^{1/2} σ_t (s_θ − ∇ log p_t)‖² up to a θ-independent
    constant, so the minimiser is still the exact score; only the emphasis changes. In eq. (3.4)
    the zero mode is one of V modes, and it is the one that decides the vacuum (chapter 6).
    """
    if zero_mode_weight <= 0:
        raise ValueError(f"zero_mode_weight must be positive, got {zero_mode_weight}")
    sde = model.sde
    score_fn = score_fn or model
    n = x0.shape[0]
    if t is None:
        t = eps + (sde.T - eps) * torch.rand(n, generator=generator, device=x0.device, dtype=x0.dtype)
    if z is None:
        z = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    xt = sde.perturb(x0, t, z)
    std = sde.marginal_std(t).to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    s = score_fn(xt, t)
    r = (std * s + z).flatten(1)
    loss = (r ** 2).sum(1)
    if zero_mode_weight != 1.0:
        loss = loss + (zero_mode_weight - 1.0) * r.shape[1] * r.mean(1) ** 2
    return loss.mean()


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
        self.shadow = {k: v.clone() for k, v in d.items()}


class Trainer:
    """Adam on the DSM loss over a fixed training set, with per-epoch atomic checkpoints.

    Parameters
    ----------
    model : a :class:`lib.networks.ScoreModel`.
    data : tensor (n, *shape) of training configurations (already normalised, see
        :func:`lib.training.Normaliser`).
    batch_size, lr : paper: 64 and 1e-3 (Adam).
    ema_decay : if set, keep an EMA of the weights (used for sampling).
    z2_augment : flip the sign of each training configuration with probability ½ (Z₂ symmetry).
    checkpoint : path; written atomically at the end of every epoch. If it exists when
        :meth:`fit` starts, training resumes from it (the data, model configuration and
        hyperparameters must match), so an interrupted run continues to the same result.
    amp : bf16 autocast on CUDA.
    zero_mode_weight : weight of the zero mode in the loss (see :func:`dsm_loss`; 1 = the paper's).
    metadata : dict stored in the checkpoint (e.g. the training ensemble's metadata).
    """

    def __init__(self, model, data: torch.Tensor, seed: int, batch_size: int = 64, lr: float = 1e-3,
                 ema_decay: float | None = None, z2_augment: bool = False, eps: float = 1e-5,
                 checkpoint=None, device=None, amp: bool = False, metadata: dict | None = None,
                 grad_clip: float | None = None, zero_mode_weight: float = 1.0):
        if batch_size < 1 or lr <= 0:
            raise ValueError("batch_size must be >= 1 and lr > 0")
        if data.shape[0] < 1:
            raise ValueError("empty training set")
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.dtype = next(model.parameters()).dtype
        self.data = data.to(device=self.device, dtype=self.dtype)
        self.seed, self.batch_size, self.lr, self.eps = int(seed), int(batch_size), float(lr), float(eps)
        self.z2_augment, self.amp = bool(z2_augment), bool(amp) and self.device.type == "cuda"
        self.grad_clip = grad_clip
        if zero_mode_weight <= 0:
            raise ValueError(f"zero_mode_weight must be positive, got {zero_mode_weight}")
        self.zero_mode_weight = float(zero_mode_weight)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        self.ema = EMA(self.model, ema_decay) if ema_decay else None
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)
        self.epoch = 0
        self.history: list[float] = []
        self.epoch_seconds: list[float] = []
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.metadata = dict(metadata or {})

    def hyperparameters(self) -> dict:
        return {"seed": self.seed, "batch_size": self.batch_size, "lr": self.lr, "eps": self.eps,
                "ema_decay": self.ema.decay if self.ema else None, "z2_augment": self.z2_augment,
                "n_train": int(self.data.shape[0]), "grad_clip": self.grad_clip,
                **({"zero_mode_weight": self.zero_mode_weight} if self.zero_mode_weight != 1.0 else {})}

    # ------------------------------------------------------------------ training
    def train_epoch(self) -> float:
        self.model.train()
        n = self.data.shape[0]
        perm = torch.randperm(n, generator=self.generator, device=self.device)
        total, count = 0.0, 0
        for i in range(0, n, self.batch_size):
            x0 = self.data[perm[i:i + self.batch_size]]
            if self.z2_augment:
                sign = torch.randint(0, 2, (x0.shape[0],), generator=self.generator, device=self.device) * 2 - 1
                x0 = x0 * sign.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.amp):
                loss = dsm_loss(self.model, x0, generator=self.generator, eps=self.eps,
                                zero_mode_weight=self.zero_mode_weight)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.optimizer.step()
            if self.ema:
                self.ema.update(self.model)
            total += loss.item() * x0.shape[0]
            count += x0.shape[0]
        return total / count

    def fit(self, epochs: int, progress_bar: bool = True) -> list[float]:
        """Train until ``epochs`` epochs are done in total (resuming from the checkpoint if any)."""
        if self.checkpoint is not None and self.checkpoint.exists() and self.epoch == 0:
            self._resume(self.checkpoint)
        bar = progress(total=epochs, initial=min(self.epoch, epochs), desc="training", disable=not progress_bar,
                       unit="epoch")
        while self.epoch < epochs:
            t0 = time.perf_counter()
            loss = self.train_epoch()
            self.epoch += 1
            self.history.append(loss)
            self.epoch_seconds.append(time.perf_counter() - t0)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}")
            if self.checkpoint is not None:
                self.save(self.checkpoint)
        bar.close()
        return self.history

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"format": CHECKPOINT_FORMAT, "model_config": self.model.config,
                "model": self.model.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "ema_updates": self.ema.n_updates if self.ema else 0,
                "device_type": self.device.type, "epoch": self.epoch, "history": self.history,
                "epoch_seconds": self.epoch_seconds, "hyperparameters": self.hyperparameters(),
                "data_fingerprint": _fingerprint(self.data), "metadata": self.metadata,
                "lib_version": _version()}

    def save(self, path) -> None:
        atomic_torch_save(self.state_dict(), path)

    def _resume(self, path):
        state = load_checkpoint(path)
        if state["model_config"] != self.model.config:
            raise ValueError(f"checkpoint {path} holds a different model configuration; not resuming")
        if state["hyperparameters"] != self.hyperparameters():
            raise ValueError(f"checkpoint {path} was trained with other hyperparameters "
                             f"({state['hyperparameters']}); not resuming")
        if state["data_fingerprint"] != _fingerprint(self.data):
            raise ValueError(f"checkpoint {path} was trained on other data; not resuming")
        if state["device_type"] != self.device.type:
            raise ValueError(f"checkpoint {path} was made on {state['device_type']}; resume it there")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
            self.ema.n_updates = int(state.get("ema_updates", 0))
        self.generator.set_state(state["generator"])
        self.epoch, self.history = state["epoch"], list(state["history"])
        self.epoch_seconds = list(state["epoch_seconds"])

    def sampling_model(self):
        """The model to sample with: a copy carrying the EMA weights if EMA is on."""
        if not self.ema:
            return self.model
        m = copy.deepcopy(self.model)
        m.load_state_dict(self.ema.state_dict())
        return m


def _fingerprint(x: torch.Tensor) -> list:
    """Cheap identity check of a training set: shape, sum and sum of squares (float64)."""
    xd = x.detach().double()
    return [list(x.shape), round(float(xd.sum()), 6), round(float((xd * xd).sum()), 6)]


def _version():
    from . import __version__

    return __version__


def load_checkpoint(path) -> dict:
    """Read a trainer checkpoint; a clear error for a missing file or anything else."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"{path} is not a checkpoint") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    return state


def load_model(path, device=None, ema: bool = True):
    """Rebuild the score model stored in a checkpoint (EMA weights when present and ``ema``).

    Returns ``(model, state)``.
    """
    state = load_checkpoint(path)
    model = build_score_model(state["model_config"])
    weights = state["ema"] if (ema and state.get("ema") is not None) else state["model"]
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
