"""Diffusion models as stochastic quantisation in lattice field theory — the book's library.

The layout follows the paper's pipeline::

    theories/    what is sampled: the 0D toy model (eq. 3.19), lattice φ⁴ (eqs. 4.2–4.4, the free
                 field at λ = 0), Gaussian mixtures with exact scores, 2D U(1) gauge theory with
                 its exact solution on a torus; the Theory protocol
    mcmc/        Markov chains on e^{−S}: the batched chain base, Langevin (eq. 2.15), HMC with
                 the paper's ensemble protocol (HMCSettings), local Metropolis, MALA, independence
                 Metropolis with global proposals (DM-MC, eq. 4.9)
    diffusion/   diffusion models: SDEs (eq. 3.6), score networks (App. A), the DSM loss (eq. 3.4),
                 training (TrainSettings), samplers in a registry (SampleSettings; eqs. 3.9, 3.14),
                 the likelihood (eq. 3.15), cached training and the results derived from a model
    analysis/    observables (eqs. 4.5–4.7), jackknife and Γ-method statistics, Fokker–Planck (eq. 2.6)
    study.py     one φ⁴ study (theory + HMC data + model) as a frozen object; the paper-scale
                 models that ship with the book (models/, lib.diffusion.shipped)
    storage/     atomic, safe files: ensembles with metadata, checkpoints, the metadata-keyed cache
    settings.py  frozen per-stage settings objects and the one rule for cache keys
    rng.py       per-sample random streams: sample i depends only on (seed, i)
    runtime.py   devices, progress bars, shape checks;  display.py  tables and value ± error
    cli.py       python -m lib hmc | observables | train | sample
"""
__version__ = "0.2.0"

from . import analysis, diffusion, display, mcmc, rng, runtime, settings, storage, study, theories
from .analysis import fokker_planck, observables, stats
from .diffusion import SampleSettings, TrainSettings, VESDE, VPSDE
from .mcmc import (HMC, MALA, HMCSettings, Langevin, Metropolis, cached_hmc_ensemble, hamiltonian, hmc_chain,
                   hmc_ensemble, langevin, langevin_moments, langevin_step, leapfrog)
from .study import PAPER_STUDIES, Phi4Study, paper_study
from .theories import GaussianMixture, Phi4, Theory, ToyModel, U1Gauge

__all__ = ["analysis", "diffusion", "display", "mcmc", "rng", "runtime", "settings", "storage", "study", "theories",
           "fokker_planck", "observables", "stats", "SampleSettings", "TrainSettings", "VESDE", "VPSDE", "HMC",
           "HMCSettings", "Langevin", "Metropolis", "cached_hmc_ensemble", "hamiltonian", "hmc_chain", "hmc_ensemble",
           "langevin", "langevin_moments", "langevin_step", "leapfrog", "GaussianMixture", "Phi4", "Theory", "ToyModel",
           "U1Gauge", "MALA",
           "Phi4Study", "PAPER_STUDIES", "paper_study", "__version__"]
