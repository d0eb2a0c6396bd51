"""Weights as one flat vector (docs/metrics.md: all trainable parameters in ``named_parameters`` order).

Every routine that moves in weight space (Hessian, sharpness, surfaces) goes through these helpers so
that "the parameter vector" means the same thing everywhere.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError


def named_trainable(model: nn.Module, names: Iterable[str] | None = None) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) for every trainable parameter, in ``named_parameters`` order.

    ``names`` restricts to a subset (per-layer spectra); unknown names raise ``KeyError``.
    """
    pairs = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if names is None:
        return pairs
    wanted = list(names)
    known = {n for n, _ in pairs}
    missing = [n for n in wanted if n not in known]
    if missing:
        raise KeyError(f"no trainable parameter named {missing[0]!r}")
    chosen = set(wanted)
    return [(n, p) for n, p in pairs if n in chosen]


def select_params(model: nn.Module, patterns: str | Sequence[str]) -> list[str]:
    """Names of the trainable parameters matching any of ``patterns``, in vector order.

    Patterns are shell globs such as ``layer4.*`` or ``features.0.weight``; a comma-separated string
    is split.

    A pattern that matches nothing is an error naming a few real parameter names, so a typo never
    silently yields the Hessian of some other block.
    """
    if isinstance(patterns, str):
        patterns = [p.strip() for p in patterns.split(",")]
    patterns = [p for p in patterns if p]
    if not patterns:
        raise FlatnessError("--params needs at least one parameter name or pattern, e.g. 'layer4.*'")
    names = [n for n, _ in named_trainable(model)]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            sample = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            raise FlatnessError(f"--params {pattern!r} matches no trainable parameter (names look like: {sample})")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def weight_norm(model: nn.Module) -> float:
    """‖θ‖₂ over all trainable parameters (float64)."""
    return float(get_flat_params(model).double().norm())


def distance(model: nn.Module, other: nn.Module) -> float:
    """‖θ − θ'‖₂ between two models of the same architecture (e.g. a checkpoint and its init)."""
    a, b = named_trainable(model), named_trainable(other)
    if [(n, tuple(p.shape)) for n, p in a] != [(n, tuple(p.shape)) for n, p in b]:
        raise FlatnessError("the two models have different parameters; is it the same architecture?")
    total = 0.0
    for (_, p), (_, q) in zip(a, b):
        total += float((p.detach().double().cpu() - q.detach().double().cpu()).pow(2).sum())
    return math.sqrt(total)


def num_params(model: nn.Module) -> int:
    """The number of trainable parameters, d."""
    return sum(p.numel() for _, p in named_trainable(model))


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The tensors joined into one flat vector, in order.

    Args:
        tensors: tensors of any shapes (same dtype and device).

    Returns:
        A new 1-D tensor of ``sum(t.numel())`` entries.
    """
    return torch.cat([t.reshape(-1) for t in tensors])


def segments(like: Sequence[torch.Tensor]) -> list[slice]:
    """Where each of ``like`` lies in the flat vector: one slice per tensor, in order.

    This is the one place that walks the flat-vector offsets; ``unflatten`` and the per-tensor
    balls of the sharpness metrics both use it.

    Args:
        like: the tensors the vector was made from (only their sizes matter).

    Returns:
        ``[slice(start, stop), ...]``, contiguous and covering ``sum(t.numel())`` entries.
    """
    out, offset = [], 0
    for t in like:
        n = t.numel()
        out.append(slice(offset, offset + n))
        offset += n
    return out


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split ``vector`` into tensors shaped like ``like`` (views, no copy).

    Args:
        vector: a 1-D tensor with exactly as many entries as ``like`` together.
        like: tensors giving the shapes, in order.

    Returns:
        Views of ``vector``, one per tensor of ``like``.

    Raises:
        ValueError: the sizes differ.
    """
    parts = segments(like)
    total = parts[-1].stop if parts else 0
    if total != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries, parameters have {total}")
    return [vector[part].view_as(t) for part, t in zip(parts, like)]


def get_flat_params(model: nn.Module) -> torch.Tensor:
    """θ: a copy of the trainable parameters as one flat vector."""
    return flatten([p.detach() for _, p in named_trainable(model)]).clone()


@torch.no_grad()
def set_flat_params_(model: nn.Module, vector: torch.Tensor) -> None:
    """Copy the flat ``vector`` into the trainable parameters (in place)."""
    params = [p for _, p in named_trainable(model)]
    for p, v in zip(params, unflatten(vector.to(params[0].device, params[0].dtype), params)):
        p.copy_(v)


@contextlib.contextmanager
def perturbed(model: nn.Module, delta: torch.Tensor):
    """Temporarily move the weights to θ + δ; restores θ bit for bit (a copy, not a subtraction)."""
    params = [p for _, p in named_trainable(model)]
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, d in zip(params, unflatten(delta.to(params[0].device, params[0].dtype), params)):
                p.add_(d)
        yield model
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
