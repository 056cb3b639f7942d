"""Diffusion models as stochastic quantisation in lattice field theory — the book's library.

Modules
-------
toy_model     the 0D model S = μ²/2 φ² + g/4! φ⁴ with exact results by quadrature (eq. 3.19)
phi4          lattice φ⁴ in d dimensions (eqs. 4.2–4.4) and the exact free field
langevin      stochastic quantisation: the discretised Langevin equation (eq. 2.15)
markov        the batched Markov-chain base class (state, run loop, save/resume)
hmc           Hybrid Monte Carlo: leapfrog, batched chains, the paper's protocol, resumable state
metropolis    local Metropolis with checkerboard sweeps
fokker_planck the 1D Fokker–Planck equation (eq. 2.6) solved on a grid
observables   M, |M|, χ₂, U_L, two-point functions, cumulants
stats         jackknife, Γ-method autocorrelation times (pyerrors)
ensemble      ensemble files with metadata, atomic writes, a metadata-keyed cache
"""
__version__ = "0.1.0"

from .toy_model import ToyModel
from .phi4 import Phi4
from .langevin import Langevin, langevin, langevin_step, langevin_moments
from .hmc import HMC, cached_hmc_ensemble, hmc_chain, hmc_ensemble, leapfrog, hamiltonian
from .metropolis import Metropolis
from . import observables, stats, ensemble, fokker_planck

__all__ = ["ToyModel", "Phi4", "Langevin", "langevin", "langevin_step", "langevin_moments", "HMC", "hmc_chain",
           "hmc_ensemble", "cached_hmc_ensemble", "leapfrog", "hamiltonian", "Metropolis", "observables", "stats", "ensemble",
           "fokker_planck", "__version__"]
