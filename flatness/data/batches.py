"""What one batch is, and what of the model's output the loss sees.

A batch is ``(inputs, targets)``, or a dict holding a ``"labels"`` entry (the Hugging Face form: the
other entries are the model's keyword inputs; ``split_batch``). Inputs are a tensor, a tuple/list of
tensors (passed as positional arguments) or a dict of tensors (passed as keyword arguments); targets a
tensor whose first dimension counts the examples. Every routine that runs a model on data goes through
``forward`` (and ``map_tensors``), so every input form works everywhere.

``model_output`` is the one rule for what the loss sees: a tensor as it is; the first element of a
tuple/list; the ``logits`` entry of a dict or a transformers ``ModelOutput``; or whatever a user's
``output_fn(outputs)`` returns. Anything else is a one-line ``FlatnessError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError, ModelRaisedError

#: The key of a dict batch that holds the targets (the Hugging Face convention).
LABELS_KEY = "labels"
OutputFn = Callable[[Any], torch.Tensor]


def model_output(outputs: Any, output_fn: OutputFn | None = None) -> torch.Tensor:
    """The tensor the loss sees of what the model returned.

    Args:
        outputs: the model's return value.
        output_fn: ``output_fn(outputs) -> tensor``, the user's own choice (e.g. ``lambda o: o.start_logits``).

    Returns:
        ``outputs`` when a tensor; the first element of a tuple/list; ``outputs["logits"]`` of a
        mapping (a dict, a transformers ``ModelOutput``); or ``output_fn(outputs)``.

    Raises:
        FlatnessError: none of these gives a tensor.
    """
    if output_fn is not None:
        chosen = output_fn(outputs)
        if not isinstance(chosen, torch.Tensor):
            raise FlatnessError(f"output_fn returned {type(chosen).__name__}, not a tensor")
        return chosen
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), torch.Tensor):
        return outputs["logits"]
    raise FlatnessError(
        f"the model returned {_describe_output(outputs)}, which has no tensor to take the loss of; pass "
        "output_fn=... (a callable: model output -> tensor; --output on the command line)"
    )


def _describe_output(outputs: Any) -> str:
    if isinstance(outputs, Mapping):
        return f"a {type(outputs).__name__} with keys {sorted(map(str, outputs))} and no 'logits'"
    if isinstance(outputs, (tuple, list)):
        first = type(outputs[0]).__name__ if outputs else "nothing"
        return f"a {type(outputs).__name__} whose first element is {first}"
    return f"a {type(outputs).__name__}"


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(inputs)``, ``model(*inputs)`` or ``model(**inputs)`` by the form of ``inputs`` (raw output).

    Raises:
        ModelRaisedError: the model's forward raised (a user's model is user code: its error is one line
            naming the model, not a flatness bug). Running out of memory and flatness's own errors pass
            through as they are.
    """
    try:
        if isinstance(inputs, dict):
            return model(**inputs)
        if isinstance(inputs, (tuple, list)):
            return model(*inputs)
        return model(inputs)
    except (FlatnessError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - whatever a user's forward raises
        raise ModelRaisedError(type(model).__name__, err) from err


def forward(model: nn.Module, inputs: Any, output_fn: OutputFn | None = None) -> torch.Tensor:
    """The tensor the loss sees of ``model`` on ``inputs`` (``call_model`` then ``model_output``)."""
    return model_output(call_model(model, inputs), output_fn)


def split_batch(batch: Any) -> Any:
    """A Hugging Face dict batch ``{..., "labels": y}`` as ``(inputs without labels, y)``; else ``batch``."""
    if isinstance(batch, Mapping) and LABELS_KEY in batch:
        inputs = {k: v for k, v in batch.items() if k != LABELS_KEY}
        return inputs, batch[LABELS_KEY]
    return batch


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to every tensor of a tensor, tuple/list or dict of them (structure kept)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def move_to(obj: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """The same batch part on ``device`` (tensors only; structure kept); floating tensors in ``dtype`` when given."""

    def move(t: torch.Tensor) -> torch.Tensor:
        if dtype is not None and t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device)

    return map_tensors(obj, move)


def is_inputs(obj: Any) -> bool:
    """Whether ``obj`` has a form a batch's inputs may take."""
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, dict):
        return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj)
    return False
