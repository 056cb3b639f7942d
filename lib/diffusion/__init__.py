"""Diffusion models (paper Sec. 3): forward SDEs (:mod:`.sde`), score networks (:mod:`.networks`),
the denoising score-matching loss (:mod:`.loss`), training (:mod:`.training`), samplers in a
registry (:mod:`.samplers`), the likelihood by the probability-flow ODE (:mod:`.likelihood`), and
the cached train/generate workflow (:mod:`.workflow`)."""
from . import likelihood, loss, networks, samplers, sde, training, workflow
from .likelihood import LikelihoodResult, log_likelihood
from .loss import dsm_loss
from .networks import LatticeUNet, MLPScore, build_score_model
from .samplers import (SAMPLERS, SampleResult, SampleSettings, SamplerFailed, euler_maruyama, predictor_corrector,
                       probability_flow)
from .sde import VESDE, VPSDE, make_sde, sde_from_dict
from .training import EMA, Normaliser, Trainer, TrainSettings, load_checkpoint, load_model
from .workflow import (cached_dm_ensemble, cached_score_model, check_lattice, default_model, effective_action,
                       generate, score_model_request, site_variance, train_score_model,
                       tweedie_denoise, zero_mode_scale)

__all__ = ["likelihood", "loss", "networks", "samplers", "sde", "training", "workflow", "LikelihoodResult",
           "log_likelihood", "dsm_loss", "LatticeUNet", "MLPScore", "build_score_model", "SAMPLERS", "SampleResult",
           "SampleSettings", "SamplerFailed", "euler_maruyama", "predictor_corrector", "probability_flow", "VESDE",
           "VPSDE", "make_sde", "sde_from_dict", "EMA", "Normaliser", "Trainer", "TrainSettings", "load_checkpoint",
           "load_model", "cached_dm_ensemble", "cached_score_model", "check_lattice", "default_model",
           "effective_action", "generate", "score_model_request", "site_variance",
           "train_score_model",
           "tweedie_denoise", "zero_mode_scale"]
