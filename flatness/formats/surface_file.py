"""The surface HDF5 format. This module alone reads and writes it.

Layout (compatible with loss-landscape by Li et al., whose plot scripts read these names)::

    xcoordinates            (nx,)      float64  grid coefficients a
    ycoordinates            (ny,)      float64  grid coefficients b (2D surfaces only)
    train_loss, train_acc   (nx,) or (ny, nx)   float64, value [j, i] at (x_i, y_j)
    test_loss,  test_acc    the same, when the test split was asked for
    computed                same shape, uint8   1 where the point has been evaluated
    directions/x, directions/y   groups: one float32 dataset per state name (``state_dict`` keys);
                                 group attribute ``names`` (JSON list) keeps their order
    pca/                    PCA extras: explained_variance_ratio (2,), coordinates (snapshots, 2),
                            epochs (snapshots,), attribute reference (the final weights' file)

Conventions:

- Missing values are NaN (loss-landscape used -1); ``computed`` says which points are done, so a point
  whose loss is genuinely NaN/Inf (weights far out) is not recomputed on every ``--resume``.
- Accuracy is stored in **percent** (0-100), as loss-landscape's ``eval_loss`` returns it and as its
  ``plot_1D.py`` expects (``ax2.set_ylim(0, 100)``, error = ``100 - train_acc``); the attribute
  ``accuracy_unit = "percent"`` says so. Loss is the mean cross-entropy.
- Index order ``[j, i] = (x_i, y_j)``, shape (ny, nx) (attribute ``layout = "xy"``): the order of
  ``np.meshgrid(x, y)``, so matplotlib's ``contour(X, Y, Z)`` and loss-landscape's ``plot_2D.py``
  draw the arrays as they are. Files written before (``layout = "ij"``, or no ``layout`` attribute)
  hold ``[i, j]``, shape (nx, ny); they are read transposed (``read_surface`` and ``SurfaceFile``
  always give (ny, nx)), and a resumed old file is continued in its own layout.
- File attributes: ``format``, ``format_version``, ``flatness_version``, ``checkpoint`` (path) and
  ``checkpoint_sha256``, ``dataset``, ``model``, ``model_args`` (JSON), ``model_code_sha256`` and
  ``dataset_code_sha256`` (the user's factory / data files; "" for built-ins), ``direction``
  (random | eigen | interp | pca),
  ``direction_source`` (B's path / the run folder) and ``direction_source_sha256``, ``norm``,
  ``ignore``, ``orthogonal``, ``split``, ``samples``, ``batch_size``, ``bn``, ``seed``, the grid spec
  ``x_min``, ``x_max``, ``x_num`` (and ``y_*``), ``seconds`` (grid compute time, start-up excluded,
  accumulated across resumes), ``accuracy_unit``, ``layout``, ``eigenvalues`` (eigen directions).

Crash safety: the file is built complete (coordinates, NaN arrays, directions, attributes) under a
temporary name and renamed into place; afterwards it is only opened ``r+`` to overwrite the value
arrays in place (fixed-size contiguous datasets, so no HDF5 metadata is allocated while computing) and
flushed after each chunk, so a SIGKILL loses at most the chunk in flight. A file that does not open is
reported, never replaced silently.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from flatness.core.errors import FlatnessError
from flatness.core.fileio import atomic_h5py

FORMAT = "flatness-surface"
FORMAT_VERSION = 1
LAYOUT = "xy"  # what this version writes: [j, i] at (x_i, y_j)
OLD_LAYOUT = "ij"  # earlier files: [i, j] at (x_i, y_j); also assumed when the attribute is missing
# Files written by loss-landscape itself (no ``flatness_version`` attribute): its crunch() fills the
# (nx, ny)-shaped array through ``ravel()`` in ``np.meshgrid(x, y)`` order, so the buffer is really
# (ny, nx) row-major and only the declared shape is off (square grids read the same either way).
FOREIGN_LAYOUT = "meshgrid-buffer"
SPLITS = ("train", "test")
VALUE_KEYS = ("train_loss", "train_acc", "test_loss", "test_acc")


def _h5py():
    import h5py  # noqa: PLC0415 - h5py is heavy; only the surface commands read or write these files

    return h5py


def is_surface_file(path: str) -> bool:
    """Whether ``path`` is a readable HDF5 file with a surface's ``xcoordinates`` (no checks beyond that).

    Args:
        path: any file.

    Returns:
        True for a surface file (flatness's or loss-landscape's).
    """
    try:
        with _h5py().File(path, "r") as f:
            return "xcoordinates" in f
    except OSError:
        return False


def _attr_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return np.bool_(value)
    if isinstance(value, (list, tuple)):
        return np.asarray(value, dtype=np.float64)
    return value


def _plain(value: Any) -> Any:
    """An HDF5 attribute as plain Python (str, int, float, bool, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _write_direction(group, direction: dict[str, torch.Tensor]) -> None:
    names = list(direction)
    group.attrs["names"] = json.dumps(names)
    for name in names:
        group.create_dataset(name, data=direction[name].detach().cpu().float().numpy())


def _read_direction(group) -> dict[str, torch.Tensor]:
    names = json.loads(_plain(group.attrs["names"])) if "names" in group.attrs else sorted(group.keys())
    return {name: torch.from_numpy(np.asarray(group[name][()], dtype=np.float32).copy()) for name in names}


def file_layout(attrs: dict[str, Any]) -> str:
    """The index order of a file's 2-D arrays.

    ``"xy"`` ([j, i]), ``"ij"`` (older flatness files) or ``FOREIGN_LAYOUT`` (a file written by
    loss-landscape).
    """
    if not attrs.get("layout") and "flatness_version" not in attrs:
        return FOREIGN_LAYOUT
    layout = str(attrs.get("layout") or OLD_LAYOUT).lower()
    if layout not in (LAYOUT, OLD_LAYOUT):
        raise FlatnessError(f"unknown surface layout {layout!r} (expected '{LAYOUT}' or '{OLD_LAYOUT}')")
    return layout


def as_xy(array: np.ndarray, layout: str) -> np.ndarray:
    """A value array in this version's (ny, nx) order, whatever the file's ``layout``.

    Args:
        array: as stored; 1-D arrays need no change.
        layout: the file's layout (``file_layout``).

    Returns:
        The array with ``[j, i]`` at (x_i, y_j) (a transposed copy for "ij" files).
    """
    if array.ndim == 2 and layout == OLD_LAYOUT:
        return np.ascontiguousarray(array.T)
    if array.ndim == 2 and layout == FOREIGN_LAYOUT:
        return np.ascontiguousarray(array).reshape(array.shape[1], array.shape[0])
    return array


def create_surface(
    path: str,
    *,
    xcoordinates: np.ndarray,
    ycoordinates: np.ndarray | None,
    splits: Sequence[str],
    directions: Sequence[dict[str, torch.Tensor]],
    attrs: dict[str, Any],
    pca: dict[str, Any] | None = None,
    accuracy: bool = True,
) -> None:
    """Write a new surface file complete (NaN values), atomically.

    It is written under a temporary name, then renamed to ``path`` in one step (replacing a file
    there: the caller has checked ``--force``). 2-D arrays are (ny, nx), layout "xy". Without
    ``accuracy`` (a regression loss) the file has loss arrays only: no ``*_acc``, no ``accuracy_unit``.
    """
    _h5py()  # a clear error when h5py is missing
    shape = (len(xcoordinates),) if ycoordinates is None else (len(ycoordinates), len(xcoordinates))
    # Built in memory, written with plain file I/O: on a full disk HDF5 crashed freeing a half-written file
    with atomic_h5py(path) as f:
        f.create_dataset("xcoordinates", data=np.asarray(xcoordinates, dtype=np.float64))
        if ycoordinates is not None:
            f.create_dataset("ycoordinates", data=np.asarray(ycoordinates, dtype=np.float64))
        for split in splits:
            for what in ("loss", "acc") if accuracy else ("loss",):
                f.create_dataset(f"{split}_{what}", data=np.full(shape, np.nan, dtype=np.float64))
        f.create_dataset("computed", data=np.zeros(shape, dtype=np.uint8))
        group = f.create_group("directions")
        for axis, direction in zip(("x", "y"), directions, strict=False):
            _write_direction(group.create_group(axis), direction)
        if pca is not None:
            g = f.create_group("pca")
            ratios = np.asarray(pca["explained_variance_ratio"], np.float64)
            g.create_dataset("explained_variance_ratio", data=ratios)
            g.create_dataset("coordinates", data=np.asarray(pca["coordinates"], np.float64))
            g.create_dataset("epochs", data=np.asarray(pca["epochs"], np.int64))
            g.attrs["reference"] = str(pca.get("reference", ""))
        full = dict(attrs)
        full.update(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "layout": LAYOUT,
                "missing": "nan",
            }
        )
        if accuracy:
            full["accuracy_unit"] = "percent"
        full.setdefault("seconds", 0.0)
        for key, value in full.items():
            f.attrs[key] = _attr_value(value)


