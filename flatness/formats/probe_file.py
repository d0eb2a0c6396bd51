"""The probe file format: one JSON file (+ an optional sidecar ``.h5``).

This module alone writes and reads it.

JSON keys (every float that is not finite is written as ``null``, never a bare NaN)::

    format              "flatness-probe"
    flatness_version    the version that wrote it
    checkpoint          {path, sha256, dataset, model, method, epoch, seed}
    data                {dataset, split, samples, batch_size}
    loss, accuracy, num_params, weight_norm, distance_from_init (null without init.pt)
    hessian_params      null (the Hessian over all trainable parameters) or the names of the block
                        it was restricted to (``probe --params``), in vector order
    hessian_dim         the Hessian's size: num_params, or the block's parameter count
    hessian             {method, which, eigenvalues, residuals, negative, hvps, seconds, tol,
                         converged, backend, max_iter} or null (top-k 0)
    trace               {estimate, stderr, hvps, samples, method, seconds} or null
    density             {nodes, weights, grid, values, sigma, steps, vectors, hvps, seconds} or null
    sharpness           the list of flatness.sharpness.measure_sharpness, or null
    sidecar             file name of the sidecar (beside the JSON) or null

The sidecar ``NAME.h5`` (for ``NAME.json``) holds ``eigenvectors`` (k×d float32, rows in the order
of ``hessian.eigenvalues``, entries in ``named_parameters`` order, over ``hessian_params`` only
when that is set) and ``eigenvalues`` when vectors
were saved, and ``density/{nodes,weights,grid,values}`` (nodes and weights per starting vector) when
the density was computed.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any

import numpy as np

from flatness.core.errors import FlatnessError
from flatness.core.fileio import atomic_write, atomic_write_text
from flatness.core.locking import exclusive

FORMAT = "flatness-probe"
REQUIRED = (
    "flatness_version",
    "checkpoint",
    "data",
    "loss",
    "accuracy",
    "num_params",
    "weight_norm",
    "distance_from_init",
    "hessian",
    "sidecar",
)
ARRAY_KEYS = ("eigenvectors", "density_arrays")


def sidecar_path(json_path: str) -> str:
    """The ``.h5`` sidecar beside a probe JSON file (``x.json`` -> ``x.h5``; other names get ``.h5`` added)."""
    root, ext = os.path.splitext(json_path)
    return (root if ext.lower() == ".json" else json_path) + ".h5"


def refuse_existing(paths: list[str | None], force: bool) -> None:
    """Refuse to replace any of ``paths`` (None: not written) that exists, unless ``force``."""
    if force:
        return
    for target in paths:
        if target is not None and os.path.exists(target):
            raise FlatnessError(f"{target} exists; pass --force to overwrite it")


def _clean(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats -> None, numpy scalars/arrays -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:  # a 0-d tensor
        return _clean(obj.item())
    return obj


def write_probe(
    path: str,
    result: dict[str, Any],
    vectors: np.ndarray | None = None,
    density_arrays: dict[str, np.ndarray] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write ``result`` to ``path`` (atomically), with a sidecar ``.h5`` for arrays.

    The sidecar is written beside it when there are vectors or density arrays. Refuses to replace
    an existing file unless ``force``.

    Args:
        path: the JSON file.
        result: the probe result.
        vectors: eigenvectors for the sidecar (default: the result's ``eigenvectors``, which never
            go into the JSON).
        density_arrays: density arrays for the sidecar (default: the result's ``density_arrays``).
        force: replace an existing file.

    Returns:
        The dict as written.
    """
    if vectors is None:
        vectors = result.get("eigenvectors")
    if density_arrays is None:
        density_arrays = result.get("density_arrays")
    with exclusive(path, "probe file"):  # two probes never write one file
        return _write_probe_locked(path, result, vectors, density_arrays, force)


def _write_probe_locked(path, result, vectors, density_arrays, force) -> dict[str, Any]:
    side = sidecar_path(path)
    want_sidecar = vectors is not None or density_arrays is not None
    refuse_existing([path, side if want_sidecar else None], force)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FlatnessError(f"cannot write {path}: folder {folder} does not exist")
    payload = {k: v for k, v in result.items() if k not in ARRAY_KEYS}
    payload.setdefault("format", FORMAT)
    payload["sidecar"] = None
    if want_sidecar:
        _write_sidecar(side, vectors, density_arrays, payload)
        payload["sidecar"] = os.path.basename(side)
    payload = _clean(payload)
    try:
        text = json.dumps(payload, indent=2, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"probe result is not JSON-serialisable: {err}") from None
    atomic_write_text(path, text + "\n")
    return payload


