"""A user's own data: ``file.npz``, ``package.module:callable`` / ``file.py:callable``, ``imagefolder:DIR``.

A user's data is used exactly as given (a model trained elsewhere must see the inputs it was trained
on): nothing is rescaled; an npz array keeps its kind (integer token ids and labels int64, floating
inputs and regression targets float32), and ``x_SPLIT.NAME`` arrays give keyword inputs
``{NAME: ...}`` (``input_ids``, ``attention_mask``, ...). Normalisation happens only when asked, with
per-channel statistics of the training split, returned in the record so that a run can keep them.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, TensorDataset, default_collate

from flatness.core.errors import FlatnessError, ModelRaisedError
from flatness.core.evaluation import eval_mode
from flatness.core.fileio import sha256_file
from flatness.core.losses import check_loss_value, resolve_loss
from flatness.data.batches import forward, map_tensors
from flatness.data.checks import check_folder_tree, check_label_range, check_splits, remember
from flatness.models.references import call_user, is_reference, one_line, resolve_callable

IMAGEFOLDER_PREFIX = "imagefolder:"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
# The target of a Hugging Face style example {"input_ids": ..., "labels": ...}; the other keys are inputs.
LABELS_KEY = "labels"


class UserData(NamedTuple):
    """The two splits of a user's dataset and a JSON-safe record of where they came from."""

    train: Dataset
    test: Dataset
    record: dict[str, Any]


class NormalizedDataset(Dataset):
    """``(x - mean) / std`` per channel (dimension 0 of one example) on top of another dataset."""

    def __init__(self, base: Dataset, mean: torch.Tensor, std: torch.Tensor):
        self.base, self.mean, self.std = base, mean, std

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index):
        x, y = self.base[index]
        shape = (-1,) + (1,) * (x.dim() - 1)
        return (x - self.mean.view(shape)) / self.std.view(shape), y


def _tensor(array: np.ndarray, target: bool = False) -> torch.Tensor:
    """One npz array as a tensor of its own kind.

    Integers (token ids, labels) int64, floating values float32 (the dtype of a model's weights; the
    values stay as given), boolean inputs (masks) as they are and boolean targets as 0./1. (what a
    binary loss takes).
    """
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.dtype == torch.bool:
        return tensor.to(torch.float32) if target else tensor
    return tensor.to(torch.float32) if tensor.is_floating_point() else tensor.long()


class DictInputDataset(Dataset):
    """Examples ``({name: tensor[i]}, target[i])``: an npz's ``x_SPLIT.NAME`` arrays as keyword inputs."""

    def __init__(self, inputs: dict[str, torch.Tensor], targets: torch.Tensor):
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index):
        return {k: v[index] for k, v in self.inputs.items()}, self.targets[index]


class LabelsDictDataset(Dataset):
    """Hugging Face style examples ``{"input_ids": ..., "labels": ...}`` as ``(inputs, labels)`` pairs.

    The ``labels`` entry is the target, the other keys the model's inputs.
    """

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index):
        example = dict(self.base[index])
        labels = example.pop(LABELS_KEY)
        return example, labels


def _split_inputs(arrays: dict[str, np.ndarray], split: str, path: str) -> np.ndarray | dict[str, np.ndarray]:
    """``x_SPLIT`` (one array), or the ``x_SPLIT.NAME`` arrays as ``{NAME: array}`` (keyword inputs)."""
    key = f"x_{split}"
    named = {k[len(key) + 1 :]: v for k, v in arrays.items() if k.startswith(key + ".")}
    if key in arrays and named:
        raise FlatnessError(f"{path} has both {key} and {key}.NAME arrays: give the inputs one way")
    if key in arrays:
        return arrays[key]
    if not named:
        raise FlatnessError(
            f"{path} has no array {key!r} (an npz dataset needs x_train, y_train, x_test, y_test, "
            f"or x_train.NAME arrays for keyword inputs; it has {', '.join(arrays) or 'none'})"
        )
    return named


