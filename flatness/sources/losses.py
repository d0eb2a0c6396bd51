"""``--loss`` and ``--output`` turned into the library's ``loss_fn`` and ``output_fn``: ONE place.

What a command line (or a run's record) names, for every command.

A loss is named (``ce``, ``mse``, ``bce``, ``nll``, ``l1``, ``huber``: ``flatness.core.losses``) or is
a reference ``package.module:callable`` / ``file.py:callable`` naming either the loss function
``loss_fn(outputs, targets) -> batch mean`` or an ``nn.Module`` loss class (built without arguments).
An output is a key (``logits``, ``start_logits``: the entry of a dict or ``ModelOutput`` the loss
sees, or an attribute of the output) or a reference to ``output_fn(outputs) -> tensor``.

Security, as for ``--model``: a run records the spec it was trained with; a name or key is reused by
later commands on that run, a reference is code and must be named again (``sources.loading``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.core.losses import LOSS_NAMES, check_loss_fn, named_loss
from flatness.models.references import call_user, is_reference, resolve_callable


def check_loss_spec(spec: str | None) -> str | None:
    """``spec`` canonicalised (a name in lower case) when it is a loss name or a reference; else FlatnessError."""
    if spec is None:
        return None
    if not isinstance(spec, str) or not spec.strip():
        raise FlatnessError(f"--loss takes a name or a reference, got {spec!r}")
    spec = spec.strip()
    if is_reference(spec):
        return spec
    if spec.lower() not in LOSS_NAMES:
        raise FlatnessError(
            f"unknown loss {spec!r}; use one of {', '.join(LOSS_NAMES)}, package.module:callable or file.py:callable"
        )
    return spec.lower()


def check_output_spec(spec: str | None) -> str | None:
    """``spec`` when it is a key (an identifier) or a reference; else FlatnessError."""
    if spec is None:
        return None
    if not isinstance(spec, str) or not spec.strip():
        raise FlatnessError(f"--output takes a key or a reference, got {spec!r}")
    spec = spec.strip()
    if not is_reference(spec) and not spec.isidentifier():
        raise FlatnessError(
            f"--output {spec!r} is neither a key of the model's output (e.g. logits) nor "
            "package.module:callable / file.py:callable"
        )
    return spec


def loss_fn_for(spec: str | None):
    """The ``loss_fn`` a ``--loss`` spec names (None: the default, cross-entropy).

    Args:
        spec: a loss name, a reference, or None.

    Returns:
        The loss function (a reference's loss checked for a mean reduction), or None for the default.

    Raises:
        FlatnessError: an unknown name, a reference that cannot be imported, a loss class that cannot
            be built without arguments, or a loss that declares a reduction other than the mean.
    """
    spec = check_loss_spec(spec)
    if spec is None:
        return None
    if not is_reference(spec):
        return named_loss(spec)
    target, _ = resolve_callable(spec, "loss")
    if isinstance(target, type) and issubclass(target, nn.Module):
        # user code: whatever it raises, SystemExit included, is one line naming it (references.call_user)
        target = call_user(target, f"--loss {spec}")
    check_loss_fn(target)
    return target


class KeyOutput:
    """``output_fn`` taking one entry of the model's output.

    ``outputs[key]`` of a dict or ``ModelOutput``, else the attribute ``key``.
    """

    def __init__(self, key: str):
        self.key = key

    def __call__(self, outputs: Any) -> torch.Tensor:
        """The entry ``key`` of ``outputs``; FlatnessError naming the keys there are when it has none."""
        if isinstance(outputs, Mapping):
            if self.key in outputs:
                return outputs[self.key]
        elif hasattr(outputs, self.key):
            return getattr(outputs, self.key)
        keys = f"keys {', '.join(sorted(map(str, outputs)))}" if isinstance(outputs, Mapping) else "no such attribute"
        raise FlatnessError(f"--output {self.key}: the model's output ({type(outputs).__name__}) has {keys}")

    def __repr__(self) -> str:
        return f"KeyOutput({self.key!r})"


def output_fn_for(spec: str | None):
    """The ``output_fn`` an ``--output`` spec names (None: flatness's rule, ``flatness.data.batches.model_output``).

    Args:
        spec: a key, a reference, or None.

    Returns:
        ``KeyOutput(key)``, the referenced callable, or None.
    """
    spec = check_output_spec(spec)
    if spec is None:
        return None
    if not is_reference(spec):
        return KeyOutput(spec)
    target, _ = resolve_callable(spec, "output")
    return target


def config_losses(config: Any) -> tuple[Any, Any]:
    """``(loss_fn, output_fn)`` of a training config's ``loss`` and ``output`` (None: the defaults).

    The config comes from a command line that named them (``build_config``, or ``resume_config``,
    which asks again for recorded code).
    """
    return loss_fn_for(getattr(config, "loss", None)), output_fn_for(getattr(config, "output", None))