def check_shapes(
    path: str, xcoordinates: np.ndarray, ycoordinates: np.ndarray | None, arrays: dict[str, np.ndarray]
) -> None:
    """The one shape check of a surface file's arrays against its coordinates.

    Issue 15: a 2-D array without y coordinates, or a value array of the wrong length, was drawn or
    resumed anyway.

    Args:
        path: the file, for messages.
        xcoordinates: the x axis (1-D).
        ycoordinates: the y axis, None for a 1D surface.
        arrays: name -> array, in (ny, nx) order.

    Returns:
        None; raises FlatnessError naming the first array that does not fit.
    """
    if np.ndim(xcoordinates) != 1 or (ycoordinates is not None and np.ndim(ycoordinates) != 1):
        raise FlatnessError(f"{path}: its coordinates are not 1-D arrays; the file is damaged")
    want = (len(xcoordinates),) if ycoordinates is None else (len(ycoordinates), len(xcoordinates))
    for name, array in arrays.items():
        if np.shape(array) != want:
            where = (
                "a 1D surface (the file has no y coordinates)"
                if ycoordinates is None and np.ndim(array) == 2
                else f"its coordinates {want}"
            )
            raise FlatnessError(
                f"{path}: {name} has shape {np.shape(array)}, which does not fit {where}; the file is damaged"
            )