def _write_sidecar(path: str, vectors, density_arrays, payload) -> None:
    import h5py  # noqa: PLC0415 - h5py is heavy; only a probe with vectors or a density needs it

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.attrs["format"] = FORMAT + "-sidecar"
        h5.attrs["flatness_version"] = str(payload.get("flatness_version", ""))
        if vectors is not None:
            h5.create_dataset("eigenvectors", data=np.asarray(vectors, dtype=np.float32))
            hess = payload.get("hessian") or {}
            if hess.get("eigenvalues") is not None:
                h5.create_dataset("eigenvalues", data=np.asarray(hess["eigenvalues"], dtype=np.float64))
        if density_arrays is not None:
            group = h5.create_group("density")
            for key, value in density_arrays.items():
                group.create_dataset(key, data=np.asarray(value, dtype=np.float64))
    atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))


def is_probe_file(path: str) -> bool:
    """Whether ``path`` is a JSON object with a probe's ``hessian`` and ``checkpoint`` (not validated).

    Args:
        path: any file.

    Returns:
        True when it looks like a probe file (``read_probe`` then checks it).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            obj = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and "hessian" in obj and "checkpoint" in obj


def read_probe(path: str) -> dict[str, Any]:
    """The probe dict of ``path``, validated; any problem is a one-line FlatnessError."""
    if not os.path.isfile(path):
        raise FlatnessError(f"probe file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FlatnessError(
            f"{path} is not a readable probe file (truncated or not JSON: {err.msg if hasattr(err, 'msg') else err})"
        ) from None
    if not isinstance(data, dict) or data.get("format", FORMAT) != FORMAT:
        raise FlatnessError(f"{path} is not a flatness probe file")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise FlatnessError(f"{path} is not a valid probe file: '{missing[0]}' is missing")
    for key in ("checkpoint", "data"):
        if not isinstance(data[key], dict):
            raise FlatnessError(f"{path} is not a valid probe file: '{key}' is not an object")
    _check_hessian(path, data["hessian"])
    for key in ("loss", "accuracy", "weight_norm", "distance_from_init", "num_params"):
        _numbers(path, key, [data[key]])
    for key in ("trace", "density"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise FlatnessError(f"{path} is not a valid probe file: '{key}' is not an object")
    _check_density(path, data.get("density") or {})
    if data.get("sharpness") is not None and not (
        isinstance(data["sharpness"], list) and all(isinstance(r, dict) for r in data["sharpness"])
    ):
        raise FlatnessError(f"{path} is not a valid probe file: 'sharpness' is not a list of objects")
    _check_sidecar(path, data["sidecar"])
    return data


def _check_hessian(path: str, hess) -> None:
    if hess is None:
        return
    if not isinstance(hess, dict) or not isinstance(hess.get("eigenvalues"), list):
        raise FlatnessError(f"{path} is not a valid probe file: 'hessian.eigenvalues' is missing")
    _numbers(path, "hessian.eigenvalues", hess["eigenvalues"])
    for key in ("residuals",):
        if hess.get(key) is not None:
            _numbers(path, f"hessian.{key}", hess[key])


def _check_density(path: str, density: dict[str, Any]) -> None:
    for key in ("nodes", "weights", "grid", "values"):
        if density.get(key) is not None:
            if not isinstance(density[key], list):
                raise FlatnessError(f"{path} is not a valid probe file: 'density.{key}' is not a list")
            _numbers(path, f"density.{key}", density[key])


def _check_sidecar(path: str, side) -> None:
    # the sidecar is a file name beside the JSON: never a path that leads elsewhere
    if side is not None and (
        not isinstance(side, str)
        or not side
        or os.path.basename(side) != side
        or side in (".", "..")
        or "/" in side
        or "\\" in side
    ):
        raise FlatnessError(f"{path} is not a valid probe file: 'sidecar' must be a file name beside it")


def _numbers(path: str, key: str, values) -> None:
    for v in values:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise FlatnessError(f"{path} is not a valid probe file: '{key}' holds {v!r}, not a number")


def read_probe_arrays(path: str) -> dict[str, np.ndarray]:
    """The sidecar arrays of the probe file ``path``.

    ``eigenvectors`` (k×d), ``eigenvalues`` and ``density/...`` when present. FlatnessError when
    there is no readable sidecar.
    """
    import h5py  # noqa: PLC0415 - h5py is heavy; reading a probe's JSON needs no h5py

    probe = read_probe(path)
    if not probe.get("sidecar"):
        raise FlatnessError(f"{path} has no sidecar; rerun `flatness probe --save-vectors`")
    side = os.path.join(os.path.dirname(os.path.abspath(path)), probe["sidecar"])
    if not os.path.isfile(side):
        raise FlatnessError(f"the sidecar {side} of {path} is missing")
    out = {}
    try:
        with h5py.File(side, "r") as h5:
            for key in ("eigenvectors", "eigenvalues"):
                if key in h5:
                    out[key] = h5[key][()]
            if "density" in h5:
                for key in h5["density"]:
                    out[f"density/{key}"] = h5["density"][key][()]
    except OSError as err:
        raise FlatnessError(f"cannot read the sidecar {side}: {err}") from None
    return out
