"""Pictures of surfaces and spectra: ``plot_files(paths, ...)`` behind ``flatness plot``.

Inputs are the project's own files:

* a surface HDF5 (``flatness surface``; loss-landscape's layout: ``xcoordinates``, ``ycoordinates``,
  ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``): 1D -> loss and accuracy curves (several
  1D files are overlaid on shared axes); 2D -> contour (labelled levels), filled contour, heatmap and
  3D surface, with the PCA trajectory drawn on top when the file holds one;
* a probe JSON (``flatness probe``): the Hessian spectral density (stochastic Lanczos quadrature) on a
  log scale, with the top eigenvalues marked.

Everything is drawn with matplotlib's Agg canvas (no display, no pyplot state), so it runs on a server
and in a notebook alike. ``write_vtp`` exports a surface to ParaView's XML PolyData.

Figures are derived outputs, but the project's rule holds: an existing file is never replaced unless
``force=True``.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from flatness.core.errors import FlatnessError
from flatness.core.fileio import atomic_write, atomic_write_text

FORMATS = ("png", "pdf", "svg")
KINDS_2D = ("contour", "contourf", "heatmap", "3d")
VALUES = ("train_loss", "test_loss", "train_acc", "test_acc")
DPI = 130


# --------------------------------------------------------------------------- reading inputs

def file_type(path: str) -> str:
    """'surface' or 'probe' for a file the plotter understands; a one-line FlatnessError otherwise."""
    if not os.path.exists(path):
        raise FlatnessError(f"file not found: {path}")
    if os.path.isdir(path):
        raise FlatnessError(f"{path} is a folder; name a surface .h5 or a probe .json file")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".h5", ".hdf5"):
        return "surface"
    if ext == ".json":
        return "probe"
    raise FlatnessError(f"{path}: unknown file type '{ext or '(none)'}'; expected a surface .h5 or a probe .json")


def load_surface(path: str) -> Dict[str, Any]:
    """A surface file as a dict, read by ``flatness.formats.surface_file`` (the format's owner)."""
    from flatness.formats.surface_file import read_surface

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


def load_probe(path: str) -> Dict[str, Any]:
    """A probe JSON as a dict, read and validated by ``flatness.formats.probe_file`` (the format's owner)."""
    from flatness.formats.probe_file import read_probe

    probe = dict(read_probe(path))
    probe["path"] = path
    return probe


# --------------------------------------------------------------------------- small helpers

def _figure(figsize=(6.4, 4.8)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str, force: bool = False) -> str:
    """Write ``fig`` atomically in the format of ``path``'s extension; refuse to replace without force."""
    if os.path.exists(path) and not force:
        raise FlatnessError(f"{path} exists; pass --force to replace it")
    fmt = os.path.splitext(path)[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise FlatnessError(f"unknown figure format {fmt!r}: use one of {', '.join(FORMATS)}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, bbox_inches="tight"))
    return path


def _finite(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float).ravel()
    return values[np.isfinite(values)]


def surface_label(surf: Dict[str, Any]) -> str:
    """A short legend label: the checkpoint's run (method, seed) or the file name."""
    attrs = surf.get("attrs") or {}
    for key in ("label",):
        if attrs.get(key):
            return str(attrs[key])
    ckpt = attrs.get("checkpoint") or attrs.get("checkpoint_path")
    if ckpt:
        parent = os.path.basename(os.path.dirname(str(ckpt)))
        return parent or os.path.basename(str(ckpt))
    return os.path.splitext(os.path.basename(surf.get("path", "surface")))[0]


def surface_title(surf: Dict[str, Any], what: str = "") -> str:
    """What was plotted: checkpoint, direction (+normalisation), split, samples."""
    attrs = surf.get("attrs") or {}
    parts = []
    ckpt = attrs.get("checkpoint") or attrs.get("checkpoint_path")
    if ckpt:
        ckpt = str(ckpt)
        parent = os.path.basename(os.path.dirname(ckpt))
        parts.append(f"{parent}/{os.path.basename(ckpt)}" if parent else os.path.basename(ckpt))
    else:
        parts.append(os.path.basename(surf.get("path", "")))
    direction = attrs.get("direction")
    if direction:
        direction = str(direction)
        kind, _, target = direction.partition(":")
        target = target or str(attrs.get("direction_source") or "")
        if kind in ("interp", "pca") and target:
            direction = f"{kind} → {os.path.basename(os.path.dirname(target)) or os.path.basename(target)}"
        norm = attrs.get("norm")
        if norm and str(direction).startswith("random"):
            direction += f", {norm}-normalised"
        parts.append(f"direction: {direction}")
    split = attrs.get("split")
    samples = attrs.get("samples")
    if split:
        split = "train + test" if split == "both" else split
        parts.append(f"split: {split}" + (f" ({samples} samples)" if samples not in (None, "", 0) else ""))
    title = " | ".join(parts)
    return f"{what}\n{title}" if what else title


def _axis_name(surf: Dict[str, Any], axis: str) -> str:
    attrs = surf.get("attrs") or {}
    direction = str(attrs.get("direction") or "")
    if direction.startswith("interp"):
        return "α (0 = the checkpoint, 1 = the interpolation target)" if axis == "x" else "β"
    if direction.startswith("pca"):
        return f"PC{1 if axis == 'x' else 2} coordinate"
    if direction.startswith("eigen"):
        return f"step along eigenvector {1 if axis == 'x' else 2}"
    return f"step along direction {'δ' if axis == 'x' else 'η'}" + (
        " (filter-normalised units)" if str(attrs.get("norm", "filter")) == "filter" else "")


def common_limits(surfaces: Sequence[Dict[str, Any]], value: str,
                  vmin: Optional[float] = None, vmax: Optional[float] = None) -> Tuple[float, float]:
    """Colour limits shared by several surfaces: the given ones, else the min and max over all of them."""
    pool = np.concatenate([_finite(s[value]) for s in surfaces if s.get(value) is not None] or [np.array([])])
    lo = float(vmin) if vmin is not None else (float(pool.min()) if pool.size else 0.0)
    hi = float(vmax) if vmax is not None else (float(pool.max()) if pool.size else 1.0)
    if not hi > lo:
        hi = lo + (abs(lo) * 1e-3 or 1e-3)
    return lo, hi


def _use_log(value: str, lo: float, hi: float, log: Optional[bool]) -> bool:
    if log is not None:
        return bool(log) and lo > 0
    return value.endswith("loss") and lo > 0 and hi / lo > 20


def _levels(lo: float, hi: float, logscale: bool, n: int = 20) -> np.ndarray:
    if logscale:
        return np.geomspace(lo, hi, n)
    return np.linspace(lo, hi, n)


def _value_name(value: str) -> str:
    split, _, what = value.partition("_")
    return f"{split} {'loss (mean cross-entropy)' if what == 'loss' else 'accuracy'}"


def _pick_value(surf: Dict[str, Any], value: Optional[str]) -> str:
    if value:
        if surf.get(value) is None:
            raise FlatnessError(f"{surf['path']} has no '{value}' (it has: "
                                f"{', '.join(v for v in VALUES if surf.get(v) is not None) or 'no values'})")
        return value
    for candidate in ("train_loss", "test_loss"):
        if surf.get(candidate) is not None:
            return candidate
    raise FlatnessError(f"{surf['path']} holds no loss values")


def _trajectory(surf: Dict[str, Any]) -> Optional[np.ndarray]:
    """(N, 2) trajectory coordinates in the PCA plane, when the surface has them."""
    pca = surf.get("pca")
    if not pca:
        return None
    for key in ("coordinates", "trajectory", "projected", "coords", "xy"):
        if pca.get(key) is not None:
            arr = np.asarray(pca[key], dtype=float)
            if arr.ndim == 2 and arr.shape[1] == 2:
                return arr
            if arr.ndim == 2 and arr.shape[0] == 2:
                return arr.T
    xs = pca.get("x") if pca.get("x") is not None else pca.get("trajectory_x")
    ys = pca.get("y") if pca.get("y") is not None else pca.get("trajectory_y")
    if xs is not None and ys is not None:
        return np.stack([np.asarray(xs, float), np.asarray(ys, float)], axis=1)
    return None


def _explained(surf: Dict[str, Any]) -> Optional[Sequence[float]]:
    pca = surf.get("pca") or {}
    for key in ("explained_variance_ratio", "explained", "variance_ratio"):
        if pca.get(key) is not None:
            return list(np.asarray(pca[key], float).ravel())
    return None


# --------------------------------------------------------------------------- 1D curves

def plot_1d(surfaces: Sequence[Dict[str, Any]], path: str, log: bool = False, force: bool = False,
            labels: Optional[Sequence[str]] = None, title: Optional[str] = None,
            ylim: Optional[Tuple[float, float]] = None) -> str:
    """Loss (left) and accuracy (right) along x for one or several 1D surfaces on shared axes."""
    fig = _figure((11, 4.2))
    ax_loss, ax_acc = fig.subplots(1, 2)
    colors = [f"C{i}" for i in range(10)]
    for i, surf in enumerate(surfaces):
        x = np.asarray(surf["xcoordinates"], float)
        label = labels[i] if labels else surface_label(surf)
        color = colors[i % len(colors)]
        for split, style in (("train", "-"), ("test", "--")):
            loss, acc = surf.get(f"{split}_loss"), surf.get(f"{split}_acc")
            if loss is not None:
                ax_loss.plot(x, np.asarray(loss, float), style, color=color, label=f"{label} {split}")
            if acc is not None:
                ax_acc.plot(x, np.asarray(acc, float), style, color=color, label=f"{label} {split}")
    if log:
        ax_loss.set_yscale("log")
    if ylim:
        ax_loss.set_ylim(*ylim)
    ax_loss.set_xlabel(_axis_name(surfaces[0], "x"))
    ax_acc.set_xlabel(_axis_name(surfaces[0], "x"))
    ax_loss.set_ylabel("loss (mean cross-entropy)" + (", log scale" if log else ""))
    ax_acc.set_ylabel("accuracy (%)")
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.axvline(0, color="0.6", lw=0.8)
        if str((surfaces[0].get("attrs") or {}).get("direction", "")).startswith("interp"):
            ax.axvline(1, color="0.6", lw=0.8)
        ax.legend(fontsize=8)
    if title is None:
        title = (surface_title(surfaces[0], "1D loss surface") if len(surfaces) == 1 else
                 "1D loss surfaces: " + ", ".join(labels or [surface_label(s) for s in surfaces]) +
                 f"\n{surface_title(surfaces[0]).split(' | ', 1)[-1]}")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, force)


# --------------------------------------------------------------------------- 2D pictures

def _grid(surf: Dict[str, Any], value: str):
    x = np.asarray(surf["xcoordinates"], float)
    y = np.asarray(surf["ycoordinates"], float)
    z = np.asarray(surf[value], float)  # accuracy is in percent (load_surface)
    if z.shape != (x.size, y.size):
        raise FlatnessError(f"{surf['path']}: {value} has shape {z.shape}, expected ({x.size}, {y.size})")
    # [i, j] is at (x_i, y_j): meshgrid with indexing="ij" keeps that orientation.
    X, Y = np.meshgrid(x, y, indexing="ij")
    return X, Y, z


def draw_2d(ax, surf: Dict[str, Any], kind: str, value: str, lo: float, hi: float, logscale: bool,
            colorbar: bool = True, fig=None, trajectory: bool = True):
    """Draw one 2D picture of ``surf`` into ``ax`` (contour, contourf or heatmap)."""
    from matplotlib.colors import LogNorm, Normalize

    X, Y, Z = _grid(surf, value)
    norm = LogNorm(vmin=lo, vmax=hi) if logscale else Normalize(vmin=lo, vmax=hi)
    Zc = np.clip(np.where(np.isfinite(Z), Z, np.nan), lo, hi)
    levels = _levels(lo, hi, logscale)
    cmap = "viridis"
    mappable = None
    if kind == "contour":
        mappable = ax.contour(X, Y, Zc, levels=levels, norm=norm, cmap=cmap, linewidths=1.0)
        fmt = (lambda v: f"{v:.3g}")
        ax.clabel(mappable, mappable.levels[::2], inline=True, fontsize=7, fmt=fmt)
    elif kind == "contourf":
        mappable = ax.contourf(X, Y, Zc, levels=levels, norm=norm, cmap=cmap, extend="neither")
        ax.contour(X, Y, Zc, levels=levels[::2], colors="k", linewidths=0.3, alpha=0.5)
    elif kind == "heatmap":
        x, y = X[:, 0], Y[0, :]
        mappable = ax.pcolormesh(x, y, Zc.T, norm=norm, cmap=cmap, shading="nearest")
    else:
        raise ValueError(kind)
    ax.plot([0], [0], marker="*", color="red", markersize=10, linestyle="none", label="trained weights")
    traj = _trajectory(surf) if trajectory else None
    if traj is not None:
        ax.plot(traj[:, 0], traj[:, 1], "-o", color="white", markersize=3, lw=1.2,
                markeredgecolor="k", label="training trajectory")
        ax.plot(traj[0, 0], traj[0, 1], "s", color="orange", markeredgecolor="k", label="start")
    ax.set_xlabel(_axis_name(surf, "x"))
    ax.set_ylabel(_axis_name(surf, "y"))
    ax.set_aspect("auto")
    ax.legend(fontsize=7, loc="upper right")
    if colorbar and fig is not None and mappable is not None:
        from matplotlib.ticker import FormatStrFormatter

        cb = fig.colorbar(mappable, ax=ax, ticks=levels[::3] if logscale else None,
                          format=FormatStrFormatter("%.3g"))
        cb.minorticks_off()
        unit = "%" if value.endswith("acc") else ""
        cb.set_label(_value_name(value) + (f" ({unit})" if unit else "") + (" — log scale" if logscale else ""))
    return mappable


def plot_2d(surf: Dict[str, Any], path: str, kind: str, value: Optional[str] = None,
            vmin: Optional[float] = None, vmax: Optional[float] = None, log: Optional[bool] = None,
            force: bool = False, limits: Optional[Tuple[float, float]] = None) -> str:
    """One 2D figure of ``kind`` (contour, contourf, heatmap or 3d) for a 2D surface."""
    if kind not in KINDS_2D:
        raise FlatnessError(f"unknown plot kind {kind!r}: use {', '.join(KINDS_2D)} or all")
    value = _pick_value(surf, value)
    lo, hi = limits if limits else common_limits([surf], value, vmin, vmax)
    logscale = _use_log(value, lo, hi, log)
    what = {"contour": "contour", "contourf": "filled contour", "heatmap": "heatmap", "3d": "3D surface"}[kind]
    title = surface_title(surf, f"{_value_name(value)}: {what}")
    extra = _explained(surf)
    if extra and len(extra) >= 2:
        title += f"\nPCA explained variance: PC1 {100 * extra[0]:.1f}%, PC2 {100 * extra[1]:.1f}%"
    if kind == "3d":
        from mpl_toolkits.mplot3d import Axes3D  # noqa: F401  (registers the 3d projection)
        from matplotlib.colors import LogNorm, Normalize

        fig = _figure((7.5, 6))
        ax = fig.add_subplot(projection="3d")
        X, Y, Z = _grid(surf, value)
        s_lo, s_hi = lo, hi
        Zc = np.clip(np.where(np.isfinite(Z), Z, s_hi), s_lo, s_hi)
        if logscale:
            Zplot = np.log10(Zc)
            zlabel = f"log10 {_value_name(value)}"
            norm = Normalize(np.log10(s_lo), np.log10(s_hi))
        else:
            Zplot, zlabel, norm = Zc, _value_name(value), Normalize(s_lo, s_hi)
        mappable = ax.plot_surface(X, Y, Zplot, cmap="viridis", norm=norm, linewidth=0, antialiased=True,
                                   rstride=1, cstride=1)
        ax.set_xlabel(_axis_name(surf, "x"), fontsize=8)
        ax.set_ylabel(_axis_name(surf, "y"), fontsize=8)
        ax.set_zlabel(zlabel, fontsize=8)
        fig.colorbar(mappable, ax=ax, shrink=0.6, pad=0.1).set_label(zlabel)
        ax.set_title(title, fontsize=9)
    else:
        fig = _figure((7, 5.6))
        ax = fig.add_subplot()
        draw_2d(ax, surf, kind, value, lo, hi, logscale, fig=fig)
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path, force)


# --------------------------------------------------------------------------- spectra

def _density_arrays(probe: Dict[str, Any]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """The smoothed density (grid, values) of a probe: the probe JSON holds both whenever the density
    was computed (``flatness.formats.probe_file``)."""
    density = probe.get("density") or {}
    grid, values = density.get("grid"), density.get("values")
    if grid is None or values is None:
        return None
    grid, values = np.asarray(grid, float), np.asarray(values, float)
    if grid.size == 0 or grid.shape != values.shape:
        return None
    return grid, values


def probe_label(probe: Dict[str, Any]) -> str:
    ck = probe.get("checkpoint") or {}
    method, seed = ck.get("method"), ck.get("seed")
    if method is not None:
        return f"{str(method).upper()}" + (f" seed {seed}" if seed is not None else "")
    return os.path.splitext(os.path.basename(probe.get("path", "probe")))[0]


def draw_spectrum(ax, probe: Dict[str, Any], color: str = "C0", label: Optional[str] = None,
                  mark_top: bool = True, floor: float = 1e-8) -> None:
    label = label or probe_label(probe)
    arrays = _density_arrays(probe)
    eig = (probe.get("hessian") or {}).get("eigenvalues") or []
    if arrays is not None:
        grid, values = arrays
        top = float(np.nanmax(values)) if values.size else 1.0
        floor = max(floor, top * 1e-7)
        ax.semilogy(grid, np.maximum(values, floor), color=color, lw=1.2, label=f"{label} density")
    if mark_top and eig:
        for k, lam in enumerate(eig):
            ax.axvline(float(lam), color=color, ls=":", lw=1.0, alpha=0.9,
                       label=(f"{label} top-{len(eig)} eigenvalues (λmax = {float(eig[0]):.4g})"
                              if k == 0 else None))


def plot_spectrum(probes: Sequence[Dict[str, Any]], path: str, force: bool = False,
                  title: Optional[str] = None) -> str:
    """Hessian spectral density (log scale) with the top eigenvalues marked, one or several probes."""
    fig = _figure((7.5, 4.6))
    ax = fig.add_subplot()
    any_density = False
    for i, probe in enumerate(probes):
        draw_spectrum(ax, probe, color=f"C{i % 10}")
        any_density |= _density_arrays(probe) is not None
    if not any_density:
        ax.set_yscale("log")
        ax.text(0.5, 0.5, "no spectral density in this probe\n(run probe with --density)", ha="center",
                va="center", transform=ax.transAxes, color="0.4")
    ax.set_xlabel("Hessian eigenvalue λ of the training loss")
    ax.set_ylabel("spectral density (log scale)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title is None:
        p = probes[0]
        data = p.get("data") or {}
        where = f"{data.get('dataset', '?')} {data.get('split', '?')} split, {data.get('samples', '?')} samples"
        hess = p.get("hessian") or {}
        title = ("Hessian spectrum (stochastic Lanczos quadrature, Gaussian-smoothed); dotted: top eigenvalues "
                 f"by {hess.get('method', '?')}\n" + ", ".join(probe_label(q) for q in probes) + f" | {where}")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path, force)


# --------------------------------------------------------------------------- ParaView export

def write_vtp(surf: Dict[str, Any], path: str, value: Optional[str] = None, log: bool = False,
              zscale: float = 1.0, force: bool = False) -> str:
    """Write ``surf`` as VTK XML PolyData: one point per grid node at (x, y, loss), the loss (and the
    other values present) as point data, quads between neighbours (a polyline for a 1D surface).
    Non-finite values are written at the largest finite value and flagged in the ``finite`` array."""
    if os.path.exists(path) and not force:
        raise FlatnessError(f"{path} exists; pass --force to replace it")
    value = _pick_value(surf, value)
    x = np.asarray(surf["xcoordinates"], float)
    two_d = surf.get("ycoordinates") is not None and np.asarray(surf[value]).ndim == 2
    if two_d:
        y = np.asarray(surf["ycoordinates"], float)
        X, Y = np.meshgrid(x, y, indexing="ij")
        nx, ny = x.size, y.size
    else:
        X, Y = x[:, None], np.zeros((x.size, 1))
        nx, ny = x.size, 1
    z = np.asarray(surf[value], float).reshape(nx, ny)
    finite = np.isfinite(z)
    fill = z[finite].max() if finite.any() else 0.0
    z = np.where(finite, z, fill)
    height = np.log10(np.maximum(z, 1e-12)) if log else z
    # VTK point order: x fastest varies? We use i (x) outer, j (y) inner: point id = i * ny + j.
    pts = np.stack([X.ravel(), Y.ravel(), zscale * height.ravel()], axis=1)
    npts = pts.shape[0]
    arrays = {value: z.ravel(), "finite": finite.ravel().astype(float)}
    for other in VALUES:
        if other != value and surf.get(other) is not None and np.asarray(surf[other]).size == npts:
            arrays[other] = np.asarray(surf[other], float).ravel()
    if two_d and nx > 1 and ny > 1:
        ii, jj = np.meshgrid(np.arange(nx - 1), np.arange(ny - 1), indexing="ij")
        a = (ii * ny + jj).ravel()
        quads = np.stack([a, a + ny, a + ny + 1, a + 1], axis=1)
        cells_tag, conn, offsets, ncells = "Polys", quads.ravel(), 4 * np.arange(1, len(quads) + 1), len(quads)
    else:
        conn = np.arange(npts)
        cells_tag, offsets, ncells = "Lines", np.array([npts]), 1

    def fmt(arr, floats=True):
        arr = np.asarray(arr).ravel()
        return " ".join(repr(float(v)) if floats else str(int(v)) for v in arr)

    lines = ['<?xml version="1.0"?>',
             '<VTKFile type="PolyData" version="0.1" byte_order="LittleEndian">',
             "  <PolyData>",
             f'    <Piece NumberOfPoints="{npts}" NumberOfVerts="0" '
             f'NumberOfLines="{ncells if cells_tag == "Lines" else 0}" NumberOfStrips="0" '
             f'NumberOfPolys="{ncells if cells_tag == "Polys" else 0}">',
             f'      <PointData Scalars="{value}">']
    for name, arr in arrays.items():
        arr = np.where(np.isfinite(arr), arr, fill)
        lines.append(f'        <DataArray type="Float64" Name="{name}" format="ascii">{fmt(arr)}</DataArray>')
    lines += ["      </PointData>",
              "      <Points>",
              f'        <DataArray type="Float64" NumberOfComponents="3" format="ascii">{fmt(pts)}</DataArray>',
              "      </Points>",
              f"      <{cells_tag}>",
              f'        <DataArray type="Int64" Name="connectivity" format="ascii">{fmt(conn, False)}</DataArray>',
              f'        <DataArray type="Int64" Name="offsets" format="ascii">{fmt(offsets, False)}</DataArray>',
              f"      </{cells_tag}>",
              "    </Piece>",
              "  </PolyData>",
              "</VTKFile>", ""]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, "\n".join(lines))
    return path


# --------------------------------------------------------------------------- the command's driver

def parse_kinds(kinds: Optional[str]) -> List[str]:
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


def plot_files(paths: Sequence[str], out_dir: Optional[str] = None, kinds: Optional[str] = "all",
               fmt: str = "png", log: Optional[bool] = None, vmin: Optional[float] = None,
               vmax: Optional[float] = None, vtp: bool = False, value: Optional[str] = None,
               force: bool = False) -> List[str]:
    """Draw every figure the inputs call for; return the paths written.

    Several 1D surfaces are overlaid in one figure (``overlay-1d.FMT``); several 2D surfaces share their
    colour limits (``vmin``/``vmax``, or the common min and max over all of them).
    """
    if not paths:
        raise FlatnessError("no input files: name surface .h5 or probe .json files")
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise FlatnessError(f"unknown figure format {fmt!r}: use one of {', '.join(FORMATS)}")
    kind_list = parse_kinds(kinds)
    surfaces_1d, surfaces_2d, probes = [], [], []
    for path in paths:
        if file_type(path) == "surface":
            surf = load_surface(path)
            vals = [v for v in VALUES if surf.get(v) is not None]
            if not vals:
                raise FlatnessError(f"{path} holds no loss or accuracy values")
            is_2d = surf.get("ycoordinates") is not None and np.asarray(surf[vals[0]]).ndim == 2
            (surfaces_2d if is_2d else surfaces_1d).append(surf)
        else:
            probes.append(load_probe(path))

    def target(src: str, suffix: str) -> str:
        folder = out_dir or os.path.dirname(os.path.abspath(src))
        stem = os.path.splitext(os.path.basename(src))[0]
        return os.path.join(folder, f"{stem}{suffix}")

    planned: List[Tuple[str, Any]] = []
    if len(surfaces_1d) == 1:
        planned.append((target(surfaces_1d[0]["path"], f"-1d.{fmt}"),
                        lambda p: plot_1d(surfaces_1d, p, log=bool(log), force=force)))
    elif surfaces_1d:
        folder = out_dir or os.path.dirname(os.path.abspath(surfaces_1d[0]["path"]))
        planned.append((os.path.join(folder, f"overlay-1d.{fmt}"),
                        lambda p: plot_1d(surfaces_1d, p, log=bool(log), force=force)))
    if surfaces_2d:
        value_2d = value or _pick_value(surfaces_2d[0], None)
        for s in surfaces_2d:
            _pick_value(s, value_2d)
        limits = common_limits(surfaces_2d, value_2d, vmin, vmax)
        for surf in surfaces_2d:
            for kind in kind_list:
                planned.append((target(surf["path"], f"-{kind}.{fmt}"),
                                lambda p, s=surf, k=kind: plot_2d(s, p, k, value_2d, log=log, force=force,
                                                                  limits=limits)))
    if probes:
        for probe in probes:
            planned.append((target(probe["path"], f"-spectrum.{fmt}"),
                            lambda p, q=probe: plot_spectrum([q], p, force=force)))
    if vtp:
        for surf in surfaces_1d + surfaces_2d:
            planned.append((target(surf["path"], ".vtp"),
                            lambda p, s=surf: write_vtp(s, p, value=value, log=bool(log), force=force)))
    if not force:  # refuse before drawing anything, so a refusal leaves no partial set of figures
        existing = [p for p, _ in planned if os.path.exists(p)]
        if existing:
            raise FlatnessError(f"{existing[0]} exists" + (f" (and {len(existing) - 1} more)" if len(existing) > 1
                                                             else "") + "; pass --force to replace")
    return [draw(p) for p, draw in planned]
