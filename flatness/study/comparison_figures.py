"""The comparison's figures, the methods side by side.

Training curves (mean ± std over seeds), Hessian spectra overlaid, 1D random-direction slices on
common axes, and 2D surfaces with shared colour limits.

The drawing itself is ``flatness.plot``'s; this module picks which runs and files each figure shows.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from flatness.plot.curves import plot_1d
from flatness.plot.loading import load_surface
from flatness.plot.maps import draw_2d
from flatness.plot.spectra import plot_spectrum
from flatness.plot.style import (
    common_limits,
    contour_levels,
    new_figure,
    pick_value,
    save_figure,
    use_log,
    value_name,
)
from flatness.study.quantities import finite_float
from flatness.study.run_record import RunRecord
from flatness.study.runs import in_method_order, sorted_methods


def _mean_curves(records: Sequence[RunRecord], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    series = [[(finite_float(e.get("epoch")), finite_float(e.get(key))) for e in r.epochs] for r in records]
    series = [[(ep, v) for ep, v in s if ep is not None and v is not None] for s in series]
    series = [s for s in series if s]
    if not series:
        return np.array([]), np.array([]), np.array([])
    length = min(len(s) for s in series)
    epochs = np.array([ep for ep, _ in series[0][:length]])
    vals = np.array([[v for _, v in s[:length]] for s in series])
    std = vals.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(length)
    return epochs, vals.mean(axis=0), std


def figure_training(records: Sequence[RunRecord], path: str, force: bool = False) -> str | None:
    """Loss and accuracy per epoch, mean ± 1 std over seeds, one colour per method.

    Args:
        records: the runs; those without a training log are left out.
        path: the image file to write.
        force: replace an existing file.

    Returns:
        The path written, or None when no run has a training log.
    """
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415 - matplotlib is heavy; only the figures need it

    methods = sorted_methods(r.method for r in records if r.epochs)
    if not methods:
        return None
    # runs without accuracy (a regression loss) get the loss panel only
    has_acc = any(_mean_curves([r], "test_acc")[0].size for r in records if r.epochs)
    fig = new_figure((11, 4.2) if has_acc else (6, 4.2))
    ax_loss, ax_acc = fig.subplots(1, 2) if has_acc else (fig.subplots(1, 1), None)
    curves = [("train_loss", ax_loss, "-", 1), ("test_loss", ax_loss, "--", 1)]
    if has_acc:
        curves += [("train_acc", ax_acc, "-", 100), ("test_acc", ax_acc, "--", 100)]
    for i, m in enumerate(methods):
        group = [r for r in records if r.method == m and r.epochs]
        color = f"C{i}"
        for key, ax, style, scale in curves:
            ep, mean, std = _mean_curves(group, key)
            if ep.size:
                ax.plot(ep, scale * mean, style, color=color, label=f"{m.upper()} {key.split('_')[0]} (n={len(group)})")
                ax.fill_between(ep, scale * (mean - std), scale * (mean + std), color=color, alpha=0.15)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss (log scale)" if not has_acc else "loss (mean cross-entropy, log scale)")
    if ax_acc is not None:
        ax_acc.set_ylabel("accuracy (%)")
    for ax in (ax_loss, ax_acc) if ax_acc is not None else (ax_loss,):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        "Training curves: mean over seeds, band = ±1 std (train: as logged during the epoch; test: full test split)",
        fontsize=9,
    )
    return save_figure(fig, path, force)


def figure_spectra(records: Sequence[RunRecord], path: str, force: bool = False) -> str | None:
    """The Hessian spectra overlaid, one probe per method: its lowest seed with a density, else its lowest seed.

    Args:
        records: the runs; those without a probe are left out.
        path: the image file to write.
        force: replace an existing file.

    Returns:
        The path written, or None when no run has a probe.
    """
    chosen = []
    for m in sorted_methods(r.method for r in records):
        group = sorted([r for r in records if r.method == m and r.probe], key=lambda r: (r.seed is None, r.seed))
        withd = [r for r in group if (r.probe.get("density") or {}).get("grid")] or group
        if withd:
            chosen.append(withd[0].probe)
    if not chosen:
        return None
    return plot_spectrum(chosen, path, force=force)


def _surface_groups(records: Sequence[RunRecord]):
    """``(one_d, two_d)``: per method, its lowest seed's run with a random-direction surface, and that surface."""
    one_d, two_d = {}, {}
    for r in sorted(records, key=lambda r: (r.seed is None, r.seed)):
        for path in r.surfaces:
            surf = load_surface(path)
            direction = str((surf.get("attrs") or {}).get("direction") or "random")
            if not direction.startswith("random"):
                continue
            target = two_d if surf.get("ycoordinates") is not None else one_d
            target.setdefault(r.method, (r, surf))
    return one_d, two_d


