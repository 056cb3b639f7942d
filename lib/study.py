"""One φ⁴ study of the paper, as one frozen settings object: the theory, the HMC training data, the
score model and its training (chapters 4, 6–9 and the benchmarks use it instead of restating the
pipeline).

:class:`Phi4Study` holds every setting of "theory + HMC data + model" with the paper's values as
defaults (Sec. 4 and App. A: L = 32, λ = 0.022, 5120 + 1024 configurations of the paper's HMC
protocol, the U-Net 32-64-128-256 with strides 1-2-2-2, VE SDE with σ = 25, Adam 10⁻³, batch 64,
250 epochs, an EMA of the weights). Its methods go through the caches, so they make each result
once and load it afterwards:

* :meth:`Phi4Study.ensemble` — the HMC training and test set (:func:`lib.cached_hmc_ensemble`);
* :meth:`Phi4Study.model` — the trained score model (:func:`lib.diffusion.cached_score_model`; a
  model that ships with the book in ``models/`` is loaded instead of trained);
* :meth:`Phi4Study.generated` — configurations from the model (:func:`lib.diffusion.cached_dm_ensemble`,
  Euler–Maruyama with 500 steps by default, eq. 3.9);
* :meth:`Phi4Study.held_out_loss` — the DSM loss (eq. 3.4) of the model on the test set.

The requests these methods build are exactly those the chapters built by hand before, so the cache
keys did not change (``tests/test_study.py`` checks it). :data:`PAPER_STUDIES` names the studies
whose models ship with the book.
"""
from __future__ import annotations

from dataclasses import dataclass

from .settings import Settings, choice, positive_float, positive_int


