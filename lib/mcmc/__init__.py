"""Markov chains that sample e^{−S}: the batched chain base (:mod:`.chain`), Langevin dynamics
(stochastic quantisation, :mod:`.langevin`), Hybrid Monte Carlo with the paper's ensemble
protocol (:mod:`.hmc`), Fourier-accelerated HMC (:mod:`.fourier_hmc`), embedded Swendsen–Wang
cluster updates with HMC (:mod:`.cluster`), local Metropolis (:mod:`.metropolis`), the
Metropolis-adjusted Langevin algorithm (:mod:`.mala`) and
independence Metropolis with global proposals, e.g. from a diffusion model (:mod:`.independence`)."""
from .chain import MarkovChainSampler
from .cluster import ClusterHMC, swendsen_wang
from .compare import break_even_acceptance, dynamical_exponent, independence_tau, sampler_cost
from .fourier_hmc import FourierHMC, fourier_masses
from .hmc import (ALGORITHMS, HMC, HMCSettings, cached_hmc_ensemble, hamiltonian, hmc_chain, hmc_ensemble, leapfrog,
                  make_sampler)
from .independence import IndependenceChain, independence_chain
from .langevin import Langevin, langevin, langevin_moments, langevin_step
from .mala import MALA, mala_log_acceptance
from .metropolis import Metropolis

__all__ = ["sampler_cost", "dynamical_exponent", "independence_tau", "break_even_acceptance", "ClusterHMC", "swendsen_wang", "FourierHMC", "fourier_masses", "ALGORITHMS", "make_sampler",
           "MarkovChainSampler", "HMC", "HMCSettings", "cached_hmc_ensemble", "hamiltonian", "hmc_chain",
           "hmc_ensemble", "leapfrog", "IndependenceChain", "independence_chain", "Langevin", "langevin", "langevin_moments", "langevin_step", "Metropolis", "MALA", "mala_log_acceptance"]
