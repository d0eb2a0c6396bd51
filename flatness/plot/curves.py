"""1D surfaces: loss and accuracy curves, several surfaces overlaid on shared axes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from flatness.plot.style import axis_name, loss_words, new_figure, save_figure, surface_label, surface_title


def plot_1d(
    surfaces: Sequence[dict[str, Any]],
    path: str,
    log: bool = False,
    force: bool = False,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
) -> str:
    """Loss (left) and accuracy (right) along x for one or several 1D surfaces on shared axes.

    Surfaces without accuracy (a regression loss) get the loss panel only.
    """
    has_acc = any(surf.get(f"{sp}_acc") is not None for surf in surfaces for sp in ("train", "test"))
    fig = new_figure((11, 4.2) if has_acc else (6, 4.2))
    ax_loss, ax_acc = fig.subplots(1, 2) if has_acc else (fig.subplots(1, 1), None)
    colors = [f"C{i}" for i in range(10)]
    for i, surf in enumerate(surfaces):
        x = np.asarray(surf["xcoordinates"], float)
        label = labels[i] if labels else surface_label(surf)
        color = colors[i % len(colors)]
        for split, style in (("train", "-"), ("test", "--")):
            loss, acc = surf.get(f"{split}_loss"), surf.get(f"{split}_acc")
            if loss is not None:
                ax_loss.plot(x, np.asarray(loss, float), style, color=color, label=f"{label} {split}")
            if acc is not None and ax_acc is not None:
                ax_acc.plot(x, np.asarray(acc, float), style, color=color, label=f"{label} {split}")
    if log:
        ax_loss.set_yscale("log")
    if ylim:
        ax_loss.set_ylim(*ylim)
    ax_loss.set_xlabel(axis_name(surfaces[0], "x"))
    loss = (surfaces[0].get("attrs") or {}).get("loss")
    ax_loss.set_ylabel(f"loss ({loss_words(loss)})" + (", log scale" if log else ""))
    if ax_acc is not None:
        ax_loss.set_title("loss")
        ax_acc.set_xlabel(axis_name(surfaces[0], "x"))
        ax_acc.set_ylabel("accuracy (%)")
        ax_acc.set_title("accuracy")
    for ax in (ax_loss, ax_acc) if ax_acc is not None else (ax_loss,):
        ax.grid(alpha=0.3)
        ax.axvline(0, color="0.6", lw=0.8)
        if str((surfaces[0].get("attrs") or {}).get("direction", "")).startswith("interp"):
            ax.axvline(1, color="0.6", lw=0.8)
        ax.legend(fontsize=8)
    if title is None:
        title = (
            surface_title(surfaces[0], "1D loss surface")
            if len(surfaces) == 1
            else "1D loss surfaces: "
            + ", ".join(labels or [surface_label(s) for s in surfaces])
            + f"\n{surface_title(surfaces[0]).split(' | ', 1)[-1]}"
        )
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, force)
