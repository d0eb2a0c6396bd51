"""In-memory loss surfaces: loss and accuracy at θ + a·x (+ b·y) on a grid of (a, b).

For any model and data in a notebook (docs/metrics.md, "Loss surfaces"); no file is written.

``PointEvaluator`` is the one evaluation of a surface point; ``loss_surface`` here and the file-backed,
resumable ``flatness.landscape.compute.compute_surface`` both use it, so both give identical numbers.

2-D values are shaped (ny, nx) with ``[j, i]`` at (x_i, y_j): ``plt.contour(xs, ys, Z)`` draws them as
they are (matplotlib's and loss-landscape's ``meshgrid`` order).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.core.evaluation import evaluate, model_device, probe_for
from flatness.core.losses import LossFn, resolve_loss
from flatness.core.measured import unwrap_compiled
from flatness.core.validation import check_seed
from flatness.data.batches import OutputFn
from flatness.data.probe_data import ProbeData
from flatness.landscape.directions import as_directions, random_directions
from flatness.landscape.grid import MAX_GRID_POINTS, axis_coordinates
from flatness.landscape.weights import WeightSetter, kept_batchnorm_state, recalibrate_bn

PRECISIONS = ("fp32", "bf16")


class PointEvaluator:
    """Loss and accuracy at one surface point on each of several data sets.

    Args:
        model: the model (moved by ``setter``).
        setter: the ``WeightSetter`` of the surface's directions.
        data: the probe data sets, in the order results are wanted.
        loss_fn: ``loss_fn(outputs, targets)`` -> mean loss; cross-entropy when None.
        recalibration: batches to re-estimate BatchNorm statistics on at every point, or None
            (running statistics as stored).
        precision: ``"fp32"``, or ``"bf16"`` (bfloat16 autocast, ~3 significant digits of loss).
        output_fn: what of the model's output the loss sees (``flatness.data.batches.model_output``).
    """

    def __init__(
        self,
        model: nn.Module,
        setter: WeightSetter,
        data: Sequence[ProbeData],
        loss_fn: LossFn | str | None = None,
        recalibration: ProbeData | None = None,
        precision: str = "fp32",
        output_fn: OutputFn | None = None,
    ):
        if precision not in PRECISIONS:
            raise FlatnessError(f"unknown --precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        self.model, self.setter, self.data = model, setter, list(data)
        self.loss_fn, self.recalibration, self.precision = resolve_loss(loss_fn), recalibration, precision
        self.output_fn = output_fn
        self.device_type = model_device(model).type

    def __call__(self, coefficients: Sequence[float]) -> list[tuple[float, float | None]]:
        """Move to the point and evaluate.

        Args:
            coefficients: ``[a]`` or ``[a, b]``.

        Returns:
            ``(loss, accuracy or None)`` per data set, exactly as ``evaluate`` gives them.
        """
        self.setter.set(coefficients)
        if self.recalibration is not None:
            recalibrate_bn(self.model, self.recalibration)
        autocast = (
            torch.autocast(device_type=self.device_type, dtype=torch.bfloat16)
            if self.precision == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            # exactly `evaluate` (one sync per call), so the centre equals the model's plain numbers
            return [evaluate(self.model, d, self.loss_fn, self.output_fn) for d in self.data]


def surface_directions(
    model: nn.Module,
    directions: Any,
    count: int,
    seed: int = 0,
    norm: str = "filter",
    ignore: str = "biasbn",
    orthogonal: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """The directions of an in-memory surface.

    Args:
        model: the model at the centre.
        directions: ``"random"`` (Gaussian, normalised by ``norm``/``ignore``, drawn with ``seed``),
            or explicit directions (``flatness.landscape.directions.as_directions``).
        count: 1 (1D) or 2 (2D).
        seed: random directions' seed.
        norm: random directions' normalisation (filter, layer, none).
        ignore: what random directions do to biases and BatchNorm weights (biasbn: zero, none: copy).
        orthogonal: make the second random direction orthogonal to the first.

    Returns:
        ``count`` dicts state name -> tensor.
    """
    if orthogonal and count != 2:
        raise FlatnessError("orthogonal applies to 2D random directions only")
    if isinstance(directions, str):
        if directions.strip().lower() != "random":
            raise FlatnessError(f"directions must be 'random' or explicit direction dicts/tensors, got {directions!r}")
        return random_directions(
            model, count, norm=norm, ignore=ignore, seed=check_seed(seed, "seed"), orthogonal=orthogonal
        )
    if orthogonal:
        raise FlatnessError("orthogonal applies to random directions only; orthogonalise explicit ones yourself")
    return as_directions(model, directions, count)


# Eleven parameters: the first seven are the call a notebook makes; the rest are keyword-only options
# of random directions and BatchNorm, each with the command's default.
def loss_surface(
    model: nn.Module,
    data: Any,
    xs: Any,
    ys: Any = None,
    directions: Any = "random",
    seed: int = 0,
    loss_fn: LossFn | str | None = None,
    *,
    norm: str = "filter",
    ignore: str = "biasbn",
    orthogonal: bool = False,
    recalibrate_on: Any = None,
    output_fn: OutputFn | None = None,
) -> dict[str, Any]:
    """Loss (and accuracy) on a 1D or 2D grid around the model's weights, in memory.

    The model is moved in place and restored bit for bit afterwards (BatchNorm statistics too).

    Args:
        model: any ``nn.Module``; its current weights are the centre (0, 0).
        data: anything ``flatness.data.convert.as_probe_data`` accepts (fixed once).
        xs: ``"MIN:MAX:N"``, a ``(min, max, n)`` tuple, or a list/array/tensor of coordinates.
        ys: the same for a second direction (2D), or None (1D).
        directions: ``"random"`` (filter-normalised Gaussian, as ``flatness surface``) or explicit
            directions: a dict state name -> tensor or a flat tensor over the trainable parameters,
            one per axis (a list of two in 2D).
        seed: seed of random directions.
        loss_fn: ``loss_fn(outputs, targets)`` -> mean loss; cross-entropy when None.
        norm: random directions' normalisation (filter, layer, none).
        ignore: what random directions do to biases and BatchNorm weights (biasbn: zero, none: copy).
        orthogonal: make the second random direction orthogonal to the first.
        recalibrate_on: data to re-estimate BatchNorm statistics on at every point, or None.
        output_fn: what of the model's output the loss sees (``flatness.data.batches.model_output``).

    Returns:
        ``{"loss", "accuracy", "xcoordinates", "ycoordinates", "directions"}``: loss shaped (nx,) in
        1D or (ny, nx) in 2D with ``[j, i]`` at (x_i, y_j), so ``plt.contour(xs, ys, Z)`` draws it;
        accuracy (a fraction, as ``evaluate`` gives it) likewise, or None where the outputs are not
        class scores; ycoordinates None in 1D; the directions used (dicts state name -> tensor).

    Examples:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> x, t = torch.diag(torch.tensor([1.0, 2.0, 3.0])), torch.zeros(3, 1)
        >>> model = nn.Linear(3, 1, bias=False)  # mean squared error: H = 2/n xᵀx = diag(2/3, 8/3, 6)
        >>> from flatness import loss_surface
        >>> _ = nn.init.zeros_(model.weight)  # the centre: loss 0
        >>> surface = loss_surface(model, (x, t), xs=[-1.0, 0.0, 1.0], directions=torch.tensor([1.0, 0.0, 0.0]),
        ...                        loss_fn=F.mse_loss)
        >>> surface["loss"].round(4).tolist()  # a step of 1 along the first weight: (1 · 1)² / 3
        [0.3333, 0.0, 0.3333]
        >>> surface["accuracy"] is None  # regression outputs are not class scores
        True
    """
    xcoords = axis_coordinates(xs, "x")
    ycoords = axis_coordinates(ys, "y") if ys is not None else None
    ny = 1 if ycoords is None else len(ycoords)
    if len(xcoords) * ny > MAX_GRID_POINTS:
        raise FlatnessError(f"the grid has {len(xcoords) * ny} points; at most {MAX_GRID_POINTS} are allowed")
    model = unwrap_compiled(model)
    probe = probe_for(model, data)
    recal = probe_for(model, recalibrate_on) if recalibrate_on is not None else None
    dirs = surface_directions(model, directions, 1 if ycoords is None else 2, seed, norm, ignore, orthogonal)
    setter = WeightSetter(model, dirs)
    evaluate_point = PointEvaluator(model, setter, [probe], loss_fn, recal, output_fn=output_fn)
    loss = np.full((ny, len(xcoords)), np.nan)
    acc = np.full_like(loss, np.nan)
    has_accuracy = True
    with kept_batchnorm_state(model) if recal is not None else contextlib.nullcontext():
        try:
            for j in range(ny):
                for i, a in enumerate(xcoords):
                    ((loss[j, i], accuracy),) = evaluate_point(
                        [float(a)] + ([] if ycoords is None else [float(ycoords[j])])
                    )
                    has_accuracy = has_accuracy and accuracy is not None
                    acc[j, i] = np.nan if accuracy is None else accuracy
        finally:
            setter.restore()
    shape = (len(xcoords),) if ycoords is None else loss.shape
    return {
        "loss": loss.reshape(shape),
        "accuracy": acc.reshape(shape) if has_accuracy else None,
        "xcoordinates": xcoords,
        "ycoordinates": ycoords,
        "directions": dirs,
    }
