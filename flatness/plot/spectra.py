"""Hessian spectra: the smoothed spectral density on a log scale with the top eigenvalues marked."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from flatness.plot.style import new_figure, save_figure


def density_arrays(probe: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The smoothed density ``(grid, values)`` of a probe, or None when it has none.

    The probe JSON holds both whenever the density was computed (``flatness.formats.probe_file``).
    """
    density = probe.get("density") or {}
    grid, values = density.get("grid"), density.get("values")
    if grid is None or values is None:
        return None
    grid, values = np.asarray(grid, float), np.asarray(values, float)
    if grid.size == 0 or grid.shape != values.shape:
        return None
    return grid, values


def probe_label(probe: dict[str, Any]) -> str:
    """A short legend label: the checkpoint's method and seed, or the file name."""
    ck = probe.get("checkpoint") or {}
    method, seed = ck.get("method"), ck.get("seed")
    if method is not None:
        return f"{str(method).upper()}" + (f" seed {seed}" if seed is not None else "")
    return os.path.splitext(os.path.basename(probe.get("path", "probe")))[0]


def draw_spectrum(
    ax, probe: dict[str, Any], color: str = "C0", label: str | None = None, mark_top: bool = True, floor: float = 1e-8
) -> None:
    """Draw one probe's density (log scale, floored at ``floor``) and its top eigenvalues into ``ax``.

    Args:
        ax: a matplotlib Axes.
        probe: a loaded probe (``flatness.plot.loading.load_probe``).
        color: the probe's colour.
        label: legend label (default ``probe_label``).
        mark_top: draw the top eigenvalues as dotted lines.
        floor: the smallest density drawn (log scale), raised to 1e-7 of the peak.
    """
    label = label or probe_label(probe)
    arrays = density_arrays(probe)
    eig = (probe.get("hessian") or {}).get("eigenvalues") or []
    if arrays is not None:
        grid, values = arrays
        top = float(np.nanmax(values)) if values.size else 1.0
        floor = max(floor, top * 1e-7)
        ax.semilogy(grid, np.maximum(values, floor), color=color, lw=1.2, label=f"{label} density")
    if mark_top and eig:
        for k, lam in enumerate(eig):
            ax.axvline(
                float(lam),
                color=color,
                ls=":",
                lw=1.0,
                alpha=0.9,
                label=(f"{label} top-{len(eig)} eigenvalues (λmax = {float(eig[0]):.4g})" if k == 0 else None),
            )


def plot_spectrum(probes: Sequence[dict[str, Any]], path: str, force: bool = False, title: str | None = None) -> str:
    """Hessian spectral density (log scale) with the top eigenvalues marked, one or several probes."""
    fig = new_figure((7.5, 4.6))
    ax = fig.add_subplot()
    any_density = False
    for i, probe in enumerate(probes):
        draw_spectrum(ax, probe, color=f"C{i % 10}")
        any_density |= density_arrays(probe) is not None
    if not any_density:
        ax.set_yscale("log")
        ax.text(
            0.5,
            0.5,
            "no spectral density in this probe\n(run probe with --density)",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color="0.4",
        )
    ax.set_xlabel("Hessian eigenvalue λ of the training loss")
    ax.set_ylabel("spectral density (log scale)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title is None:
        p = probes[0]
        data = p.get("data") or {}
        where = f"{data.get('dataset', '?')} {data.get('split', '?')} split, {data.get('samples', '?')} samples"
        hess = p.get("hessian") or {}
        title = (
            "Hessian spectrum (stochastic Lanczos quadrature, Gaussian-smoothed); dotted: top eigenvalues "
            f"by {hess.get('method', '?')}\n" + ", ".join(probe_label(q) for q in probes) + f" | {where}"
        )
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path, force)
