"""Diffusion models as stochastic quantisation in lattice field theory — the book's library.

Modules
-------
toy_model     the 0D model S = μ²/2 φ² + g/4! φ⁴ with exact results by quadrature (eq. 3.19)
phi4          lattice φ⁴ in d dimensions (eqs. 4.2–4.4) and the exact free field
langevin      stochastic quantisation: the discretised Langevin equation (eq. 2.15)
markov        the batched Markov-chain base class (state, run loop, save/resume)
hmc           Hybrid Monte Carlo: leapfrog, batched chains, the paper's protocol (hot or ordered
              starts, one or more configurations per chain), resumable state
metropolis    local Metropolis with checkerboard sweeps
fokker_planck the 1D Fokker–Planck equation (eq. 2.6) solved on a grid
observables   M, |M|, χ₂, U_L, vacuum and domain-wall fractions, two-point functions, power
              spectra and mode correlations, block averages, cumulants
stats         jackknife, Γ-method autocorrelation times (pyerrors)
ensemble      ensemble files with metadata, atomic writes, a metadata-keyed cache
sde           VE (eq. 3.6) and VP forward SDEs: g(t), f(t, s), Ξ(t), perturbation kernels, priors
gmm           Gaussian mixtures with exact diffused densities and scores
networks      score networks: time-embedded MLP, circular lattice U-Net (App. A)
training      denoising score matching (eq. 3.4), a resumable trainer, normalisation
dm_sampling   reverse SDE (eq. 3.9), predictor–corrector, probability-flow ODE (3.14), likelihood (3.15)
diffusion     the workflow: train on an ensemble, generate an ensemble from a checkpoint, and the
              cached versions keyed by every setting (cached_score_model, cached_dm_ensemble)
cli           ``python -m lib hmc | observables | train | sample``
"""
__version__ = "0.1.0"

from .toy_model import ToyModel
from .phi4 import Phi4
from .langevin import Langevin, langevin, langevin_step, langevin_moments
from .hmc import HMC, cached_hmc_ensemble, hmc_chain, hmc_ensemble, leapfrog, hamiltonian
from .metropolis import Metropolis
from . import observables, stats, ensemble, fokker_planck
from . import sde, gmm, networks, training, dm_sampling, diffusion
from .sde import VESDE, VPSDE
from .gmm import GaussianMixture

__all__ = ["ToyModel", "Phi4", "Langevin", "langevin", "langevin_step", "langevin_moments", "HMC", "hmc_chain",
           "hmc_ensemble", "cached_hmc_ensemble", "leapfrog", "hamiltonian", "Metropolis", "observables", "stats", "ensemble",
           "fokker_planck", "sde", "gmm", "networks", "training", "dm_sampling", "diffusion", "VESDE", "VPSDE",
           "GaussianMixture", "__version__"]
