"""A user's data checked once, where it is loaded, in one pass over every example.

NaN or infinite inputs would become a NaN loss reported as "training diverged", a mistyped label a
silent accuracy or an internal ``IndexError`` many steps in, a ragged example a collate error. So
every example of a user's dataset is looked at once, before anything runs: it is an ``(inputs,
target)`` pair, its inputs are finite and shaped like the first example's, and integer class labels
are single non-negative indices (a one-hot or 2-D label is refused); the largest label is kept so
that the model's number of class scores can be checked against it (``check_label_range``). The
error names the first bad example. Float targets (a regression loss) are checked for finiteness and
shape only.
"""

from __future__ import annotations

import contextlib
import os
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from flatness.core.errors import FlatnessError


@dataclass(frozen=True)
class DataSummary:
    """What the pass over a split found: its size, the kind of its targets, its largest class label."""

    examples: int
    integer_labels: bool
    largest_label: int | None


_SUMMARIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())[:200]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _tensors(obj: Any) -> list[torch.Tensor] | None:
    """The tensors of one example's inputs (a tensor, array, tuple/list or dict of them); None: another form."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "biuf":
        return [torch.from_numpy(np.ascontiguousarray(obj))]
    if isinstance(obj, dict) and obj:
        parts = [_tensors(v) for v in obj.values()]
    elif isinstance(obj, (tuple, list)) and obj:
        parts = [_tensors(v) for v in obj]
    else:
        return None
    return None if any(p is None for p in parts) else [t for p in parts for t in p]


def _label(target: Any) -> tuple[str, Any]:
    """``("int", value)``, ``("float", tensor)`` or ``("bad", description)`` for one example's target."""
    if isinstance(target, (bool, np.bool_)):
        return "int", int(target)
    if isinstance(target, (int, np.integer)):
        return "int", int(target)
    if isinstance(target, (float, np.floating)):
        return "float", torch.tensor(float(target))
    if isinstance(target, np.ndarray):
        target = torch.from_numpy(np.ascontiguousarray(target)) if target.dtype.kind in "biuf" else target
    if isinstance(target, torch.Tensor):
        if target.is_floating_point():
            return "float", target
        if target.dim() == 0:
            return "int", int(target)
        return "bad", f"an integer label of shape {tuple(target.shape)} (give one class index per example)"
    return "bad", f"a target of type {type(target).__name__}"


def _fail(what: str, index: int, problem: str) -> FlatnessError:
    return FlatnessError(f"{what}: example {index} {problem}")


def _check_example(item: Any, index: int, what: str, first: dict[str, Any]) -> tuple[str, Any]:
    """Check one example against the first one's form; returns its label kind and value."""
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        size = f"{len(item)} items" if isinstance(item, (tuple, list)) else f"a {type(item).__name__}"
        raise _fail(what, index, f"is {size}, not an (inputs, target) pair")
    inputs, target = item
    tensors = _tensors(inputs)
    if tensors is None:
        raise _fail(what, index, f"has inputs of type {type(inputs).__name__}, not tensors")
    shapes = [tuple(t.shape) for t in tensors]
    for t in tensors:
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise _fail(what, index, "has a NaN or infinite input value")
    kind, value = _label(target)
    if kind == "bad":
        raise _fail(what, index, f"has {value}")
    if kind == "float" and not bool(torch.isfinite(value).all()):
        raise _fail(what, index, "has a NaN or infinite target")
    if kind == "int" and value < 0:
        raise _fail(what, index, f"has the label {value}; class labels are indices from 0")
    form = (shapes, kind, tuple(value.shape) if kind == "float" else ())
    if not first:
        first["form"] = form
    elif form != first["form"]:
        shapes0, kind0, tshape0 = first["form"]
        if shapes != shapes0:
            raise _fail(what, index, f"has inputs of shape {shapes} but example 0 {shapes0} (resize, or pad)")
        raise _fail(what, index, f"has a {kind} target {form[2]} but example 0 a {kind0} target {tshape0}")
    return kind, value