def _npz_split(arrays: dict[str, np.ndarray], split: str, path: str) -> Dataset:
    x, y = _split_inputs(arrays, split, path), arrays[f"y_{split}"]
    parts = x if isinstance(x, dict) else {"": x}
    for name, array in list(parts.items()) + [("y", y)]:
        label = "y_" + split if name == "y" else (f"x_{split}.{name}" if name else f"x_{split}")
        if array.ndim == 0 or len(array) != len(y):
            raise FlatnessError(
                f"{path}: {label} has {len(array) if array.ndim else 0} examples but y_{split} has "
                f"{len(y) if y.ndim else 0}"
            )
        if array.dtype.kind not in "biuf":
            raise FlatnessError(f"{path}: {label} must be a numeric array, got dtype {array.dtype}")
    if len(y) == 0:
        raise FlatnessError(f"{path}: x_{split} is empty")
    if isinstance(x, dict):
        return DictInputDataset({k: _tensor(v) for k, v in x.items()}, _tensor(y, target=True))
    return TensorDataset(_tensor(x), _tensor(y, target=True))


def _load_npz(path: str) -> tuple[Dataset, Dataset]:
    if not os.path.isfile(path):
        raise FlatnessError(f"dataset file not found: {path}")
    try:
        # allow_pickle=False: object arrays would unpickle code
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in ("y_train", "y_test") if key not in archive.files]
            if missing:
                raise FlatnessError(
                    f"{path} has no array {missing[0]!r} (an npz dataset needs "
                    f"{', '.join(NPZ_KEYS)}; it has {', '.join(archive.files) or 'none'})"
                )
            arrays = {key: archive[key] for key in archive.files}
    except FlatnessError:
        raise
    except Exception as err:  # ValueError for object arrays, BadZipFile/OSError for damage
        raise FlatnessError(f"cannot read {path} as an npz dataset: {one_line(err)}") from None
    return _npz_split(arrays, "train", path), _npz_split(arrays, "test", path)


def _is_dataset(obj: Any) -> bool:
    return hasattr(obj, "__len__") and hasattr(obj, "__getitem__")


def _load_callable(ref: str) -> tuple[Dataset, Dataset, str | None]:
    factory, sha256 = resolve_callable(ref, "dataset")
    result = call_user(factory, ref)
    if not (isinstance(result, (tuple, list)) and len(result) == 2 and all(_is_dataset(d) for d in result)):
        raise FlatnessError(f"{ref} must return (train_dataset, test_dataset), got {type(result).__name__}")
    for name, dataset in zip(("train", "test"), result):
        if len(dataset) == 0:
            raise FlatnessError(f"{ref} returned an empty {name} dataset")
    train, test = (_as_pairs(d, ref) for d in result)
    return train, test, sha256


def _as_pairs(dataset: Dataset, ref: str) -> Dataset:
    """The dataset as ``(inputs, target)`` examples: Hugging Face style dict examples are split at "labels"."""
    example = dataset[0]
    if not isinstance(example, dict):
        return dataset
    if LABELS_KEY not in example:
        raise FlatnessError(
            f"{ref}: an example that is a dict needs a {LABELS_KEY!r} entry (the target; the other keys are "
            f"the model's inputs), got keys {', '.join(map(str, example))}"
        )
    return LabelsDictDataset(dataset)


def _load_imagefolder(folder: str, image_size: int | None) -> tuple[Dataset, Dataset]:
    from torchvision import datasets as D  # noqa: PLC0415 - torchvision is heavy; only an image folder needs it
    from torchvision import transforms as T  # noqa: PLC0415 - torchvision is heavy; only an image folder needs it

    steps = ([T.Resize((image_size, image_size))] if image_size else []) + [T.ToTensor()]
    splits = []
    for split in ("train", "test"):
        path = os.path.join(folder, split)
        if not os.path.isdir(path):
            raise FlatnessError(f"imagefolder:{folder} needs {path}/<class>/<images>")
        check_folder_tree(path)
        try:
            splits.append(D.ImageFolder(path, transform=T.Compose(steps)))
        except (FileNotFoundError, OSError) as err:  # no class folders, or no images in them
            raise FlatnessError(f"imagefolder {path} holds no images: {one_line(err)}") from None
    if splits[0].class_to_idx != splits[1].class_to_idx:
        raise FlatnessError(f"imagefolder:{folder}: train and test have different class folders")
    return splits[0], splits[1]