class SurfaceFile:
    """An existing surface file, its values held in (ny, nx) order whatever its layout.

    Opened read-only to check it (so a refused ``--resume`` leaves it untouched, bytes and mtime),
    then ``make_writable()`` reopens it ``r+`` to write value chunks (in the file's own layout).
    """

    def __init__(self, path: str):
        h5py = _h5py()
        self.path = path
        try:
            self._file = h5py.File(path, "r")
        except (OSError, ValueError) as err:
            raise FlatnessError(
                f"{path} cannot be opened as a surface file ({str(err).splitlines()[0][:120]}); "
                "it may be damaged: move it away, or rerun with --force to start over"
            ) from None
        try:
            f = self._file
            self.attrs = {k: _plain(v) for k, v in f.attrs.items()}
            if self.attrs.get("format") != FORMAT:
                raise FlatnessError(f"{path} is not a flatness surface file (no '{FORMAT}' marker)")
            if int(self.attrs.get("format_version", 0)) > FORMAT_VERSION:
                raise FlatnessError(f"{path} was written by a newer flatness; upgrade")
            self.xcoordinates = np.asarray(f["xcoordinates"][()], dtype=np.float64)
            self.ycoordinates = np.asarray(f["ycoordinates"][()], dtype=np.float64) if "ycoordinates" in f else None
            self.layout = file_layout(self.attrs)
            self.values = {k: as_xy(np.asarray(f[k][()], dtype=np.float64), self.layout) for k in VALUE_KEYS if k in f}
            self.computed = as_xy(np.asarray(f["computed"][()], dtype=np.uint8), self.layout)
            check_shapes(path, self.xcoordinates, self.ycoordinates, {**self.values, "computed": self.computed})
            self.directions = [_read_direction(f["directions"][axis]) for axis in ("x", "y") if axis in f["directions"]]
        except FlatnessError:
            self._file.close()
            raise
        except (OSError, KeyError, ValueError) as err:
            self._file.close()
            raise FlatnessError(
                f"{path} is a damaged surface file ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:120] if str(err) else ''}); "
                "move it away, or rerun with --force to start over"
            ) from None

    def make_writable(self) -> None:
        """Reopen the file for writing (``r+``), after the checks passed."""
        h5py = _h5py()
        self._file.close()
        try:
            self._file = h5py.File(self.path, "r+")
        except (OSError, ValueError) as err:
            reason = str(err).splitlines()[0][:120]
            raise FlatnessError(f"{self.path} cannot be opened for writing ({reason})") from None

    def write(self, values: dict[str, np.ndarray], computed: np.ndarray, seconds: float) -> None:
        """Overwrite the value arrays in place (values first, then the ``computed`` mask) and flush.

        Args:
            values: key -> array in (ny, nx) order (written back transposed into an "ij" file).
            computed: the mask, same shape.
            seconds: grid time so far.
        """
        f = self._file
        for key, array in values.items():
            f[key][...] = as_xy(array, self.layout)  # the transpose is its own inverse
        f["computed"][...] = as_xy(computed, self.layout)
        f.attrs["seconds"] = float(seconds)
        f.flush()

    def close(self) -> None:
        """Close the file (never raises)."""
        with contextlib.suppress(Exception):
            self._file.close()

    def __enter__(self) -> SurfaceFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def holds_no_point(path: str) -> bool:
    """True for a flatness surface file in which no point was computed yet (its run failed before its first).

    Such a file holds no result, so a plain rerun replaces it rather than asking for ``--resume``; any
    file that cannot be read as a surface, or holds a point, is False.
    """
    try:
        with SurfaceFile(path) as surface:
            return not surface.computed.any()
    except FlatnessError:
        return False