def _check_tensor_dataset(dataset: TensorDataset, what: str) -> DataSummary:
    """The same checks, vectorised, for a two-tensor ``TensorDataset`` (npz files, most factories)."""
    x, y = dataset.tensors
    n = len(x)
    if x.is_floating_point():
        bad = (~torch.isfinite(x.reshape(n, -1))).any(dim=1).nonzero()
        if len(bad):
            raise _fail(what, int(bad[0]), "has a NaN or infinite input value")
    if y.is_floating_point():
        bad = (~torch.isfinite(y.reshape(n, -1))).any(dim=1).nonzero() if n else []
        if len(bad):
            raise _fail(what, int(bad[0]), "has a NaN or infinite target")
        return DataSummary(n, False, None)
    if y.dim() != 1:
        raise _fail(what, 0, f"has an integer label of shape {tuple(y.shape[1:])} (give one class index per example)")
    negative = (y < 0).nonzero()
    if len(negative):
        index = int(negative[0])
        raise _fail(what, index, f"has the label {int(y[index])}; class labels are indices from 0")
    return DataSummary(n, True, int(y.max()) if n else None)


def check_examples(dataset: Dataset, what: str) -> DataSummary:
    """Check every example of ``dataset`` in one pass; one-line ``FlatnessError`` naming the first bad one.

    Args:
        dataset: one split of a user's dataset (yields ``(inputs, target)``).
        what: its name in messages, e.g. ``"data.npz, train split"``.

    Returns:
        The split's summary (also remembered for ``check_label_range``).
    """
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        summary = _check_tensor_dataset(dataset, what)
    else:
        summary = _check_each(dataset, what)
    remember(dataset, summary)
    return summary


def check_splits(train: Dataset, test: Dataset, name: str) -> DataSummary:
    """``check_examples`` on both splits of a dataset; the summary kept for each is the dataset's.

    The largest label over both splits is what the model's class scores must cover: a test label
    beyond them would fail (or be silently wrong) only when the test split is evaluated.

    Args:
        train: the training split.
        test: the test split.
        name: the dataset's reference, for messages.

    Returns:
        The combined summary (examples of the training split).
    """
    first, second = check_examples(train, f"{name}, train split"), check_examples(test, f"{name}, test split")
    labels = [s.largest_label for s in (first, second) if s.largest_label is not None]
    combined = DataSummary(first.examples, first.integer_labels, max(labels) if labels else None)
    remember(train, combined)
    remember(test, combined)
    return combined


def _check_each(dataset: Dataset, what: str) -> DataSummary:
    """One pass through ``dataset[i]`` for every index its ``__len__`` promises."""
    try:
        n = len(dataset)
    except Exception as err:  # noqa: BLE001 - the user's __len__
        raise FlatnessError(f"{what}: len() raised {_one_line(err)}") from None
    first: dict[str, Any] = {}
    integer, largest = True, None
    with warnings.catch_warnings():
        # a decompression bomb is refused, not loaded after a warning line
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for index in range(n):
            try:
                item = dataset[index]
            except Exception as err:  # noqa: BLE001 - the user's __getitem__, an unreadable image...
                raise _fail(what, index, f"cannot be read (len() says {n} examples): {_one_line(err)}") from None
            kind, value = _check_example(item, index, what, first)
            integer = kind == "int"
            if integer:
                largest = value if largest is None else max(largest, value)
    return DataSummary(n, integer, largest)


def remember(dataset: Dataset, summary: DataSummary) -> None:
    """Record ``summary`` for a dataset built on a checked one (e.g. normalised), for ``check_label_range``."""
    with contextlib.suppress(TypeError):  # a dataset class that cannot be hashed or weakly referenced
        _SUMMARIES[dataset] = summary


def check_folder_tree(folder: str) -> None:
    """Refuse an image folder in which a link leads back to a folder already walked (a loop or a copy).

    ImageFolder follows links to folders, so a loop would list the same images again and again (under
    other class folders' labels too).

    Args:
        folder: the root of the image folder.
    """
    seen: dict[str, str] = {}
    for here, dirs, _ in os.walk(folder, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:
            raise FlatnessError(f"{folder}: {here} is {seen[real]} again (a link to a folder walked already)")
        seen[real] = here
        dirs.sort()


def check_label_range(dataset: Dataset, class_scores: int) -> None:
    """Refuse class labels beyond the model's ``class_scores`` (checked over every example, not the first).

    Args:
        dataset: a split that ``check_examples`` has checked (others are not checked here).
        class_scores: the size of the model's output per example.
    """
    try:
        summary = _SUMMARIES.get(dataset)
    except TypeError:
        return
    if summary is None or not summary.integer_labels or summary.largest_label is None:
        return
    if summary.largest_label >= class_scores:
        raise FlatnessError(
            f"the model does not fit the data: it gives {class_scores} class scores but the data has the "
            f"label {summary.largest_label} (labels must be below {class_scores})"
        )