def data_digest(ref: str) -> str | None:
    """What identifies a data file or image folder's contents, as a run records it (None: not a data path).

    An npz's sha256; for ``imagefolder:DIR``, the sha256 of its listing (every file's path under DIR and
    size, in order), which changes when an image is added, removed, renamed or resized. A checkpoint's
    recorded data path is followed only when this still matches (``flatness.sources.loading``).

    Args:
        ref: a dataset reference.

    Returns:
        The hex digest, or None for references that are not data paths (built-ins, code), or for a path
        that is no regular file or folder (nothing is read from a device or a pipe).
    """
    if ref.endswith(".npz"):
        return sha256_file(ref) if os.path.isfile(ref) else None
    if not ref.startswith(IMAGEFOLDER_PREFIX):
        return None
    folder = ref[len(IMAGEFOLDER_PREFIX) :]
    if not os.path.isdir(folder):
        return None
    listing = hashlib.sha256()
    for split in ("train", "test"):
        root = os.path.join(folder, split)
        if not os.path.isdir(root):
            continue
        check_folder_tree(root)  # the walk below follows links as ImageFolder does: never into a loop
        for here, dirs, files in os.walk(root, followlinks=True):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(here, name)
                size = os.path.getsize(full) if os.path.isfile(full) else -1
                listing.update(f"{os.path.relpath(full, folder)}\0{size}\n".encode("utf-8", "surrogateescape"))
    return listing.hexdigest()


