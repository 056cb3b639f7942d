"""Theories: the target distributions p(φ) ∝ e^{−S(φ)} that the samplers and diffusion models learn.

* :class:`ToyModel` — the 0D model of eq. (3.19), exact by quadrature;
* :class:`Phi4` — lattice φ⁴ in d dimensions (eqs. 4.2–4.4); at λ = 0 the free field, with its
  exact propagator;
* :class:`GaussianMixture` — mixtures whose diffused densities and scores are exact;
* :class:`GaussianField` — translation-invariant Gaussian fields (the free field, or the Gaussian
  fitted to an ensemble's power spectrum) with exact diffused scores and densities;
* :class:`U1Gauge` — compact U(1) gauge theory in two dimensions, exactly solvable on a torus
  (plaquette, Wilson loops, topological susceptibility).

Every theory a Markov chain runs on satisfies the :class:`Theory` protocol.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from .gaussian_field import GaussianField
from .gaussian_mixture import GaussianMixture
from .phi4 import Phi4
from .toy_model import ToyModel
from .u1 import U1Gauge


@runtime_checkable
class Theory(Protocol):
    """What the samplers need of a theory: a batched action S (shape ``(batch,)``) and drift
    K = −∂S/∂φ (shape of φ) on configurations ``(batch, *lattice_shape)``, and a JSON description."""

    name: str
    lattice_shape: tuple
    volume: int

    def action(self, phi: torch.Tensor) -> torch.Tensor: ...

    def drift(self, phi: torch.Tensor) -> torch.Tensor: ...

    def to_dict(self) -> dict: ...


def theory_from_dict(d: dict):
    """The lattice theory an ensemble's or checkpoint's metadata names (``to_dict()`` of
    :class:`Phi4` or :class:`U1Gauge`); refused in one line otherwise."""
    if not isinstance(d, dict) or d.get("name") not in ("phi4", "u1"):
        name = d.get("name") if isinstance(d, dict) else None
        raise ValueError(f"no lattice theory recorded (theory {name!r}); expected 'phi4' or 'u1'")
    try:
        if d["name"] == "u1":
            return U1Gauge(L=d["L"], beta=d["beta"])
        return Phi4(**{k: d[k] for k in ("L", "kappa", "lam", "d") if k in d})
    except KeyError as e:
        raise ValueError(f"the recorded {d['name']} theory lacks {e.args[0]!r}") from None


__all__ = ["theory_from_dict", "Theory", "ToyModel", "Phi4", "GaussianMixture", "GaussianField", "U1Gauge"]
