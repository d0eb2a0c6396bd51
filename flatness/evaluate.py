"""Full-data loss and accuracy on the probe data (model in eval mode, exact mean over all n)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .probe_data import ProbeData


@torch.no_grad()
def evaluate(model: nn.Module, data: ProbeData) -> Tuple[float, float]:
    """(mean cross-entropy, accuracy) over every probe example, in eval mode; restores the mode after."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = 0
    try:
        for x, y in data:
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double().cpu()
            correct += int((logits.argmax(1) == y).sum())
    finally:
        model.train(was_training)
    return float(loss_sum) / data.n, correct / data.n


def full_loss(model: nn.Module, data: ProbeData, create_graph: bool = False) -> torch.Tensor:
    """The mean loss over all probe data as a differentiable tensor (sums one batch graph at a time
    only when the caller backpropagates per batch; use ``full_gradient`` for large data)."""
    total = 0.0
    for w, (x, y) in zip(data.weights(), data):
        total = total + w * F.cross_entropy(model(x), y)
    return total


def full_gradient(model: nn.Module, data: ProbeData, params) -> Tuple[float, list]:
    """(mean loss, gradient w.r.t. ``params``) over all probe data, one batch graph in memory at a time."""
    grads = [torch.zeros_like(p) for p in params]
    loss_total = 0.0
    for w, (x, y) in zip(data.weights(), data):
        loss = F.cross_entropy(model(x), y) * w
        for g, gi in zip(grads, torch.autograd.grad(loss, params)):
            g.add_(gi)
        loss_total += float(loss)
    return loss_total, grads
