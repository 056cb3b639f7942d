"""Measuring: observables of configurations (:mod:`.observables`), jackknife errors and
Γ-method autocorrelation times (:mod:`.stats`), the 1D Fokker–Planck equation (:mod:`.fokker_planck`),
memorisation and generalisation of a generative model (:mod:`.generalisation`)."""
from . import fokker_planck, generalisation, observables, stats

__all__ = ["fokker_planck", "generalisation", "observables", "stats"]
