"""The grid of a 1D/2D loss surface.

Parsing its spec, its coordinates, the coarse-to-fine visiting order, the direction spec of the
command line and the default output file name.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from flatness.core.errors import FlatnessError
from flatness.core.limits import limit

GridSpec = str | Sequence[float]
DIRECTION_KINDS = ("random", "eigen", "interp", "pca")
MAX_AXIS_POINTS = 100_000  # a grid's arrays live in memory and in the file: refuse absurd sizes up front
MAX_GRID_POINTS = limit("surface_points")  # each point is a pass over the probe data


def parse_grid(spec: GridSpec, axis: str = "x") -> tuple[float, float, int]:
    """Check a grid spec and return it as numbers.

    Args:
        spec: ``"MIN:MAX:N"`` or ``(min, max, n)``.
        axis: ``"x"`` or ``"y"``, named in error messages.

    Returns:
        ``(min, max, n)``: finite, MIN < MAX, a whole N with 2 <= N <= ``MAX_AXIS_POINTS``.
    """
    if isinstance(spec, str):
        parts = spec.strip().split(":")
        if len(parts) != 3:
            raise FlatnessError(f"--{axis} must be MIN:MAX:N (e.g. -1:1:21), got {spec!r}")
    else:
        parts = list(spec)
        if len(parts) != 3:
            raise FlatnessError(f"{axis} grid must be (min, max, n), got {spec!r}")
    try:
        lo, hi = float(parts[0]), float(parts[1])
        n_float = float(parts[2])
    except (TypeError, ValueError):
        raise FlatnessError(f"--{axis} must be MIN:MAX:N with numbers (e.g. -1:1:21), got {spec!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise FlatnessError(f"--{axis}: MIN and MAX must be finite numbers, got {spec!r}")
    if not n_float.is_integer():
        raise FlatnessError(f"--{axis}: N must be a whole number of points, got {parts[2]!r}")
    n = int(n_float)
    if n < 2:
        raise FlatnessError(f"--{axis}: N must be at least 2 points, got {n}")
    if n > MAX_AXIS_POINTS:
        raise FlatnessError(f"--{axis}: N must be at most {MAX_AXIS_POINTS} points, got {n}")
    if lo >= hi:
        raise FlatnessError(f"--{axis}: MIN must be below MAX, got {lo:g} >= {hi:g}")
    # issue 15: a coordinate scales float32 weights (and their spacing must be a number): beyond float32's
    # range it overflows inside the weight update, an internal error after the file was made
    limit = float(np.finfo(np.float32).max)
    if max(abs(lo), abs(hi)) > limit or not math.isfinite(hi - lo):
        raise FlatnessError(f"--{axis}: MIN and MAX must lie within ±{limit:.3g} (float32 weights), got {lo:g}:{hi:g}")
    return lo, hi, n


def grid_coordinates(lo: float, hi: float, n: int) -> np.ndarray:
    """``np.linspace(lo, hi, n)`` with values within rounding of 0 snapped to exactly 0 (the centre).

    Args:
        lo: the first coordinate.
        hi: the last coordinate.
        n: the number of points (the spec checked by ``parse_grid``).

    Returns:
        float64 array of ``n`` coordinates.
    """
    coords = np.linspace(lo, hi, n, dtype=np.float64)
    coords[np.abs(coords) < 1e-12 * (hi - lo)] = 0.0
    return coords


def axis_coordinates(spec: Any, axis: str = "x") -> np.ndarray:
    """The coordinates of one axis from any of the forms ``loss_surface`` accepts.

    Args:
        spec: ``"MIN:MAX:N"`` or a ``(min, max, n)`` tuple (a spec), or a list, NumPy array or
            tensor of coordinates (used as given).
        axis: ``"x"`` or ``"y"``, named in error messages.

    Returns:
        float64 array of coordinates.
    """
    if isinstance(spec, (str, tuple)):
        return grid_coordinates(*parse_grid(spec, axis))
    if isinstance(spec, torch.Tensor):
        spec = spec.detach().cpu().numpy()
    try:
        coords = np.asarray(spec, dtype=np.float64)
    except (TypeError, ValueError):
        raise FlatnessError(
            f"{axis} must be 'MIN:MAX:N', (min, max, n) or an array of coordinates, got {type(spec).__name__}"
        ) from None
    if coords.ndim != 1 or coords.size == 0:
        raise FlatnessError(f"{axis} coordinates must be a non-empty 1-D array, got shape {coords.shape}")
    if not np.isfinite(coords).all():
        raise FlatnessError(f"{axis} coordinates must be finite numbers")
    if coords.size > MAX_AXIS_POINTS:
        raise FlatnessError(f"{axis}: at most {MAX_AXIS_POINTS} points, got {coords.size}")
    return coords.copy()


def parse_direction(spec: str) -> tuple[str, str | None]:
    """Split a direction spec of the command line.

    Args:
        spec: ``random`` | ``eigen`` | ``interp:CKPT_B`` | ``pca:RUN_DIR``.

    Returns:
        ``(kind, source)``; ``source`` is None for random and eigen.
    """
    spec = (spec or "").strip()
    kind, _, source = spec.partition(":")
    kind = kind.lower()
    if kind not in DIRECTION_KINDS:
        raise FlatnessError(f"unknown direction {spec!r}; use random, eigen, interp:CKPT_B or pca:RUN_DIR")
    if kind in ("interp", "pca"):
        if not source:
            raise FlatnessError(f"--dir {kind} needs a path: {kind}:{'CKPT_B' if kind == 'interp' else 'RUN_DIR'}")
        return kind, source
    if source:
        raise FlatnessError(f"--dir {kind} takes no path, got {spec!r}")
    return kind, None


def _fmt(v: float) -> str:
    return f"{v:g}"


# Nine parameters: each is a part of the name (what makes two surfaces of one checkpoint differ).
def default_surface_path(
    checkpoint_path: str,
    kind: str,
    source: str | None,
    norm: str,
    seed: int,
    x: tuple[float, float, int],
    y: tuple[float, float, int] | None,
    split: str,
    bn: str,
) -> str:
    """A descriptive file name beside the checkpoint.

    Args:
        checkpoint_path: the checkpoint; the file goes in its folder.
        kind: the direction kind (``parse_direction``).
        source: the direction's path (interp, pca) or None.
        norm: random directions' normalisation.
        seed: random directions' seed.
        x: the parsed x grid spec.
        y: the parsed y grid spec, None in 1D.
        split: the data split (train, test, both).
        bn: the BatchNorm mode (eval, recalibrate).

    Returns:
        e.g. ``FOLDER/last.surface-random-filter-s0-x-1_1_21-y-1_1_21-train.h5``.
    """
    folder = os.path.dirname(os.path.abspath(checkpoint_path))
    stem = os.path.splitext(os.path.basename(checkpoint_path))[0]
    if kind == "random":
        tag = f"random-{norm}-s{seed}"
    elif kind == "interp":
        tag = "interp-" + os.path.splitext(os.path.basename(os.path.normpath(source)))[0]
    elif kind == "pca":
        tag = "pca"
    else:
        tag = "eigen"
    grid = f"x{_fmt(x[0])}_{_fmt(x[1])}_{x[2]}"
    if y is not None:
        grid += f"-y{_fmt(y[0])}_{_fmt(y[1])}_{y[2]}"
    name = f"{stem}.surface-{tag}-{grid}-{split}" + ("-bnrecal" if bn == "recalibrate" else "") + ".h5"
    return os.path.join(folder, name)


def coarse_to_fine_order(nx: int, ny: int) -> list[tuple[int, int]]:
    """Every grid point once, coarse lattices first, so a partial surface already covers the grid.

    Args:
        nx: points along x.
        ny: points along y (1 for a 1D surface).

    Returns:
        ``(i, j)`` pairs (point ``(x_i, y_j)``): first those on a stride-2^k lattice (the largest
        2^k < max(nx, ny), at most 8), then each halved stride.
    """
    stride = 1
    while stride * 2 < max(nx, ny):
        stride *= 2
    stride = min(stride, 8) if max(nx, ny) > 8 else stride
    seen = np.zeros((nx, ny), dtype=bool)
    order = []
    while stride >= 1:
        for i in range(0, nx, stride):
            for j in range(0, ny, stride):
                if not seen[i, j]:
                    seen[i, j] = True
                    order.append((i, j))
        stride //= 2
    return order