def channel_statistics(dataset: Dataset, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation (dimension 0 of one example) over a whole dataset.

    Args:
        dataset: yields ``(x, y)`` with ``x`` a tensor of one example, channels first.
        batch_size: examples read at a time.

    Returns:
        ``(mean, std)`` as float32 tensors of one value per channel.
    """
    total, total_sq, count = None, None, 0
    for x, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        if not torch.is_tensor(x):
            raise FlatnessError("normalisation needs examples whose input is one tensor")
        x = x.to(torch.float64)
        # images [N, C, ...]: a value per channel; vectors [N, D] and scalars: one channel
        flat = x.reshape(x.shape[0], x.shape[1], -1) if x.dim() > 2 else x.reshape(x.shape[0], 1, -1)
        sums, sq = flat.sum(dim=(0, 2)), (flat * flat).sum(dim=(0, 2))
        total = sums if total is None else total + sums
        total_sq = sq if total_sq is None else total_sq + sq
        count += flat.shape[0] * flat.shape[2]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(0).sqrt()
    if bool((std == 0).any()):
        raise FlatnessError("cannot normalise: a channel of the training data is constant")
    return mean.to(torch.float32), std.to(torch.float32)


def load_user_dataset(ref: str, image_size: int | None = None, normalize: bool = False) -> UserData:
    """The train and test splits of a user's dataset.

    Args:
        ref: ``path/to/file.npz`` (arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``),
            ``package.module:callable`` or ``path/to/file.py:callable`` (called without arguments,
            returning ``(train_dataset, test_dataset)``), or ``imagefolder:DIR`` (``DIR/train`` and
            ``DIR/test`` as torchvision ImageFolders).
        image_size: for imagefolder, resize every image to this square size (default: as stored).
        normalize: standardise per channel with the training split's statistics.

    Returns:
        ``UserData(train, test, record)``; the record (JSON-safe) holds the reference, the sha256 of
        an npz or factory file, and the normalisation ``{"mean": [...], "std": [...]}`` or None.

    Raises:
        FlatnessError: one line for a missing file or array, mismatched lengths, an empty folder, a
            factory that fails or returns something else than two datasets.
    """
    record: dict[str, Any] = {"reference": ref, "sha256": None, "normalize": None}
    if ref.startswith(IMAGEFOLDER_PREFIX):
        folder = ref[len(IMAGEFOLDER_PREFIX) :]
        train, test = _load_imagefolder(folder, image_size)
        record["image_size"] = image_size
        record["sha256"] = data_digest(ref)
    elif ref.endswith(".npz"):
        train, test = _load_npz(ref)
        record["sha256"] = sha256_file(ref)
    elif is_reference(ref):
        train, test, record["sha256"] = _load_callable(ref)
    else:
        raise FlatnessError(
            f"unknown dataset {ref!r}: use a built-in name, file.npz, "
            "package.module:callable, file.py:callable or imagefolder:DIR"
        )
    summary = check_splits(train, test, ref)
    if normalize:
        mean, std = channel_statistics(train)
        record["normalize"] = {"mean": mean.tolist(), "std": std.tolist()}
        train, test = NormalizedDataset(train, mean, std), NormalizedDataset(test, mean, std)
        remember(train, summary)
        remember(test, summary)
    return UserData(train, test, record)


def _shape_of(inputs: Any) -> str:
    shapes: list[str] = []
    map_tensors(inputs, lambda t: shapes.append(str(tuple(t.shape))) or t)
    return shapes[0] if len(shapes) == 1 else "(" + ", ".join(shapes) + ")"


def check_model_fits(model: nn.Module, dataset: Dataset, loss_fn: Any = None, output_fn: Any = None) -> None:
    """Run the model on the dataset's first example (and the loss on two); fail with one line if they cannot.

    Args:
        model: the model to train or measure.
        dataset: yields ``(inputs, target)`` examples (inputs a tensor, tuple/list or dict of tensors).
        loss_fn: the loss the model will be trained or measured with (None: cross-entropy).
        output_fn: what of the model's output the loss sees (``flatness.data.batches.model_output``).

    Raises:
        FlatnessError: the model raised on a batch of one example (the message gives the batch's
            input shape and what the model raised), its output has no tensor for the loss, its class
            scores do not cover the example's label, or the loss fails on a batch of two examples or
            does not return a scalar there (so that a per-example loss shows).
    """
    x, y = dataset[0]
    batch = map_tensors(x, lambda t: t.unsqueeze(0))
    out = _fitting_output(model, batch, output_fn)
    label = (
        int(y) if isinstance(y, int) or (torch.is_tensor(y) and y.dim() == 0 and not y.is_floating_point()) else None
    )
    if label is not None and out.dim() == 2 and not 0 <= label < out.shape[1]:
        raise FlatnessError(
            f"the model does not fit the data: it gives {out.shape[1]} class scores "
            f"(output shape {tuple(out.shape)}) but the data has label {label}"
        )
    if torch.is_tensor(out) and out.dim() == 2:
        check_label_range(dataset, out.shape[1])  # every label, from the pass made when the data was loaded

    # the loss the run uses (cross-entropy unless given), on two examples so that a per-example loss shows
    batch_x, batch_y = default_collate([dataset[i] for i in range(min(2, len(dataset)))])
    _check_loss_on(resolve_loss(loss_fn), _fitting_output(model, batch_x, output_fn), batch_y)


def _fitting_output(model: nn.Module, batch: Any, output_fn: Any) -> torch.Tensor:
    """The tensor the loss sees of the model on ``batch``; FlatnessError (one line) when the model cannot run it."""
    count = _count(batch)
    try:
        with torch.no_grad(), eval_mode(model):
            return forward(model, batch, output_fn)
    except ModelRaisedError as err:  # shape errors surface as RuntimeError, ValueError, AssertionError...
        raised = err.original
    except FlatnessError:
        raise  # an output with no tensor for the loss: its own one line
    except Exception as err:  # noqa: BLE001 - a user's output_fn
        raised = err
    raise FlatnessError(
        f"the model does not fit the data: a batch of {'one example' if count == 1 else f'{count} examples'} "
        f"has input shape {_shape_of(batch)} and the model raised {one_line(raised)}"
    ) from None


def _count(batch: Any) -> int:
    sizes: list[int] = []
    map_tensors(batch, lambda t: sizes.append(int(t.shape[0])) or t)
    return sizes[0] if sizes else 0


def _check_loss_on(loss_fn: Any, out: torch.Tensor, targets: torch.Tensor) -> None:
    """FlatnessError (one line) when ``loss_fn`` fails on these outputs and targets or gives no scalar."""
    try:
        with torch.no_grad():
            value = loss_fn(out, targets)
    except FlatnessError:
        raise
    except Exception as err:  # dtype or shape mismatches between outputs and targets
        hint = ""
        if targets.is_floating_point() and getattr(loss_fn, "name", None) in ("ce", "nll"):
            hint = "; float targets need a regression loss, e.g. --loss mse"
        raise FlatnessError(
            f"the loss does not fit the model's outputs (shape {tuple(out.shape)}, {out.dtype}) and the "
            f"targets (shape {tuple(targets.shape)}, {targets.dtype}): {one_line(err)}{hint}"
        ) from None
    check_loss_value(value, loss_fn)
