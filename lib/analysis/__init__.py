"""Measuring: observables of configurations (:mod:`.observables`), jackknife errors and
Γ-method autocorrelation times (:mod:`.stats`), the 1D Fokker–Planck equation (:mod:`.fokker_planck`)."""
from . import fokker_planck, observables, stats

__all__ = ["fokker_planck", "observables", "stats"]
