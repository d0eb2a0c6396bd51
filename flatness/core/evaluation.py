"""Full-data loss and accuracy, and the one full-data gradient (docs/metrics.md, "Notation").

One loss convention everywhere in flatness: ``loss_fn(outputs, targets) -> mean loss of the batch``
(cross-entropy by default). Full-data values weight batch b by n_b / n, so they are exact means over
all n examples. Measurements run in eval mode through ``eval_mode``, which restores every module's
own mode afterwards (a model may mix train- and eval-mode modules on purpose).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from flatness.core.losses import (
    LossFn,
    accuracy_defined,
    check_loss_value,
    default_loss,
    resolve_loss,
    upcast_half,
)
from flatness.core.measured import model_float_dtype, unwrap_compiled
from flatness.core.params import flatten, unflatten
from flatness.data.batches import OutputFn, forward
from flatness.data.convert import as_probe_data


def probe_for(model: nn.Module, data: Any, batch_size: int | None = None):
    """``data`` as probe batches on the model's device, floating tensors in the model's dtype."""
    return as_probe_data(data, batch_size=batch_size, device=model_device(model), dtype=model_float_dtype(model))


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); the CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode inside the block; afterwards each module has its own mode back.

    Only the modules found in train mode are switched back: ``model.train()`` would also flip the
    ones the user had put in eval mode, and walking every module costs ~0.25 ms a call, 1.5% of a
    small model's surface point.
    """
    training = [m for m in model.modules() if m.training]
    if training:
        model.eval()
    try:
        yield model
    finally:
        for m in training:
            m.training = True


@torch.inference_mode()  # like no_grad, minus version counting: ~5% faster forwards on small CPU models
def evaluate(
    model: nn.Module, data: Any, loss_fn: LossFn | str | None = None, output_fn: OutputFn | None = None
) -> tuple[float, float | None]:
    """Mean loss and accuracy over every example of ``data``, in eval mode.

    Args:
        model: any ``nn.Module`` (a compiled one is run through its original module); its modes are
            restored afterwards.
        data: a ``ProbeData``, a DataLoader or iterable of ``(inputs, targets)`` batches (or Hugging
            Face dicts with ``"labels"``), an ``(x, y)`` pair of tensors or a Dataset
            (``flatness.data.convert.as_probe_data``); floating tensors are cast to the model's dtype.
        loss_fn: ``loss_fn(outputs, targets)`` -> the batch's mean loss, or a name of
            ``flatness.core.losses.LOSS_NAMES``; cross-entropy by default.
        output_fn: what of the model's output the loss sees (``flatness.data.batches.model_output``).

    Returns:
        ``(loss, accuracy)``: the exact mean loss over all n examples, and the fraction of
        examples whose largest output is the label (``None`` unless the loss is a classification
        loss on class scores: ``flatness.core.losses.accuracy_defined``).

    Examples:
        >>> import torch, torch.nn as nn
        >>> from flatness import evaluate
        >>> model = nn.Linear(3, 2)
        >>> _ = nn.init.zeros_(model.weight), nn.init.zeros_(model.bias)  # equal logits: loss log 2
        >>> x, y = torch.randn(8, 3), torch.tensor([0, 1] * 4)
        >>> loss, accuracy = evaluate(model, (x, y))
        >>> round(loss, 4), accuracy  # argmax of equal logits is class 0: half the labels
        (0.6931, 0.5)
    """
    model = unwrap_compiled(model)
    loss_fn = resolve_loss(loss_fn)
    data = probe_for(model, data)
    # Accumulate on the device (no sync per batch); float64 so the order of summation hardly matters.
    totals = torch.zeros(2, dtype=torch.float64, device=data.device)  # [loss sum, correct count]
    classification = True
    with eval_mode(model):
        for x, y in data:
            outputs = forward(model, x, output_fn)
            if loss_fn is default_loss:  # the sum itself, not n_b times a rounded mean: exact as before
                totals[0] += F.cross_entropy(upcast_half(outputs), y, reduction="sum").double()
            else:
                totals[0] += check_loss_value(loss_fn(outputs, y), loss_fn).double() * y.shape[0]
            classification = classification and accuracy_defined(outputs, y, loss_fn)
            if classification:
                totals[1] += (outputs.argmax(1) == y).sum().double()
    data.reduce_sum_(totals)
    loss_sum, correct = totals.tolist()
    return loss_sum / data.n, (correct / data.n if classification else None)


def full_gradient(
    model: nn.Module,
    data: Any,
    params: Sequence[torch.Tensor],
    loss_fn: LossFn | str | None = None,
    output_fn: OutputFn | None = None,
) -> tuple[float, list[torch.Tensor]]:
    """Mean loss and its gradient with respect to ``params`` over all of ``data``.

    One batch's graph is in memory at a time; batch means are weighted by n_b / n. A parameter the
    loss does not use gets a zero gradient. The model's mode is left as it is (callers choose).

    Args:
        model: the model; ``params`` are (some of) its parameters.
        data: any accepted data form (see ``evaluate``).
        params: the tensors to differentiate with respect to.
        loss_fn: ``loss_fn(outputs, targets)`` -> batch mean loss (or a loss name); cross-entropy by default.
        output_fn: what of the model's output the loss sees (``flatness.data.batches.model_output``).

    Returns:
        ``(loss, gradients)``, the gradients shaped like ``params``.
    """
    model = unwrap_compiled(model)
    data = probe_for(model, data)
    loss_fn = resolve_loss(loss_fn)
    grads = [torch.zeros_like(p) for p in params]
    loss_total = 0.0
    for w, (x, y) in zip(data.weights(), data):
        loss = check_loss_value(loss_fn(forward(model, x, output_fn), y), loss_fn) * w
        for g, gi in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
            if gi is not None:
                g.add_(gi)
        loss_total += float(loss.detach())
    if data.sharded:
        flat = torch.cat([flatten(grads), torch.tensor([loss_total], device=grads[0].device, dtype=grads[0].dtype)])
        data.reduce_sum_(flat)
        for g, part in zip(grads, unflatten(flat[:-1], grads)):
            g.copy_(part)
        loss_total = float(flat[-1])
    return loss_total, grads