@dataclass(frozen=True)
class Phi4Study(Settings):
    """Theory, HMC data and score model of one φ⁴ study (defaults: the paper's, at κ = 0.21).

    ``n_per_chain``: configurations kept per HMC chain, ``n_spacing`` trajectories apart (1: the
    paper's protocol). ``start``: how the HMC chains of the training data start — ``"hot"`` is the paper's protocol
    (each configuration from its own chain, 100 + 64 trajectories from noise), ``"ordered"`` a
    classical vacuum with a random sign (needed in the broken phase, chapter 6).
    ``n_fit``: train on the first ``n_fit`` of the ``n_train`` training configurations only (the
    training-set sizes of App. C; the data stay the same ensemble). ``odd``: an odd network;
    ``z2_augment``: random sign flips of the training data (both need ``normalisation="maxabs"``).
    ``zero_mode_head``: the U-Net with a separate zero-mode denoiser (chapter 6); its scale
    ``zero_mode_sd`` is a number, or ``"data"`` for the rms magnetisation of the training set in
    network units (:func:`lib.diffusion.zero_mode_scale`). ``skip``: a Gaussian skip with the
    training set's per-site variance (:func:`lib.diffusion.site_variance`).
    """

    stage = "phi4-study"
    L: int = 32
    kappa: float = 0.21
    lam: float = 0.022
    n_train: int = 5120
    n_test: int = 1024
    start: str = "hot"
    hmc_eps: float = 0.1
    hmc_steps: int = 10
    n_burnin: int = 100
    n_spacing: int = 64
    n_per_chain: int = 1
    hmc_seed: int = 2024
    sigma: float = 25.0
    channels: tuple = (32, 64, 128, 256)
    strides: tuple = (1, 2, 2, 2)
    zero_mode_head: bool = False
    zero_mode_sd: float | str = 0.5
    skip: bool = False
    odd: bool = False
    z2_augment: bool = False
    n_fit: int | None = None
    epochs: int = 250
    batch_size: int = 64
    lr: float = 1e-3
    ema_decay: float | None = 0.999
    normalisation: str = "minmax"
    t_sampling: str = "uniform"
    train_seed: int = 1
    n_validation: int = 0
    patience: int | None = None

    def __post_init__(self):
        for name in ("L", "n_train", "n_test", "hmc_steps", "n_spacing", "n_per_chain", "epochs", "batch_size"):
            positive_int(name, getattr(self, name))
        for name in ("hmc_eps", "sigma", "lr"):
            self._set(name, positive_float(name, getattr(self, name)))
        self._set("kappa", float(self.kappa))
        self._set("lam", float(self.lam))
        choice("start", self.start, ("hot", "ordered", "cold"))
        self._set("channels", tuple(int(c) for c in self.channels))
        self._set("strides", tuple(int(s) for s in self.strides))
        if len(self.channels) != len(self.strides):
            raise ValueError(f"channels {self.channels} and strides {self.strides} must have the same length")
        if not (self.zero_mode_sd == "data" or (isinstance(self.zero_mode_sd, (int, float))
                                               and self.zero_mode_sd > 0)):
            raise ValueError(f"zero_mode_sd must be a positive number or 'data', got {self.zero_mode_sd!r}")
        if self.n_fit is not None and not 1 <= int(self.n_fit) <= self.n_train:
            raise ValueError(f"n_fit must lie between 1 and n_train = {self.n_train}, got {self.n_fit}")
        if self.n_fit is not None and self.n_validation:
            raise ValueError("n_validation holds out test configurations after the training set; it cannot be "
                             "combined with n_fit")
        if not 0 <= int(self.n_validation) <= self.n_test:
            raise ValueError(f"n_validation must lie between 0 and n_test = {self.n_test}, got {self.n_validation}")

    # ------------------------------------------------------------------ the pipeline
    def theory(self):
        from .theories import Phi4

        return Phi4(L=self.L, kappa=self.kappa, lam=self.lam)

    def hmc(self, device=None, progress_bar: bool = False) -> dict:
        """The keyword arguments of :func:`lib.cached_hmc_ensemble` for the training data."""
        return dict(n_burnin=self.n_burnin, n_spacing=self.n_spacing, n_per_chain=self.n_per_chain,
                    eps=self.hmc_eps, n_steps=self.hmc_steps, start=self.start, device=device,
                    progress_bar=progress_bar)

    def ensemble(self, device=None, progress_bar: bool = False, verbose: bool = True):
        """The HMC training set followed by the test set (``n_train + n_test`` configurations,
        one per chain), through the cache."""
        from .mcmc import cached_hmc_ensemble

        return cached_hmc_ensemble(self.theory(), self.n_train + self.n_test, seed=self.hmc_seed,
                                   verbose=verbose, **self.hmc(device, progress_bar))

    def hmc_reference(self, n_chains: int, per_chain: int, spacing: int, seed: int, device=None,
                      progress_bar: bool = False, verbose: bool = True):
        """A high-statistics HMC reference at the study's theory: ``n_chains`` independent chains,
        thermalised like the training data, then sampled ``per_chain`` times, ``spacing``
        trajectories apart (a jackknife over whole chains treats them as independent)."""
        from .mcmc import cached_hmc_ensemble

        kw = {**self.hmc(device, progress_bar), "n_spacing": spacing, "n_per_chain": per_chain}
        return cached_hmc_ensemble(self.theory(), n_chains * per_chain, seed=seed, verbose=verbose, **kw)

    def train_configs(self, device=None):
        return self.ensemble(device, verbose=False).configs[:self.n_train]

    def test_configs(self, device=None):
        return self.ensemble(device, verbose=False).configs[self.n_train:]

    def sde(self):
        from .diffusion import make_sde

        return make_sde("ve", self.sigma)

    def network(self, device=None):
        """The (untrained) score network: its configuration is part of the model's cache key."""
        from .diffusion import default_model, site_variance, zero_mode_scale

        extra = {}
        if self.zero_mode_head:
            sd = (zero_mode_scale(self.train_configs(device), self.normalisation) if self.zero_mode_sd == "data"
                  else float(self.zero_mode_sd))
            extra.update(zero_mode_head=True, zero_mode_sd=sd)
        if self.skip:
            extra["skip_var"] = site_variance(self.train_configs(device), self.normalisation)
        if self.odd:
            extra["odd"] = True
        return default_model(self.sde(), (self.L, self.L), channels=list(self.channels),
                             strides=list(self.strides), **extra)

    def train_settings(self) -> dict:
        """The keyword arguments of :func:`lib.diffusion.cached_score_model` (but the network and data)."""
        return dict(n_train=self.n_fit or self.n_train, n_validation=int(self.n_validation), epochs=self.epochs,
                    seed=self.train_seed, batch_size=self.batch_size, lr=self.lr, ema_decay=self.ema_decay,
                    normalisation=self.normalisation, t_sampling=self.t_sampling, patience=self.patience,
                    z2_augment=self.z2_augment)

    def model_request(self, device=None) -> dict:
        """The training request of the model (:func:`lib.diffusion.score_model_request`); its hash is
        the model's cache key (``dm-<key>.pt``, and ``cache_key`` in ``models/manifest.json``)."""
        from .diffusion import TrainSettings, score_model_request

        kw = self.train_settings()
        n_train, n_validation, seed = kw.pop("n_train"), kw.pop("n_validation"), kw.pop("seed")
        return score_model_request(self.ensemble(device, verbose=False), self.network(device),
                                   TrainSettings.build(**kw), n_train=n_train, seed=seed, n_validation=n_validation)

    def cache_key(self, device=None) -> str:
        from .storage.files import content_hash

        return content_hash(self.model_request(device))

    def model(self, device=None, progress_bar: bool = True, verbose: bool = True):
        """``(model, state, checkpoint)`` of :func:`lib.diffusion.cached_score_model`: the trained
        model (EMA weights), its checkpoint dictionary and the checkpoint's path (in the cache, or
        in ``models/`` for a shipped model)."""
        from .diffusion import cached_score_model

        return cached_score_model(self.ensemble(device, verbose=verbose), self.network(device), device=device,
                                  progress_bar=progress_bar, verbose=verbose, **self.train_settings())

    def checkpoint(self, device=None, verbose: bool = False):
        return self.model(device, progress_bar=False, verbose=verbose)[2]

    def generated(self, n: int, seed: int = 11, *, n_steps: int = 500, batch_size: int = 1024, device=None,
                  lattice_shape=None, progress_bar: bool = True, verbose: bool = True, **sample_overrides):
        """``n`` configurations generated by the model (:func:`lib.diffusion.cached_dm_ensemble`;
        Euler–Maruyama with ``n_steps`` steps unless ``sample_overrides`` say otherwise), as an
        :class:`lib.storage.Ensemble`."""
        from .diffusion import cached_dm_ensemble

        return cached_dm_ensemble(self.checkpoint(device), n, seed=seed, n_steps=n_steps, batch_size=batch_size,
                                  device=device, lattice_shape=lattice_shape, progress_bar=progress_bar,
                                  verbose=verbose, **sample_overrides)

    def held_out_loss(self, device=None, seed: int = 0, n_times: int = 4) -> float:
        """The DSM loss (eq. 3.4) of the trained model on the ``n_test`` test configurations, at
        ``n_times`` stratified times each (:class:`lib.diffusion.HeldOutLoss`), in the network's units."""
        import torch

        from .diffusion import Normaliser, TrainSettings, held_out_loss

        model, state, _ = self.model(device, progress_bar=False, verbose=False)
        norm = Normaliser.from_dict(state["metadata"]["normaliser"])
        data = norm.forward(torch.as_tensor(self.test_configs(device), dtype=torch.float64)).float()
        return held_out_loss(model, data, TrainSettings.from_dict(state["settings"]), seed=seed, n_times=n_times)


