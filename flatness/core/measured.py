"""The module that is actually measured, and the dtype the data must have for it.

* A ``torch.compile``d model (``OptimizedModule``) is measured through its original module
  (``_orig_mod``): the same parameters and the same function, so the same numbers as eager, and
  compiled graphs have no double backward.
* A float16/bfloat16 model has too few digits for second-order work (an HVP in bfloat16 keeps ~3
  significant digits): the Hessian and the sharpness metrics measure a float32 copy, with a warning,
  and ``measure`` records the note in its result (``precision_note``). First-order evaluation (loss,
  accuracy, surfaces) runs the model in its own precision, the loss upcast to float32.
* Data follow the model (``model_float_dtype``): floating inputs and targets are cast to the model's
  floating dtype; integer token ids and labels are never touched. A model whose parameters mix float
  dtypes is refused in one line: it has no one dtype for its flat parameter vector.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError

HALF_DTYPES = (torch.float16, torch.bfloat16)


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The eager module behind a ``torch.compile``d one (its ``_orig_mod``); any other module as it is."""
    while isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = model._orig_mod
    return model


def model_float_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's parameters (None: it has no floating parameters).

    Raises:
        FlatnessError: the parameters mix floating dtypes.
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) > 1:
        names = ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))
        raise FlatnessError(
            f"the model's parameters mix floating dtypes ({names}); cast it to one dtype, e.g. model.double()"
        )
    return next(iter(dtypes), None)


def second_order_model(model: nn.Module) -> tuple[nn.Module, str | None]:
    """The module second-order work runs on, and a note when it is a float32 copy of a half model.

    Args:
        model: any module (a compiled one is unwrapped).

    Returns:
        ``(module, note)``: the module itself and None, or a float32 copy of a float16/bfloat16 model
        (the original is never changed) and a one-line note, also issued as a warning.
    """
    model = unwrap_compiled(model)
    dtype = model_float_dtype(model)
    if dtype not in HALF_DTYPES:
        return model, None
    note = (
        f"the model is {str(dtype).replace('torch.', '')}: its Hessian and sharpness are measured on a "
        "float32 copy of its weights"
    )
    warnings.warn(note, stacklevel=3)
    return copy.deepcopy(model).float(), note


__all__ = ["HALF_DTYPES", "model_float_dtype", "second_order_model", "unwrap_compiled"]
