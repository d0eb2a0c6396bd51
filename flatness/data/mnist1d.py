"""MNIST-1D (Greydanus 2020): 40-sample 1-D digits, 4000 train / 1000 test, generated offline.

The arrays come from the ``mnist1d`` package's own generator (``mnist1d.data.make_dataset``) with its
published default arguments (``get_dataset_args()``), never from its download path. The generator is
deterministic (seed 42) and takes ~1.5 s; the arrays are cached as an npz under the data folder after
the first generation and regenerated if the cache does not match those arguments.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from typing import Any

import numpy as np
import torch

from flatness.core.errors import FlatnessError
from flatness.core.fileio import atomic_write, os_error_reason
from flatness.data.tensor_data import TensorImageDataset

CACHE_NAME = "mnist1d_default.npz"
SEQUENCE_LENGTH = 40
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


def generator_args() -> dict[str, Any]:
    """The ``mnist1d`` package's published default generator arguments (without its download URL)."""
    try:  # late: the generator package is needed only for MNIST-1D, and a missing one is a one-line error
        from mnist1d.data import get_dataset_args  # noqa: PLC0415 - only MNIST-1D needs its generator package (heavy)
    except ImportError:
        raise FlatnessError("the mnist1d dataset needs the mnist1d package: pip install mnist1d") from None
    args = get_dataset_args(as_dict=True)
    args.pop("url", None)
    return args


def generate(args: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Run the package's generator; the global numpy/random states it seeds are restored afterwards.

    Args:
        args: generator arguments (default: ``generator_args()``); tests pass fewer samples.

    Returns:
        ``{"x_train", "y_train", "x_test", "y_test"}`` as the generator made them (float64 / int64).
    """
    from mnist1d.data import make_dataset  # noqa: PLC0415 - only MNIST-1D needs its generator package (heavy)
    from mnist1d.utils import ObjectView  # noqa: PLC0415 - only MNIST-1D needs its generator package (heavy)

    args = dict(generator_args() if args is None else args)
    # make_dataset seeds numpy's and Python's global generators; a caller's runs must not feel that
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(ObjectView(args))
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {"x_train": data["x"], "y_train": data["y"], "x_test": data["x_test"], "y_test": data["y_test"]}


def _read_cache(path: str, args: dict[str, Any]) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if str(archive["args"]) != json.dumps(args, sort_keys=True):
                return None
            return {key: archive[key] for key in ARRAY_KEYS}
    except Exception:  # a damaged or foreign cache is simply generated again
        return None


def load_arrays(root: str, args: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """The MNIST-1D arrays, from ``<root>/mnist1d/`` or generated and cached there.

    Args:
        root: the data folder (the CLI's ``--data-dir``).
        args: generator arguments (default: the published ones).

    Returns:
        The four arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``.
    """
    args = dict(generator_args() if args is None else args)
    folder = os.path.join(root, "mnist1d")
    digest = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(folder, CACHE_NAME if args == generator_args() else f"mnist1d_{digest}.npz")
    if os.path.isfile(path):
        cached = _read_cache(path, args)
        if cached is not None:
            return cached
    arrays = generate(args)
    buffer = io.BytesIO()
    np.savez(buffer, args=np.array(json.dumps(args, sort_keys=True)), **arrays)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise FlatnessError(f"cannot create {folder}: {os_error_reason(err)}") from None
    atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))
    return arrays


def mnist1d_split(split: str, root: str) -> TensorImageDataset:
    """One split as a dataset of ``(signal [1, 40] float32, label)``: one channel, 40 samples.

    Args:
        split: ``"train"`` or ``"test"``.
        root: the data folder holding (or receiving) the cache.

    Returns:
        A ``TensorImageDataset`` of the generator's values (already standardised by the generator itself).
    """
    arrays = load_arrays(root)
    x = torch.from_numpy(arrays[f"x_{split}"]).to(torch.float32).unsqueeze(1)
    y = torch.from_numpy(arrays[f"y_{split}"]).long()
    return TensorImageDataset(x, y)
