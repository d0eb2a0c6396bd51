"""The loss rules: which losses flatness knows by name, and what a loss must return.

One convention everywhere (docs/models.md, "Losses"): ``loss_fn(outputs, targets)`` returns the
**mean** loss of the batch as a scalar tensor; full-data values weight batch b by n_b / n. A loss that
sums (``reduction="sum"``) would scale every eigenvalue by the batch size, and one that returns a
vector (``reduction="none"``) has no Hessian: both are refused in one line, the first before any work
(``check_loss_fn``), the second at the first batch (``check_loss_value``).

Named losses (``LOSS_NAMES``, ``named_loss``): ``ce`` (cross-entropy on class scores, the default),
``nll`` (negative log-likelihood of log-probabilities), ``bce`` (binary cross-entropy on logits),
``mse``, ``l1`` and ``huber`` (regression). They upcast only half-precision outputs (float16,
bfloat16) to float32, so a float64 model is measured in float64; regression and ``bce`` targets are
cast to the outputs' dtype, and a ``[B, 1]`` output meets ``[B]`` targets by reshaping the targets
(never by broadcasting, which would silently compare every output with every target).

Accuracy (``accuracy_defined``) exists only for a classification loss (``CLASSIFICATION_LOSSES``,
``nn.CrossEntropyLoss``/``nn.NLLLoss``, ``F.cross_entropy``/``F.nll_loss``) or a loss of unknown kind
whose outputs are class scores ``[B, C >= 2]`` against integer labels ``[B]``; everything that
depends on it (accuracy, the PAC-Bayes error) is then absent or defined on the loss, never a number
computed from an argmax of a regression output.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from flatness.core.errors import FlatnessError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LOSS_NAMES = ("ce", "mse", "bce", "nll", "l1", "huber")
#: The named losses whose outputs are class scores, so that accuracy (argmax == label) is defined.
CLASSIFICATION_LOSSES = ("ce", "nll")
#: ``reduction`` values that give the batch mean (``batchmean``: KLDivLoss's mean over examples).
MEAN_REDUCTIONS = ("mean", "batchmean")

_HALF = (torch.float16, torch.bfloat16)
_CLASSIFICATION_CALLABLES = (F.cross_entropy, F.nll_loss)
_REGRESSION_CALLABLES = (
    F.mse_loss,
    F.l1_loss,
    F.huber_loss,
    F.smooth_l1_loss,
    F.binary_cross_entropy,
    F.binary_cross_entropy_with_logits,
)
_CLASSIFICATION_MODULES = (nn.CrossEntropyLoss, nn.NLLLoss)
_REGRESSION_MODULES = (nn.MSELoss, nn.L1Loss, nn.HuberLoss, nn.SmoothL1Loss, nn.BCELoss, nn.BCEWithLogitsLoss)


def upcast_half(outputs: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 outputs as float32 (the loss of a half model in a sane precision); others as they are."""
    return outputs.float() if outputs.dtype in _HALF else outputs


