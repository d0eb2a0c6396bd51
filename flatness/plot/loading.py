"""Reading the plotter's inputs: surface HDF5 files and probe JSONs, through their formats' owners."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from flatness.core.errors import FlatnessError
from flatness.formats.checkpoint import METRICS
from flatness.formats.probe_file import read_probe
from flatness.formats.surface_file import read_surface


def file_type(path: str) -> str:
    """'surface', 'probe' or 'run' (a run folder) for an input the plotter understands; a one-line error otherwise."""
    if not os.path.exists(path):
        raise FlatnessError(f"file not found: {path}")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, METRICS)):
            return "run"
        raise FlatnessError(f"{path} is a folder without {METRICS}; name a surface .h5, a probe .json or a run folder")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".h5", ".hdf5"):
        return "surface"
    if ext == ".json":
        return "probe"
    raise FlatnessError(f"{path}: unknown file type '{ext or '(none)'}'; expected a surface .h5 or a probe .json")


def load_surface(path: str) -> dict[str, Any]:
    """A surface file as a dict, read by ``flatness.formats.surface_file`` (the format's owner)."""
    surf = dict(read_surface(path))
    if "xcoordinates" not in surf or surf.get("xcoordinates") is None:
        raise FlatnessError(f"{path} is not a surface file (no 'xcoordinates')")
    surf.setdefault("attrs", {})
    surf.setdefault("pca", None)
    if str(surf["attrs"].get("accuracy_unit", "")).lower() != "percent":  # fractions -> percent
        for key in ("train_acc", "test_acc"):
            if surf.get(key) is not None:
                surf[key] = 100.0 * np.asarray(surf[key], dtype=float)
    surf["path"] = path
    return surf


def load_probe(path: str) -> dict[str, Any]:
    """A probe JSON as a dict, read and validated by ``flatness.formats.probe_file`` (the format's owner)."""
    probe = dict(read_probe(path))
    probe["path"] = path
    return probe
