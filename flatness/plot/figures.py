"""Pictures of surfaces and spectra: ``plot_files(paths, ...)`` behind ``flatness plot``.

Inputs are the project's own files:

* a surface HDF5 (``flatness surface``; loss-landscape's layout: ``xcoordinates``, ``ycoordinates``,
  ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``): 1D -> loss and accuracy curves (several
  1D files are overlaid on shared axes); 2D -> contour (labelled levels), filled contour, heatmap and
  3D surface, with the PCA trajectory drawn on top when the file holds one;
* a probe JSON (``flatness probe``): the Hessian spectral density (stochastic Lanczos quadrature) on a
  log scale, with the top eigenvalues marked;
* a run folder (``flatness train``): its training curves from ``metrics.jsonl`` (``plot.training``).

Everything is drawn with matplotlib's Agg canvas (no display, no pyplot state), so it runs on a server
and in a notebook alike. ``write_vtp`` exports a surface to ParaView's XML PolyData.

Figures are derived outputs, but the project's rule holds: an existing file is never replaced unless
``force=True``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flatness.core.errors import FlatnessError
from flatness.core.paths import check_distinct, check_paths
from flatness.plot.curves import plot_1d
from flatness.plot.loading import file_type, load_probe, load_surface
from flatness.plot.maps import KINDS_2D, plot_2d
from flatness.plot.spectra import plot_spectrum
from flatness.plot.style import FORMATS, VALUES, common_limits, pick_value
from flatness.plot.training import load_run, plot_training
from flatness.plot.vtp import write_vtp


def parse_kinds(kinds: str | None) -> list[str]:
    """``"contour,heatmap"`` or ``"all"`` (or None) -> the list of 2D kinds to draw, checked."""
    if not kinds or kinds.strip().lower() == "all":
        return list(KINDS_2D)
    out = []
    for k in kinds.split(","):
        k = k.strip().lower()
        if k == "all":
            return list(KINDS_2D)
        if k not in KINDS_2D:
            raise FlatnessError(f"unknown plot kind {k!r}: use {', '.join(KINDS_2D)} or all")
        if k not in out:
            out.append(k)
    return out


@dataclass
class PlotSettings:
    """The options of ``flatness plot`` (see ``flatness plot --help``).

    ``out_dir`` None: beside each input. ``kinds``: comma-separated 2D kinds or "all". ``log`` None:
    linear in 1D, in 2D log when the loss spans more than a factor of 20. ``vmin``/``vmax``: shared
    colour limits of 2D pictures (default: the common min and max). ``value``: the 2D quantity
    (default train_loss, else test_loss). ``vtp``: also export ParaView files. ``force``: replace.
    """

    out_dir: str | None = None
    kinds: str | None = "all"
    fmt: str = "png"
    log: bool | None = None
    vmin: float | None = None
    vmax: float | None = None
    vtp: bool = False
    value: str | None = None
    force: bool = False


def plot_files(paths: Sequence[str], settings: PlotSettings | None = None, **options: Any) -> list[str]:
    """Draw every figure the inputs call for.

    Several 1D surfaces are overlaid in one figure (``overlay-1d.FMT``); several 2D surfaces share their
    colour limits (``vmin``/``vmax``, or the common min and max over all of them). Nothing is drawn
    when a figure exists already and ``force`` is off.

    Args:
        paths: surface .h5 and probe .json files, and run folders.
        settings: the options (default: all defaults).
        **options: ``PlotSettings`` fields overriding ``settings`` (``kinds="contour", force=True``).

    Returns:
        The paths written.
    """
    st = dataclasses.replace(settings or PlotSettings(), **options)
    if not paths:
        raise FlatnessError("no input files: name surface .h5 or probe .json files, or run folders")
    fmt = st.fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise FlatnessError(f"unknown figure format {fmt!r}: use one of {', '.join(FORMATS)}")
    st = dataclasses.replace(st, fmt=fmt)
    kind_list = parse_kinds(st.kinds)
    for label, value in (("--vmin", st.vmin), ("--vmax", st.vmax)):
        if value is not None:
            if not math.isfinite(value):
                raise FlatnessError(f"{label} must be a finite number, got {value}")
    if st.vmin is not None and st.vmax is not None and not st.vmin < st.vmax:
        raise FlatnessError(f"--vmin must be below --vmax, got {st.vmin:g} and {st.vmax:g}")
    check_paths({"FILE": list(paths)}, {"--out": st.out_dir}, folders=["--out"])
    planned = _plan(st, kind_list, *_load_inputs(paths))
    # issue 15: two inputs with one stem would write one figure twice; a figure never replaces an input
    figures = {f"figure {i + 1} ({os.path.basename(p)})": p for i, (p, _) in enumerate(planned)}
    check_distinct({"FILE": list(paths)}, figures)
    if not st.force:  # refuse before drawing anything, so a refusal leaves no partial set of figures
        existing = [p for p, _ in planned if os.path.exists(p)]
        if existing:
            raise FlatnessError(
                f"{existing[0]} exists"
                + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
                + "; pass --force to replace"
            )
    return [draw(p) for p, draw in planned]


def _load_inputs(paths: Sequence[str]):
    """The inputs sorted: (1D surfaces, 2D surfaces, probes, runs)."""
    surfaces_1d, surfaces_2d, probes, runs = [], [], [], []
    for path in paths:
        if file_type(path) == "run":
            runs.append(load_run(path))
        elif file_type(path) == "surface":
            surf = load_surface(path)
            vals = [v for v in VALUES if surf.get(v) is not None]
            if not vals:
                raise FlatnessError(f"{path} holds no loss or accuracy values")
            if not any(np.isfinite(np.asarray(surf[v], dtype=float)).any() for v in vals):
                # an empty picture is not a landscape: every point is missing (NaN) or infinite
                raise FlatnessError(f"{path} holds no computed point (every value is NaN or infinite); nothing to draw")
            is_2d = surf.get("ycoordinates") is not None and np.asarray(surf[vals[0]]).ndim == 2
            (surfaces_2d if is_2d else surfaces_1d).append(surf)
        else:
            probe = load_probe(path)
            eigenvalues = (probe.get("hessian") or {}).get("eigenvalues") or []
            bad = next((i for i, v in enumerate(eigenvalues) if v is None or not math.isfinite(v)), None)
            if bad is not None:
                raise FlatnessError(f"{path}: Hessian eigenvalue #{bad + 1} is {eigenvalues[bad]}; no spectrum exists")
            probes.append(probe)
    return surfaces_1d, surfaces_2d, probes, runs


def _plan(st: PlotSettings, kind_list: list[str], surfaces_1d, surfaces_2d, probes, runs) -> list[tuple[str, Any]]:
    """Every figure to write: (path, draw(path)) pairs, nothing drawn yet."""
    fmt, log, force = st.fmt, st.log, st.force

    def target(src: str, suffix: str) -> str:
        folder = st.out_dir or os.path.dirname(os.path.abspath(src))
        stem = os.path.splitext(os.path.basename(src))[0]
        return os.path.join(folder, f"{stem}{suffix}")

    planned: list[tuple[str, Any]] = []
    if len(surfaces_1d) == 1:
        planned.append(
            (
                target(surfaces_1d[0]["path"], f"-1d.{fmt}"),
                lambda p: plot_1d(surfaces_1d, p, log=bool(log), force=force),
            )
        )
    elif surfaces_1d:
        folder = st.out_dir or os.path.dirname(os.path.abspath(surfaces_1d[0]["path"]))
        planned.append(
            (os.path.join(folder, f"overlay-1d.{fmt}"), lambda p: plot_1d(surfaces_1d, p, log=bool(log), force=force))
        )
    if surfaces_2d:
        value_2d = st.value or pick_value(surfaces_2d[0], None)
        for s in surfaces_2d:
            pick_value(s, value_2d)
        limits = common_limits(surfaces_2d, value_2d, st.vmin, st.vmax)
        for surf in surfaces_2d:
            for kind in kind_list:
                planned.append(
                    (
                        target(surf["path"], f"-{kind}.{fmt}"),
                        lambda p, s=surf, k=kind: plot_2d(s, p, k, value_2d, log=log, force=force, limits=limits),
                    )
                )
    for probe in probes:
        planned.append(
            (target(probe["path"], f"-spectrum.{fmt}"), lambda p, q=probe: plot_spectrum([q], p, force=force))
        )
    for run in runs:  # beside the input is inside the run folder; in --out, named after the run
        name = os.path.basename(os.path.abspath(run["path"]))
        where = os.path.join(st.out_dir, f"{name}-training.{fmt}") if st.out_dir else None
        where = where or os.path.join(run["path"], f"training.{fmt}")
        planned.append((where, lambda p, r=run: plot_training(r, p, force=force)))
    if st.vtp:
        for surf in surfaces_1d + surfaces_2d:
            planned.append(
                (
                    target(surf["path"], ".vtp"),
                    lambda p, s=surf: write_vtp(s, p, value=st.value, log=bool(log), force=force),
                )
            )
    return planned
