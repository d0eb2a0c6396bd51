"""``as_probe_data``: any data a user has, turned once into fixed probe batches.

Accepted: a ``ProbeData``; a ``DataLoader`` or any iterable of ``(inputs, targets)`` batches; an
``(x, y)`` pair of tensors (``x`` may also be a tuple or dict of tensors); a map-style ``Dataset``
of ``(inputs, target)`` examples. Wherever a batch (or the whole data, or an example) is an
``(inputs, targets)`` pair it may also be a dict with a ``"labels"`` entry, the Hugging Face form: the
labels are the targets and the other entries the model's keyword inputs
(``flatness.data.batches.split_batch``). The batches are read once, in order, and kept: every later loss,
HVP and surface point sees exactly the same examples, each batch weighted by n_b / n, so the
measured loss is the exact mean over all n examples even when the last batch is short.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from flatness.core.errors import FlatnessError
from flatness.data.batches import is_inputs, split_batch
from flatness.data.probe_data import DEFAULT_BATCH_SIZE, ProbeData

ACCEPTED = (
    "a ProbeData, a DataLoader or other iterable of (inputs, targets) batches (or dicts with 'labels'), "
    "an (x, y) pair of tensors, or a Dataset of (input, target) examples"
)


def as_probe_data(
    data: Any, batch_size: int | None = None, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> ProbeData:
    """``data`` as a ``ProbeData`` on ``device`` (default: where it is).

    Args:
        data: any of the accepted forms (module docstring).
        batch_size: batch size for an ``(x, y)`` pair or a ``Dataset`` (default 500); batches that
            come already made (a DataLoader, a list of batches) are kept as they are.
        device: where the batches should live, usually the model's device.
        dtype: the floating dtype of every floating tensor (usually the model's,
            ``flatness.core.measured.model_float_dtype``); integer tensors (token ids, labels) keep theirs.

    Returns:
        The probe data; a ``ProbeData`` already on ``device`` is returned as is (no copy).

    Raises:
        FlatnessError: ``data`` has none of the accepted forms, or holds no examples.
    """
    if batch_size is not None and batch_size < 1:
        raise FlatnessError(f"batch size must be >= 1, got {batch_size}")
    data = split_batch(data)  # the whole data as one Hugging Face dict {..., "labels": y}
    if isinstance(data, ProbeData):
        probe = data
    elif _is_pair(data):
        x, y = data
        probe = _from_pair(x, torch.as_tensor(y), batch_size or DEFAULT_BATCH_SIZE)
    elif isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        loader = DataLoader(data, batch_size=batch_size or DEFAULT_BATCH_SIZE, shuffle=False)
        probe = _read_batches(loader)
    elif _is_iterable(data):
        probe = _read_batches(data)
    else:
        raise FlatnessError(f"cannot measure on data of type {type(data).__name__}; pass {ACCEPTED}")
    if device is None:
        device = probe.device
    if probe.needs_move(device, dtype):
        probe = probe.to(device, dtype)
    return probe


def _is_pair(data: Any) -> bool:
    # An (x, y) pair has a tensor second; a list of two batches has a (inputs, targets) second.
    return (
        isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], torch.Tensor) and is_inputs(data[0])
    )


def _is_iterable(data: Any) -> bool:
    # no iter(data) here: starting a DataLoader's iterator draws from the global RNG
    return isinstance(data, Iterable) and not isinstance(data, (str, bytes, dict, torch.Tensor))


def _length(inputs: Any) -> int:
    if isinstance(inputs, torch.Tensor):
        return int(inputs.shape[0])
    values = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
    return int(values[0].shape[0])


def _slice(inputs: Any, start: int, stop: int) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs[start:stop]
    if isinstance(inputs, dict):
        return {k: v[start:stop] for k, v in inputs.items()}
    return type(inputs)(v[start:stop] for v in inputs)


def _from_pair(x: Any, y: torch.Tensor, batch_size: int) -> ProbeData:
    n = int(y.shape[0]) if y.dim() else 0
    if n == 0:
        raise FlatnessError("the data holds no examples")
    if _length(x) != n:
        raise FlatnessError(f"inputs have {_length(x)} examples but targets {n}; they must match")
    return ProbeData([(_slice(x, i, i + batch_size), y[i : i + batch_size]) for i in range(0, n, batch_size)])


def _read_batches(batches: Any) -> ProbeData:
    """Read the batches once, under a forked global RNG.

    Starting a DataLoader's iterator draws a seed from torch's global generator, and measuring must
    not change the user's later draws.
    """
    with torch.random.fork_rng(devices=[]):
        return _from_batches(batches)


def _from_batches(batches: Any) -> ProbeData:
    out = []
    for index, batch in enumerate(batches):
        batch = split_batch(batch)
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and is_inputs(batch[0])):
            raise FlatnessError(f"batch {index} is not an (inputs, targets) pair of tensors; pass {ACCEPTED}")
        inputs, targets = batch
        targets = torch.as_tensor(targets)
        if targets.dim() == 0 or _length(inputs) != targets.shape[0]:
            raise FlatnessError(f"batch {index}: inputs and targets hold different numbers of examples")
        if targets.shape[0]:
            out.append((inputs, targets))
    if not out:
        raise FlatnessError("the data holds no examples")
    return ProbeData(out)


__all__ = ["ACCEPTED", "as_probe_data"]
