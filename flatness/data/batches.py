"""What one batch is: ``(inputs, targets)``.

Inputs are a tensor, a tuple/list of tensors (passed as positional arguments) or a dict of tensors
(passed as keyword arguments); targets a tensor whose first dimension counts the examples. Every
routine that runs a model on data goes through ``forward`` and ``map_tensors``, so the three input
forms work everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn


def forward(model: nn.Module, inputs: Any) -> torch.Tensor:
    """``model(inputs)``, ``model(*inputs)`` or ``model(**inputs)`` by the form of ``inputs``."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to every tensor of a tensor, tuple/list or dict of them (structure kept)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def move_to(obj: Any, device: torch.device) -> Any:
    """The same batch part on ``device`` (tensors only; structure kept)."""
    return map_tensors(obj, lambda t: t.to(device))


def is_inputs(obj: Any) -> bool:
    """Whether ``obj`` has a form a batch's inputs may take."""
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, dict):
        return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj)
    return False