def check_matches(stored: dict[str, Any], wanted: dict[str, Any], path: str, keys: Sequence[str]) -> None:
    """Refuse to resume ``path`` when any of ``keys`` differs between the file and this request."""
    labels = {"checkpoint_sha256": "checkpoint", "direction_source_sha256": "direction source"}
    for key in keys:
        # files written before precision was recorded were all fp32
        a, b = stored.get(key, "fp32" if key == "precision" else ""), wanted.get(key, "")
        a = "" if a is None else a
        b = "" if b is None else b
        if isinstance(a, float) or isinstance(b, float):
            same = _as_float(a) == _as_float(b)
        else:
            same = str(a) == str(b)
        if not same:
            what = labels.get(key, key)
            if key.endswith("sha256"):  # a digest is recognisable by its start
                a, b = (str(v)[:12] + "…" if len(str(v)) > 12 else v for v in (a, b))
            raise FlatnessError(
                f"{path} was made for another {what} ({key} {a!s} in the file, "
                f"{b!s} asked for); use another --out, or --force to overwrite it"
            )


def _as_float(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def read_surface(path: str) -> dict[str, Any]:
    """A surface file as plain data, for plotting and comparison.

    Keys: ``xcoordinates``; ``ycoordinates`` (2D only); ``train_loss``, ``train_acc``, ``test_loss``,
    ``test_acc`` (those present; NaN where not computed; accuracy in percent; 2-D arrays shaped
    (ny, nx) with ``[j, i]`` at (x_i, y_j) whatever the file's layout); ``computed`` (bool
    array); ``attrs`` (dict); ``pca`` (dict with ``explained_variance_ratio``, ``coordinates``,
    ``epochs``, ``reference``) or None.
    """
    h5py = _h5py()
    if not os.path.isfile(path):
        raise FlatnessError(f"surface file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            out: dict[str, Any] = {"xcoordinates": np.asarray(f["xcoordinates"][()], dtype=np.float64)}
            if "ycoordinates" in f:
                out["ycoordinates"] = np.asarray(f["ycoordinates"][()], dtype=np.float64)
            out["attrs"] = {k: _plain(v) for k, v in f.attrs.items()}
            layout = file_layout(out["attrs"])
            for key in VALUE_KEYS:
                if key in f:
                    out[key] = as_xy(np.asarray(f[key][()], dtype=np.float64), layout)
            if "computed" in f:
                out["computed"] = as_xy(np.asarray(f["computed"][()]).astype(bool), layout)
            check_shapes(
                path,
                out["xcoordinates"],
                out.get("ycoordinates"),
                {k: out[k] for k in (*VALUE_KEYS, "computed") if k in out},
            )
            out["pca"] = None
            if "pca" in f:
                g = f["pca"]
                out["pca"] = {
                    "explained_variance_ratio": np.asarray(g["explained_variance_ratio"][()]),
                    "coordinates": np.asarray(g["coordinates"][()]),
                    "epochs": np.asarray(g["epochs"][()]),
                    "reference": _plain(g.attrs.get("reference", "")),
                }
    except (OSError, KeyError, ValueError) as err:
        raise FlatnessError(
            f"{path} is not a readable surface file ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:120] if str(err) else ''})"
        ) from None
    return out


def read_directions(path: str) -> list[dict[str, torch.Tensor]]:
    """The stored directions ``[x]`` or ``[x, y]``, each a dict state name -> float32 tensor."""
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            return [_read_direction(f["directions"][axis]) for axis in ("x", "y") if axis in f["directions"]]
    except (OSError, KeyError, ValueError) as err:
        raise FlatnessError(f"{path} holds no readable directions ({type(err).__name__})") from None