#: The paper-scale studies whose models ship with the book (``models/``), by name: the chapter
#: that uses each, and the settings.
PAPER_STUDIES: dict[str, tuple[str, Phi4Study]] = {
    "phi4-L32-k0.21": ("chapters 7, 8: the symmetric phase (Table 1, Figs. 6, 7)", Phi4Study(kappa=0.21)),
    "phi4-L32-k0.21-zero-mode": ("chapter 7: the zero-mode head",
                                 Phi4Study(kappa=0.21, zero_mode_head=True, zero_mode_sd="data")),
    "phi4-L32-k0.5": ("chapter 6: the broken phase (Figs. 4, 5)", Phi4Study(kappa=0.5, start="ordered")),
    "phi4-L32-k0.5-zero-mode": ("chapter 6: the zero-mode head",
                                Phi4Study(kappa=0.5, start="ordered", zero_mode_head=True)),
    "phi4-L32-k0.27": ("chapter 9: DM-MC near the transition (Fig. 8)", Phi4Study(kappa=0.27)),
    "phi4-L32-k0.4": ("chapter 4: the φ⁴ cumulants", Phi4Study(kappa=0.4, start="ordered")),
}


def paper_study(name: str) -> Phi4Study:
    """The :class:`Phi4Study` of a paper-scale model by name (one-line error for an unknown name)."""
    if name not in PAPER_STUDIES:
        raise ValueError(f"no paper study {name!r}; known: {', '.join(PAPER_STUDIES)}")
    return PAPER_STUDIES[name][1]


__all__ = ["Phi4Study", "PAPER_STUDIES", "paper_study"]
