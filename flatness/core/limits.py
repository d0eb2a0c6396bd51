"""The upper bound of every count and size that sets how long a command runs or how much memory it takes.

A value beyond its bound is refused before any work, in one line naming the bound (``check_limit``):
``train --epochs 1000000000`` or ``correlate --draws 999999999999`` would otherwise run until killed,
and ``--image-size 100000`` until the OOM killer ends it. Each bound is far above any real use
(documented in docs/reliability.md, "Bounds"); a run that needs more can be split (``--resume``,
sweep shards).
"""

from __future__ import annotations

from typing import Any

from flatness.core.errors import FlatnessError

#: name -> (bound, what it bounds). The names are the options' and grid keys' names.
LIMITS: dict[str, tuple[int, str]] = {
    "epochs": (100_000, "training epochs"),
    "inner_iter": (1_000, "AMP inner steps per training step"),
    "image_size": (4_096, "pixels per image side"),
    "width": (65_536, "units per layer of a built-in model"),
    "depth": (1_000, "layers of a built-in model"),
    "surface_points": (1_000_000, "points of one surface (every point is a pass over the data)"),
    "draws": (100_000, "bootstrap resamples per interval"),
    "cells": (10_000, "cells of one sweep"),
    "seeds": (1_000, "seeds of one sweep"),
    "max_iter": (100_000, "eigensolver iterations"),
    "top_k": (1_000, "Hessian eigenvalues"),
    "trace_samples": (100_000, "Hutchinson vectors"),
    "density_steps": (10_000, "Lanczos steps per density vector"),
    "density_vectors": (10_000, "density vectors"),
}


def limit(name: str) -> int:
    """The bound called ``name`` (a key of ``LIMITS``)."""
    return LIMITS[name][0]


def check_limit(value: Any, name: str, label: str | None = None) -> Any:
    """``value`` when it is within the bound ``name``; else one-line ``FlatnessError`` naming the bound.

    Args:
        value: a count already checked to be a whole number (anything not an int passes: the type
            check is the caller's).
        name: the bound's key in ``LIMITS``.
        label: the option as the user typed it (default ``--NAME``).

    Returns:
        ``value`` unchanged.
    """
    bound, what = LIMITS[name]
    if isinstance(value, int) and not isinstance(value, bool) and value > bound:
        shown = label or "--" + name.replace("_", "-")
        raise FlatnessError(
            f"{shown} is {value}, above flatness's bound of {bound} {what} (flatness.core.limits; docs/reliability.md)"
        )
    return value