def figure_slices(records: Sequence[RunRecord], path: str, force: bool = False, log: bool = False) -> str | None:
    """The 1D random-direction slices of one run per method on common axes.

    Args:
        records: the runs; their 1D surface files along random directions are used.
        path: the image file to write.
        force: replace an existing file.
        log: draw the loss on a log scale.

    Returns:
        The path written, or None when no run has such a surface.
    """
    one_d, _ = _surface_groups(records)
    if not one_d:
        return None
    methods = in_method_order(one_d)
    surfs = [one_d[m][1] for m in methods]
    labels = [one_d[m][0].label for m in methods]
    title = (
        "1D loss along a random filter-normalised direction (same direction seed for every checkpoint); "
        "solid: train probe data, dashed: test split\n" + " vs ".join(labels)
    )
    return plot_1d(surfs, path, log=log, force=force, labels=labels, title=title)


def figure_contours(records: Sequence[RunRecord], path: str, force: bool = False) -> str | None:
    """The 2D random-direction surfaces of one run per method side by side, with shared colour limits.

    Args:
        records: the runs; their 2D surface files along random directions are used.
        path: the image file to write.
        force: replace an existing file.

    Returns:
        The path written, or None when no run has such a surface.
    """
    from matplotlib.ticker import FormatStrFormatter  # noqa: PLC0415 - matplotlib is heavy; only the figures need it

    _, two_d = _surface_groups(records)
    if not two_d:
        return None
    methods = in_method_order(two_d)
    surfs = [two_d[m][1] for m in methods]
    value = pick_value(surfs[0], None)
    lo, hi = common_limits(surfs, value)
    logscale = use_log(value, lo, hi, None)
    fig = new_figure((6 * len(surfs), 5))
    axes = fig.subplots(1, len(surfs), squeeze=False)[0]
    mappable = None
    for ax, m, surf in zip(axes, methods, surfs):
        mappable = draw_2d(ax, surf, "contourf", value, lo, hi, logscale, colorbar=False)
        ax.set_title(f"{two_d[m][0].label}", fontsize=10)
    for ax in axes[1:]:
        ax.set_ylabel("")
    cb = fig.colorbar(
        mappable,
        ax=list(axes),
        ticks=contour_levels(lo, hi, logscale)[::3] if logscale else None,
        format=FormatStrFormatter("%.3g"),
    )
    name = value_name(value, (surfs[0].get("attrs") or {}).get("loss"))
    cb.set_label(name + (" — log scale" if logscale else "") + "; shared colour limits")
    fig.suptitle(
        f"2D {name} around each trained checkpoint (random filter-normalised directions, "
        "train probe data); red star = trained weights",
        fontsize=10,
    )
    return save_figure(fig, path, force)


def compare_figures(
    records: Sequence[RunRecord], out_dir: str, fmt: str = "png", force: bool = False, prefix: str = "compare"
) -> dict[str, str]:
    """Write every comparison figure the inputs allow.

    The figures: training curves, spectra overlaid, 1D slices on common axes, 2D contours side by side.

    Args:
        records: the runs.
        out_dir: the folder the figures go to, as ``<prefix>-<name>.<fmt>``.
        fmt: the image format (file extension).
        force: replace existing files.
        prefix: the start of each file name.

    Returns:
        ``{name: path}`` of the figures written.
    """
    out = {}
    for name, fn in (
        ("training", figure_training),
        ("spectra", figure_spectra),
        ("slices-1d", figure_slices),
        ("contours-2d", figure_contours),
    ):
        path = os.path.join(out_dir, f"{prefix}-{name}.{fmt}")
        written = fn(records, path, force=force)
        if written:
            out[name] = written
    return out
