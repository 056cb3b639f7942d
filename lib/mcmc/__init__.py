"""Markov chains that sample e^{−S}: the batched chain base (:mod:`.chain`), Langevin dynamics
(stochastic quantisation, :mod:`.langevin`), Hybrid Monte Carlo with the paper's ensemble
protocol (:mod:`.hmc`), local Metropolis (:mod:`.metropolis`) and independence Metropolis with
global proposals, e.g. from a diffusion model (:mod:`.independence`)."""
from .chain import MarkovChainSampler
from .hmc import HMC, HMCSettings, cached_hmc_ensemble, hamiltonian, hmc_chain, hmc_ensemble, leapfrog
from .independence import IndependenceChain, independence_chain
from .langevin import Langevin, langevin, langevin_moments, langevin_step
from .metropolis import Metropolis

__all__ = ["MarkovChainSampler", "HMC", "HMCSettings", "cached_hmc_ensemble", "hamiltonian", "hmc_chain",
           "hmc_ensemble", "leapfrog", "IndependenceChain", "independence_chain", "Langevin", "langevin", "langevin_moments", "langevin_step", "Metropolis"]
