"""What every figure shares: the figure canvas, atomic saving, titles, labels, colour limits and levels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from flatness.core.errors import FlatnessError
from flatness.core.fileio import atomic_write

FORMATS = ("png", "pdf", "svg")
VALUES = ("train_loss", "test_loss", "train_acc", "test_acc")
DPI = 130


def new_figure(figsize=(6.4, 4.8)):
    """A matplotlib Figure on the Agg canvas (no display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - heavy; only drawing needs it
    from matplotlib.figure import Figure  # noqa: PLC0415 - matplotlib is heavy; only drawing needs it

    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str, force: bool = False) -> str:
    """Write ``fig`` atomically in the format of ``path``'s extension; refuse to replace without force."""
    if os.path.exists(path) and not force:
        raise FlatnessError(f"{path} exists; pass --force to replace it")
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise FlatnessError(f"unknown figure format {fmt!r}: use one of {', '.join(FORMATS)}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, bbox_inches="tight"))
    return path


def finite_values(values: np.ndarray) -> np.ndarray:
    """The finite entries of ``values``, flattened."""
    values = np.asarray(values, dtype=float).ravel()
    return values[np.isfinite(values)]


def surface_label(surf: dict[str, Any]) -> str:
    """A short legend label: the checkpoint's run (method, seed) or the file name."""
    attrs = surf.get("attrs") or {}
    for key in ("label",):
        if attrs.get(key):
            return str(attrs[key])
    ckpt = attrs.get("checkpoint") or attrs.get("checkpoint_path")
    if ckpt:
        parent = os.path.basename(os.path.dirname(str(ckpt)))
        return parent or os.path.basename(str(ckpt))
    return os.path.splitext(os.path.basename(surf.get("path", "surface")))[0]


def surface_title(surf: dict[str, Any], what: str = "") -> str:
    """What was plotted: checkpoint, direction (+normalisation), split, samples."""
    attrs = surf.get("attrs") or {}
    parts = []
    ckpt = attrs.get("checkpoint") or attrs.get("checkpoint_path")
    if ckpt:
        ckpt = str(ckpt)
        parent = os.path.basename(os.path.dirname(ckpt))
        parts.append(f"{parent}/{os.path.basename(ckpt)}" if parent else os.path.basename(ckpt))
    else:
        parts.append(os.path.basename(surf.get("path", "")))
    direction = attrs.get("direction")
    if direction:
        direction = str(direction)
        kind, _, target = direction.partition(":")
        target = target or str(attrs.get("direction_source") or "")
        if kind in ("interp", "pca") and target:
            direction = f"{kind} → {os.path.basename(os.path.dirname(target)) or os.path.basename(target)}"
        norm = attrs.get("norm")
        if norm and str(direction).startswith("random"):
            direction += f", {norm}-normalised"
        parts.append(f"direction: {direction}")
    split = attrs.get("split")
    samples = attrs.get("samples")
    if split == "both" and attrs.get("train_samples") is not None and attrs.get("test_samples") is not None:
        samples = f"{attrs['train_samples']} + {attrs['test_samples']}"  # the examples used of each split
    if split:
        split = "train + test" if split == "both" else split
        parts.append(f"split: {split}" + (f" ({samples} samples)" if samples not in (None, "", 0) else ""))
    title = " | ".join(parts)
    return f"{what}\n{title}" if what else title


def axis_name(surf: dict[str, Any], axis: str) -> str:
    """The label of axis ``"x"`` or ``"y"`` for the surface's kind of direction."""
    attrs = surf.get("attrs") or {}
    direction = str(attrs.get("direction") or "")
    if direction.startswith("interp"):
        return "α (0 = the checkpoint, 1 = the interpolation target)" if axis == "x" else "β"
    if direction.startswith("pca"):
        return f"PC{1 if axis == 'x' else 2} coordinate"
    if direction.startswith("eigen"):
        return f"step along eigenvector {1 if axis == 'x' else 2}"
    return f"step along direction {'δ' if axis == 'x' else 'η'}" + (
        " (filter-normalised units)" if str(attrs.get("norm", "filter")) == "filter" else ""
    )


def common_limits(
    surfaces: Sequence[dict[str, Any]], value: str, vmin: float | None = None, vmax: float | None = None
) -> tuple[float, float]:
    """Colour limits shared by several surfaces: the given ones, else the min and max over all of them."""
    pool = np.concatenate([finite_values(s[value]) for s in surfaces if s.get(value) is not None] or [np.array([])])
    lo = float(vmin) if vmin is not None else (float(pool.min()) if pool.size else 0.0)
    hi = float(vmax) if vmax is not None else (float(pool.max()) if pool.size else 1.0)
    if not hi > lo:
        hi = lo + (abs(lo) * 1e-3 or 1e-3)
    return lo, hi


def use_log(value: str, lo: float, hi: float, log: bool | None) -> bool:
    """Log colours? As asked (when the values are positive), else for a loss spanning over 20x."""
    if log is not None:
        return bool(log) and lo > 0
    return value.endswith("loss") and lo > 0 and hi / lo > 20


def contour_levels(lo: float, hi: float, logscale: bool, n: int = 20) -> np.ndarray:
    """``n`` contour levels from ``lo`` to ``hi``, evenly spaced (geometrically on a log scale)."""
    if logscale:
        return np.geomspace(lo, hi, n)
    return np.linspace(lo, hi, n)


LOSS_WORDS = {
    "ce": "mean cross-entropy",
    "nll": "mean NLL",
    "mse": "mean squared error",
    "bce": "mean binary cross-entropy",
    "l1": "mean absolute error",
    "huber": "mean Huber loss",
}


def loss_words(loss: str | None) -> str:
    """What a loss is, for labels: ``None`` / ``""`` (the default) -> "mean cross-entropy", else its name."""
    return LOSS_WORDS.get(loss or "ce", str(loss))


def surface_loss(surf: dict[str, Any]) -> str | None:
    """The loss a loaded surface records (None: cross-entropy, and files written before it was recorded)."""
    return (surf.get("attrs") or {}).get("loss") or None


def value_name(value: str, loss: str | None = None) -> str:
    """``"train_loss"`` -> ``"train loss (mean cross-entropy)"`` (the ``loss`` a surface records), for labels."""
    split, _, what = value.partition("_")
    return f"{split} {f'loss ({loss_words(loss)})' if what == 'loss' else 'accuracy'}"


def pick_value(surf: dict[str, Any], value: str | None) -> str:
    """The value to draw: ``value`` if the surface has it (else an error), or its train/test loss."""
    if value:
        if surf.get(value) is None:
            raise FlatnessError(
                f"{surf['path']} has no '{value}' (it has: "
                f"{', '.join(v for v in VALUES if surf.get(v) is not None) or 'no values'})"
            )
        return value
    for candidate in ("train_loss", "test_loss"):
        if surf.get(candidate) is not None:
            return candidate
    raise FlatnessError(f"{surf['path']} holds no loss values")
