"""Moving a model to a surface point in place, and BatchNorm recalibration there.

The weights are set from a saved copy at every point (one ``copy_`` and one ``add_`` per tensor and
direction; the model is never rebuilt), so the centre is the original weights bit for bit.

BatchNorm recalibration re-estimates the running statistics at a point on fixed training batches:
the statistics are reset, momentum set to None (a cumulative average over the batches), the BN layers
run forward in train mode (everything else in eval mode), then the modes are restored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.core.evaluation import eval_mode
from flatness.data.batches import forward


class WeightSetter:
    """Moves a model to θ + a·x + b·y in place.

    One ``copy_`` plus one ``add_`` per direction for each tensor that a direction touches
    (parameters; BN buffers too where the direction has them).

    Args:
        model: the model; its current state is the centre θ.
        directions: one or two dicts state name -> tensor.
        end: for an interpolation (one direction), the end point's state: points are then exact lerps.
    """

    def __init__(
        self,
        model: nn.Module,
        directions: Sequence[dict[str, torch.Tensor]],
        end: dict[str, torch.Tensor] | None = None,
    ):
        state = model.state_dict(keep_vars=True)
        if end is not None and len(directions) != 1:
            raise ValueError("an end point (interpolation) goes with exactly one direction")
        self.end = end
        names = []
        for d in directions:
            for name in d:
                if name not in state:
                    raise FlatnessError(f"the direction has '{name}', which the model does not")
                if name not in names:
                    names.append(name)
        self.slots = [self._slot(state[name], name, directions, end) for name in names]
        self.names = names

    @staticmethod
    def _slot(live, name, directions, end):
        target = live.data if isinstance(live, nn.Parameter) else live
        if not target.is_floating_point():
            raise FlatnessError(f"the direction moves '{name}', which is not a floating-point tensor")
        parts = []
        for d in directions:
            t = d.get(name)
            if t is not None:
                if tuple(t.shape) != tuple(target.shape):
                    raise FlatnessError(
                        f"the direction's '{name}' has shape {tuple(t.shape)}, the model's {tuple(target.shape)}"
                    )
                t = t.to(device=target.device, dtype=target.dtype)
            parts.append(t)
        if end is not None:
            # interpolation: lerp between the two exact end points, so that 0 is A and 1 is B bit
            # for bit (torch.lerp is start + w·(end − start) below w = 0.5, end − (1 − w)·(end − start)
            # from there, with the same end − start as the stored direction)
            parts = [end[name].detach().to(device=target.device, dtype=target.dtype)]
        return target, target.detach().clone(), parts

    @torch.no_grad()
    def set(self, coefficients: Sequence[float]) -> None:
        """Move to θ + Σ coefficients[k]·direction[k] (for an interpolation: lerp(θ_A, θ_B, a)).

        Args:
            coefficients: ``[a]`` or ``[a, b]``.
        """
        if self.end is not None:
            weight = float(coefficients[0])
            for target, base, (end,) in self.slots:
                target.copy_(base)
                if weight != 0.0:
                    target.lerp_(end, weight)
            return
        for target, base, parts in self.slots:
            target.copy_(base)
            for coef, d in zip(coefficients, parts, strict=False):  # restore() passes two for one
                if d is not None and coef != 0.0:
                    target.add_(d, alpha=float(coef))

    def restore(self) -> None:
        """Back to the centre θ, bit for bit (a copy of the saved weights)."""
        self.set([0.0] * 2)


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm layers (any dimension), in ``modules()`` order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches) -> None:
    """Re-estimate every BatchNorm's running statistics on ``batches``.

    The statistics are reset and momentum set to None (a cumulative average over the batches), then
    the BN layers alone run forward in train mode (dropout etc. stay in eval). Only BN buffers
    change; every module's mode is restored afterwards (``eval_mode``).

    Args:
        model: the model.
        batches: an iterable of ``(inputs, targets)`` batches (e.g. a ``ProbeData``).
    """
    layers = batchnorm_layers(model)
    if not layers:
        return
    with eval_mode(model):
        saved = []
        for m in layers:
            saved.append(m.momentum)
            m.reset_running_stats()
            m.momentum = None
            m.train()
        try:
            for x, _ in batches:
                forward(model, x)
        finally:
            for m, momentum in zip(layers, saved, strict=True):
                m.momentum = momentum
                m.eval()


@contextlib.contextmanager
def kept_batchnorm_state(model: nn.Module) -> Iterator[None]:
    """Inside the block BatchNorm buffers may change (recalibration); afterwards they are restored."""
    saved = [(t, t.detach().clone()) for m in batchnorm_layers(model) for t in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, copy in saved:
                t.copy_(copy)
