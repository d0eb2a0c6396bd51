"""The norm- and margin-based measures that flatness is compared against (Jiang et al. 2020).

Each is one number for a trained model; larger means "expected to generalise worse" for every one
except the margin (``EXPECTED_SIGN``):

* ``weight_norm``: ‖θ‖₂ over all trainable parameters;
* ``distance_from_init``: ‖θ − θ₀‖₂ (θ₀: the run's ``init.pt``);
* ``path_norm``: the path-ℓ2 norm sqrt(Σ over input-output paths of Π w²), computed exactly as
  sqrt(Σ f_{θ²}(1)): the network with every parameter squared applied to an all-ones input. Only for
  networks built from linear/convolution layers and ReLUs (no BatchNorm, no pooling, whose paths the
  formula does not describe); None otherwise;
* ``margin_p10``: the 10th percentile over the examples of the output margin
  f(x)_y − max_{j≠y} f(x)_j (eval mode);
* ``log_spectral_product``: Σ over weight layers of log σ_max(W), a convolution's kernel taken as the
  matrix (out channels) × (in channels · kernel size), the usual proxy for its operator norm.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from flatness.core.evaluation import eval_mode, model_device
from flatness.core.losses import accuracy_defined
from flatness.core.params import distance, weight_norm
from flatness.data.batches import forward
from flatness.data.convert import as_probe_data

MARGIN_PERCENTILE = 10
BASELINES = ("weight_norm", "distance_from_init", "path_norm", "margin_p10", "log_spectral_product")
#: +1: a larger value should mean a larger generalisation gap; -1: a smaller one (a wider margin is better).
EXPECTED_SIGN = {"weight_norm": 1, "distance_from_init": 1, "path_norm": 1, "margin_p10": -1, "log_spectral_product": 1}
_PATH_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Identity, nn.Dropout)
_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


def path_norm(model: nn.Module, example: torch.Tensor) -> float | None:
    """The path-ℓ2 norm, or None for a network outside its scope (see the module docstring).

    Args:
        model: the trained network (left unchanged).
        example: one input batch; only its shape (without the batch dimension) is used.

    Returns:
        sqrt(Σ f_{θ²}(1)), biases included as paths from a constant unit.
    """
    leaves = [m for m in model.modules() if not list(m.children())]
    if not leaves or any(not isinstance(m, _PATH_LAYERS) for m in leaves):
        return None
    squared = copy.deepcopy(model)
    with torch.no_grad():
        for p in squared.parameters():
            p.pow_(2)
        ones = torch.ones((1,) + tuple(example.shape[1:]), dtype=example.dtype, device=example.device)
        with eval_mode(squared):
            total = float(squared(ones).double().sum())
    return math.sqrt(total) if total >= 0 and math.isfinite(total) else None


@torch.no_grad()
def margin_percentile(
    model: nn.Module, data: Any, percentile: float = MARGIN_PERCENTILE, loss_fn: Any = None, output_fn: Any = None
) -> float | None:
    """A low percentile of the output margin f(x)_y − max_{j≠y} f(x)_j over ``data``, in eval mode.

    Args:
        model: a classifier (outputs [B, C], integer labels).
        data: any form ``as_probe_data`` accepts.
        percentile: which percentile (10 by default).
        loss_fn: the model's loss: a margin exists only where accuracy does
            (``flatness.core.losses.accuracy_defined``; None: cross-entropy).
        output_fn: what of the model's output is the class scores (``flatness.data.batches.model_output``).

    Returns:
        The percentile (numpy's linear interpolation), None when the outputs are not class scores
        (a regression loss, one output, float targets).
    """
    data = as_probe_data(data, device=model_device(model))
    margins = []
    with eval_mode(model):
        for x, y in data:
            out = forward(model, x, output_fn).double()
            if not accuracy_defined(out, y, loss_fn):
                return None
            true = out.gather(1, y[:, None]).squeeze(1)
            others = out.scatter(1, y[:, None], float("-inf")).max(1).values
            margins.append((true - others).cpu())

    return float(np.percentile(torch.cat(margins).numpy(), percentile))


def log_spectral_product(model: nn.Module) -> float | None:
    """Σ log σ_max over the Linear/Conv weights (the log of the product of their spectral norms).

    Args:
        model: the network.

    Returns:
        The sum, None when the model has no such layer.
    """
    total, layers = 0.0, 0
    for m in model.modules():
        if isinstance(m, _WEIGHT_LAYERS):
            w = m.weight.detach().double().reshape(m.weight.shape[0], -1)
            total += math.log(float(torch.linalg.matrix_norm(w, ord=2)))
            layers += 1
    return total if layers else None


def baseline_measures(
    model: nn.Module, init_model: nn.Module | None, data: Any, loss_fn: Any = None, output_fn: Any = None
) -> dict[str, float | None]:
    """Every baseline of one trained model.

    Args:
        model: the trained network.
        init_model: the same network at its initial weights (None: no distance from init).
        data: the data the margin is measured on (the training probe data).
        loss_fn: the model's loss (the margin is None unless it is a classification loss on class scores).
        output_fn: what of the model's output the loss sees.

    Returns:
        {name: value or None} for each name in ``BASELINES``.
    """
    data = as_probe_data(data, device=model_device(model))
    example = data.batches[0][0]
    return {
        "weight_norm": weight_norm(model),
        "distance_from_init": distance(model, init_model) if init_model is not None else None,
        "path_norm": path_norm(model, example) if isinstance(example, torch.Tensor) else None,
        "margin_p10": margin_percentile(model, data, loss_fn=loss_fn, output_fn=output_fn),
        "log_spectral_product": log_spectral_product(model),
    }
