"""2D surfaces: contour, filled contour, heatmap and 3D surface, with the PCA trajectory on top.

Values are (ny, nx) with ``[j, i]`` at (x_i, y_j) (``flatness.formats.surface_file``), the order of
``np.meshgrid(x, y)``: matplotlib draws them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from flatness.core.errors import FlatnessError
from flatness.plot.style import (
    axis_name,
    common_limits,
    contour_levels,
    new_figure,
    pick_value,
    save_figure,
    surface_loss,
    surface_title,
    use_log,
    value_name,
)

KINDS_2D = ("contour", "contourf", "heatmap", "3d")


def pca_trajectory(surf: dict[str, Any]) -> np.ndarray | None:
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


def explained_variance(surf: dict[str, Any]) -> Sequence[float] | None:
    """The PCA explained variance ratios of a surface's directions, when it has them."""
    pca = surf.get("pca") or {}
    for key in ("explained_variance_ratio", "explained", "variance_ratio"):
        if pca.get(key) is not None:
            return list(np.asarray(pca[key], float).ravel())
    return None


def surface_grid(surf: dict[str, Any], value: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The coordinates and values of a 2D surface, ready for ``contour(X, Y, Z)``.

    Args:
        surf: a loaded surface (``flatness.plot.loading.load_surface``).
        value: which array, e.g. ``"train_loss"``.

    Returns:
        ``(X, Y, Z)``, each (ny, nx): ``X, Y = np.meshgrid(x, y)`` and ``Z[j, i]`` at (x_i, y_j).
    """
    x = np.asarray(surf["xcoordinates"], float)
    y = np.asarray(surf["ycoordinates"], float)
    z = np.asarray(surf[value], float)  # accuracy is in percent (load_surface)
    if z.shape != (y.size, x.size):
        raise FlatnessError(f"{surf['path']}: {value} has shape {z.shape}, expected (ny, nx) = ({y.size}, {x.size})")
    X, Y = np.meshgrid(x, y)  # "xy" indexing: the files' own order
    return X, Y, z


# Ten parameters: the colour scale (lo, hi, logscale) comes from the caller because several panels
# share it (compare figures), and the figure is needed only for the colour bar.
def draw_2d(
    ax,
    surf: dict[str, Any],
    kind: str,
    value: str,
    lo: float,
    hi: float,
    logscale: bool,
    colorbar: bool = True,
    fig=None,
    trajectory: bool = True,
):
    """Draw one 2D picture of ``surf`` into ``ax`` (contour, contourf or heatmap)."""
    from matplotlib.colors import LogNorm, Normalize  # noqa: PLC0415 - matplotlib is heavy; only drawing needs it

    X, Y, Z = surface_grid(surf, value)
    norm = LogNorm(vmin=lo, vmax=hi) if logscale else Normalize(vmin=lo, vmax=hi)
    Zc = np.clip(np.where(np.isfinite(Z), Z, np.nan), lo, hi)
    levels = contour_levels(lo, hi, logscale)
    cmap = "viridis"
    mappable = None
    if kind == "contour":
        mappable = ax.contour(X, Y, Zc, levels=levels, norm=norm, cmap=cmap, linewidths=1.0)
        ax.clabel(mappable, mappable.levels[::2], inline=True, fontsize=7, fmt="{:.3g}".format)
    elif kind == "contourf":
        mappable = ax.contourf(X, Y, Zc, levels=levels, norm=norm, cmap=cmap, extend="neither")
        ax.contour(X, Y, Zc, levels=levels[::2], colors="k", linewidths=0.3, alpha=0.5)
    elif kind == "heatmap":
        mappable = ax.pcolormesh(X[0, :], Y[:, 0], Zc, norm=norm, cmap=cmap, shading="nearest")
    else:
        raise ValueError(kind)
    ax.plot([0], [0], marker="*", color="red", markersize=10, linestyle="none", label="trained weights")
    traj = pca_trajectory(surf) if trajectory else None
    if traj is not None:
        ax.plot(
            traj[:, 0],
            traj[:, 1],
            "-o",
            color="white",
            markersize=3,
            lw=1.2,
            markeredgecolor="k",
            label="training trajectory",
        )
        ax.plot(traj[0, 0], traj[0, 1], "s", color="orange", markeredgecolor="k", label="start")
    ax.set_xlabel(axis_name(surf, "x"))
    ax.set_ylabel(axis_name(surf, "y"))
    ax.set_aspect("auto")
    ax.legend(fontsize=7, loc="upper right")
    if colorbar and fig is not None and mappable is not None:
        from matplotlib.ticker import FormatStrFormatter  # noqa: PLC0415 - matplotlib is heavy; only drawing needs it

        cb = fig.colorbar(mappable, ax=ax, ticks=levels[::3] if logscale else None, format=FormatStrFormatter("%.3g"))
        cb.minorticks_off()
        unit = "%" if value.endswith("acc") else ""
        cb.set_label(
            value_name(value, surface_loss(surf))
            + (f" ({unit})" if unit else "")
            + (" — log scale" if logscale else "")
        )
    return mappable


# Nine parameters: the colour options of ``flatness plot`` (vmin, vmax, log) or limits shared by several
# files, passed through unchanged.
def plot_2d(
    surf: dict[str, Any],
    path: str,
    kind: str,
    value: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    log: bool | None = None,
    force: bool = False,
    limits: tuple[float, float] | None = None,
) -> str:
    """One 2D figure of ``kind`` (contour, contourf, heatmap or 3d) for a 2D surface."""
    if kind not in KINDS_2D:
        raise FlatnessError(f"unknown plot kind {kind!r}: use {', '.join(KINDS_2D)} or all")
    value = pick_value(surf, value)
    lo, hi = limits if limits else common_limits([surf], value, vmin, vmax)
    logscale = use_log(value, lo, hi, log)
    what = {"contour": "contour", "contourf": "filled contour", "heatmap": "heatmap", "3d": "3D surface"}[kind]
    title = surface_title(surf, f"{value_name(value, surface_loss(surf))}: {what}")
    extra = explained_variance(surf)
    if extra and len(extra) >= 2:
        title += f"\nPCA explained variance: PC1 {100 * extra[0]:.1f}%, PC2 {100 * extra[1]:.1f}%"
    if kind == "3d":
        from matplotlib.colors import Normalize  # noqa: PLC0415 - matplotlib is heavy; only drawing needs it
        from mpl_toolkits.mplot3d import Axes3D  # noqa: F401, PLC0415 - registers the 3d projection (matplotlib)

        fig = new_figure((7.5, 6))
        ax = fig.add_subplot(projection="3d")
        X, Y, Z = surface_grid(surf, value)
        s_lo, s_hi = lo, hi
        Zc = np.clip(np.where(np.isfinite(Z), Z, s_hi), s_lo, s_hi)
        if logscale:
            Zplot = np.log10(Zc)
            zlabel = f"log10 {value_name(value, surface_loss(surf))}"
            norm = Normalize(np.log10(s_lo), np.log10(s_hi))
        else:
            Zplot, zlabel, norm = Zc, value_name(value, surface_loss(surf)), Normalize(s_lo, s_hi)
        mappable = ax.plot_surface(
            X, Y, Zplot, cmap="viridis", norm=norm, linewidth=0, antialiased=True, rstride=1, cstride=1
        )
        ax.set_xlabel(axis_name(surf, "x"), fontsize=8)
        ax.set_ylabel(axis_name(surf, "y"), fontsize=8)
        ax.set_zlabel(zlabel, fontsize=8)
        fig.colorbar(mappable, ax=ax, shrink=0.6, pad=0.1).set_label(zlabel)
        ax.set_title(title, fontsize=9)
    else:
        fig = new_figure((7, 5.6))
        ax = fig.add_subplot()
        draw_2d(ax, surf, kind, value, lo, hi, logscale, fig=fig)
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path, force)