def _regression_targets(name: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``targets`` in the outputs' dtype and shape; a shape that only broadcasts is a FlatnessError."""
    targets = targets.to(outputs.dtype)
    if targets.shape != outputs.shape:
        if targets.numel() != outputs.numel() or targets.shape[:1] != outputs.shape[:1]:
            raise FlatnessError(
                f"loss {name}: the model's outputs have shape {tuple(outputs.shape)} but the targets "
                f"{tuple(targets.shape)}; they must hold one target per output"
            )
        targets = targets.reshape(outputs.shape)
    return targets


class NamedLoss:
    """One of ``LOSS_NAMES`` as a mean-reduced ``loss_fn(outputs, targets)``.

    ``classification`` says whether accuracy is defined for it; ``reduction`` is always ``"mean"``.
    """

    def __init__(self, name: str):
        self.name = name
        self.classification = name in CLASSIFICATION_LOSSES
        self.reduction = "mean"

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss (a scalar tensor; float32 for half-precision outputs)."""
        outputs = upcast_half(outputs)
        if self.name == "ce":
            return F.cross_entropy(outputs, targets)
        if self.name == "nll":
            return F.nll_loss(outputs, targets)
        targets = _regression_targets(self.name, outputs, targets)
        if self.name == "mse":
            return F.mse_loss(outputs, targets)
        if self.name == "l1":
            return F.l1_loss(outputs, targets)
        if self.name == "huber":
            return F.huber_loss(outputs, targets)
        return F.binary_cross_entropy_with_logits(outputs, targets)

    def __repr__(self) -> str:
        return f"named_loss({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NamedLoss) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("NamedLoss", self.name))


def named_loss(name: str) -> NamedLoss:
    """The loss called ``name`` (one of ``LOSS_NAMES``), mean-reduced.

    Args:
        name: ``ce``, ``mse``, ``bce``, ``nll``, ``l1`` or ``huber`` (case-insensitive).

    Returns:
        A ``loss_fn(outputs, targets)`` returning the batch mean as a scalar tensor.

    Raises:
        FlatnessError: an unknown name.
    """
    key = str(name).strip().lower()
    if key not in LOSS_NAMES:
        raise FlatnessError(f"unknown loss {name!r}; use one of {', '.join(LOSS_NAMES)} or a callable")
    return NamedLoss(key)


#: The loss every routine uses unless given another: mean cross-entropy.
default_loss = named_loss("ce")


def _reduction(loss_fn: Any) -> Any:
    """The ``reduction`` a loss declares (an ``nn.*Loss`` attribute or a ``functools.partial`` keyword)."""
    if isinstance(loss_fn, functools.partial):
        return loss_fn.keywords.get("reduction", _reduction(loss_fn.func))
    return getattr(loss_fn, "reduction", "mean")


def check_loss_fn(loss_fn: Any) -> None:
    """Refuse, before any work, a loss that declares a reduction other than the mean.

    Raises:
        FlatnessError: ``reduction`` is ``"sum"``, ``"none"`` or anything but a mean.
    """
    reduction = _reduction(loss_fn)
    if reduction not in MEAN_REDUCTIONS:
        raise FlatnessError(
            f"the loss {_describe(loss_fn)} has reduction={reduction!r}; flatness needs the batch mean "
            "(reduction='mean'): a sum scales every value by the batch size and 'none' has no Hessian"
        )


def resolve_loss(loss_fn: LossFn | str | None) -> LossFn:
    """The loss to use: the default for None, ``named_loss`` for a name, else ``loss_fn`` once checked."""
    if loss_fn is None:
        return default_loss
    if isinstance(loss_fn, str):
        return named_loss(loss_fn)
    if not callable(loss_fn):
        raise FlatnessError(f"loss_fn must be a callable or one of {', '.join(LOSS_NAMES)}, got {loss_fn!r}")
    check_loss_fn(loss_fn)
    return loss_fn


def check_loss_value(value: Any, loss_fn: Any) -> torch.Tensor:
    """``value`` (what ``loss_fn`` returned for one batch) when it is a scalar tensor; else a FlatnessError.

    Args:
        value: the loss's return value.
        loss_fn: the loss (named in the message).

    Returns:
        ``value`` itself.
    """
    if not isinstance(value, torch.Tensor):
        raise FlatnessError(
            f"the loss {_describe(loss_fn)} returned {type(value).__name__}, not a tensor; it must return "
            "the batch's mean loss as a scalar tensor"
        )
    if value.numel() != 1:
        raise FlatnessError(
            f"the loss {_describe(loss_fn)} returned a tensor of shape {tuple(value.shape)}; it must return "
            "the batch's mean loss as a scalar (reduction='mean')"
        )
    return value.reshape(())


def is_classification_loss(loss_fn: Any) -> bool | None:
    """True for a known classification loss, False for a known regression one, None when unknown."""
    if loss_fn is None:
        return True
    if isinstance(loss_fn, str):
        return named_loss(loss_fn).classification
    if isinstance(loss_fn, functools.partial):
        return is_classification_loss(loss_fn.func)
    known = getattr(loss_fn, "classification", None)
    if isinstance(known, bool):
        return known
    if isinstance(loss_fn, _CLASSIFICATION_MODULES) or loss_fn in _CLASSIFICATION_CALLABLES:
        return True
    if isinstance(loss_fn, _REGRESSION_MODULES) or loss_fn in _REGRESSION_CALLABLES:
        return False
    return None


def class_scores(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """Whether ``outputs`` are class scores ``[B, C >= 2]`` against integer labels ``[B]``."""
    return (
        outputs.dim() == 2
        and outputs.shape[1] >= 2
        and targets.dim() == 1
        and not targets.is_floating_point()
        and not targets.is_complex()
    )


def accuracy_defined(outputs: torch.Tensor, targets: torch.Tensor, loss_fn: Any) -> bool:
    """Whether accuracy (argmax == label) means something for this batch under ``loss_fn``."""
    return is_classification_loss(loss_fn) is not False and class_scores(outputs, targets)


def _describe(loss_fn: Any) -> str:
    if isinstance(loss_fn, NamedLoss):
        return loss_fn.name
    if isinstance(loss_fn, nn.Module):
        return type(loss_fn).__name__
    if isinstance(loss_fn, functools.partial):
        return f"partial({_describe(loss_fn.func)})"
    return getattr(loss_fn, "__qualname__", None) or type(loss_fn).__name__


__all__ = [
    "CLASSIFICATION_LOSSES",
    "LOSS_NAMES",
    "LossFn",
    "NamedLoss",
    "accuracy_defined",
    "check_loss_fn",
    "check_loss_value",
    "default_loss",
    "is_classification_loss",
    "named_loss",
    "resolve_loss",
    "upcast_half",
]
