"""Frozen settings objects: one per stage of the pipeline (HMC, training, sampling).

A stage's settings are built once (from CLI flags or a chapter's parameters), validated once in
``__post_init__``, passed whole, saved inside every checkpoint and ensemble the stage writes, and
are the only source of that stage's cache key. Runtime options that cannot change a result
(batch size of generation, device, progress bars) are *not* settings.

This module is the one place that decides what enters a key (:meth:`Settings.key`): every field,
except a field declared with ``omit_at_default=True`` whose value equals its default. New fields
are declared that way, so that adding an option does not invalidate existing cache entries.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar


def setting(default, *, omit_at_default: bool = False, doc: str = "", choices: tuple | None = None):
    """Declare a settings field; ``omit_at_default`` leaves it out of the key while at its default.
    ``doc`` and ``choices`` are the help text and the allowed values of the command-line flag that
    :mod:`lib.cli` generates from the field (its default and type come from the field too)."""
    meta = {"omit_at_default": omit_at_default, "doc": doc}
    if choices is not None:
        meta["choices"] = tuple(choices)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Base class of the per-stage settings (subclasses are frozen dataclasses)."""

    stage: ClassVar[str] = "settings"

    # ---------------------------------------------------------------- construction
    @classmethod
    def build(cls, settings: "Settings | dict | None" = None, **overrides):
        """``settings`` (an instance, a dict from :meth:`to_dict`, or None for the defaults) with
        ``overrides`` applied; unknown names are refused in one line."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"{cls.__name__} has no setting(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        if settings is None:
            return cls(**overrides)
        if isinstance(settings, dict):
            return cls.from_dict({**settings, **overrides})
        if not isinstance(settings, cls):
            raise TypeError(f"expected {cls.__name__}, got {type(settings).__name__}")
        return dataclasses.replace(settings, **overrides) if overrides else settings

    @classmethod
    def from_dict(cls, d: dict):
        """Rebuild from :meth:`to_dict` (as stored in files); refuses unknown or missing keys."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__}: expected a dict of settings, got {type(d).__name__}")
        d = {k: v for k, v in d.items() if k != "stage"}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown setting(s) {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict:
        """Every field (JSON-serialisable), plus the stage name."""
        return {"stage": self.stage, **{f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}}

    def key(self) -> dict:
        """What enters the cache key: every field but those declared ``omit_at_default`` that are
        at their default. The one place where this rule is written."""
        out = {"stage": self.stage}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.metadata.get("omit_at_default") and v == f.default:
                continue
            out[f.name] = _plain(v)
        return out

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- validation helpers
    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)


def _plain(v):
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


# ------------------------------------------------------------------------- checks used by settings
def positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def nonneg_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    return v


def positive_float(name: str, v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {v!r}") from None
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    return f


def bounded_float(name: str, v, lo: float, hi: float, why: str = "") -> float:
    """A float in the closed range [lo, hi] (one-line error naming the range, and ``why``)."""
    f = positive_float(name, v) if lo > 0 else float(v)
    if not (math.isfinite(f) and lo <= f <= hi):
        raise ValueError(f"{name} must lie between {lo:g} and {hi:g}{f' ({why})' if why else ''}, got {v!r}")
    return f


def choice(name: str, v, options) -> Any:
    if v not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(str, options))}; got {v!r}")
    return v


def dtype_name(name: str, v, options=("float32", "float64")) -> str:
    s = str(v).replace("torch.", "")
    return choice(name, s, options)


__all__ = ["Settings", "setting", "positive_int", "nonneg_int", "positive_float", "choice", "dtype_name"]
