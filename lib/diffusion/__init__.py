"""Diffusion models (paper Sec. 3): forward SDEs (:mod:`.sde`), score networks (:mod:`.networks`),
the denoising score-matching loss (:mod:`.loss`), training and checkpoints (:mod:`.training`), samplers
in a registry (:mod:`.samplers`), the likelihood by the probability-flow ODE (:mod:`.likelihood`),
proposals with exact path-space weights for DM-MC (:mod:`.paths`), DM-MC chains (:mod:`.dmmc`),
diffusion on the torus of U(1) links with a gauge-invariant score network (:mod:`.gauge`);
the default models and their cached training (:mod:`.models`), what a trained model computes
(:mod:`.generation`), the same through the cache (:mod:`.derived`), and the trained models that
ship with the book (:mod:`.shipped`)."""
from . import derived, dmmc, gauge, generation, likelihood, loss, models, networks, paths, samplers, sde, shipped, training
from .likelihood import LikelihoodResult, LikelihoodSettings, ODESample, log_likelihood, ode_sample_with_density
from .loss import dsm_loss
from .networks import LatticeUNet, MLPScore, build_score_model
from .samplers import (SAMPLERS, SampleResult, SampleSettings, SamplerFailed, euler_maruyama, fast_settings,
                       predictor_corrector, probability_flow)
from .sde import VESDE, VPSDE, make_sde, sde_from_dict
from .training import EMA, HeldOutLoss, Normaliser, Trainer, TrainSettings, held_out_loss, load_checkpoint, load_model
from .paths import PathSettings, path_sample
from .gauge import PlaquetteScoreNet, TorusVESDE
from .dmmc import DMMCProposals, DMMCResult, DMMCSettings, dm_mc_chain, dm_mc_proposals, theory_of_checkpoint
from .models import (cached_score_model, check_lattice, default_model, score_model_request, site_variance,
                     train_score_model, zero_mode_scale)
from .generation import data_spectrum, dm_path_proposals, effective_action, generate, model_log_likelihood, tweedie_denoise
from .derived import (cached_derivation, cached_dm_ensemble, cached_dm_path_proposals, cached_log_likelihood,
                      model_identity, weights_hash)

__all__ = ["dmmc", "gauge", "PlaquetteScoreNet", "TorusVESDE", "DMMCProposals", "DMMCResult", "DMMCSettings", "dm_mc_chain", "dm_mc_proposals", "theory_of_checkpoint",
           "likelihood", "loss", "networks", "paths", "samplers", "sde", "shipped", "training", "models", "generation", "derived", "cached_derivation", "model_identity", "weights_hash", "LikelihoodResult",
           "LikelihoodSettings", "ODESample", "ode_sample_with_density", "PathSettings", "path_sample",
           "cached_dm_path_proposals", "data_spectrum", "dm_path_proposals", "log_likelihood",
           "cached_log_likelihood", "model_log_likelihood", "dsm_loss", "LatticeUNet", "MLPScore",
           "build_score_model", "SAMPLERS", "SampleResult", "SampleSettings", "SamplerFailed", "euler_maruyama",
           "fast_settings",
           "predictor_corrector", "probability_flow", "VESDE", "VPSDE", "make_sde", "sde_from_dict", "EMA",
           "HeldOutLoss", "held_out_loss", "Normaliser", "Trainer", "TrainSettings", "load_checkpoint", "load_model", "cached_dm_ensemble",
           "cached_score_model", "check_lattice", "default_model", "effective_action", "generate",
           "score_model_request", "site_variance", "train_score_model", "tweedie_denoise", "zero_mode_scale"]
