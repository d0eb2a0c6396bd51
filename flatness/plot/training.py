"""Training curves of a run folder, drawn from its ``metrics.jsonl`` (``flatness plot RUN``).

The same numbers ``flatness train --log tensorboard`` writes as TensorBoard scalars
(``flatness.training.tensorboard_log``), without TensorBoard: one panel for the losses (training batches,
test split, and the whole training set when the run has ``--stop-loss``), one for the accuracies, one for
the learning rate, and one more for any other number the records hold (seconds per epoch, ...).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from flatness.core.errors import FlatnessError
from flatness.formats.checkpoint import METRICS, metric_scalars, read_metrics
from flatness.plot.style import new_figure, save_figure

PANELS = ("loss", "accuracy", "lr")


def load_run(path: str) -> dict[str, Any]:
    """A run folder's epoch records, read by the run-folder format's owner; one-line error when there are none.

    Args:
        path: a run folder (``flatness train --out``).

    Returns:
        ``{"path": path, "records": [...]}``.
    """
    records = [r for r in read_metrics(path) if int(r.get("epoch", 0)) >= 1]
    if not records:
        raise FlatnessError(f"{path}: {METRICS} records no finished epoch yet")
    return {"path": path, "records": records}


def curves(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """The records' curves by panel: ``{panel: {tag: (epochs, values)}}`` (TensorBoard's tags).

    Args:
        records: metrics.jsonl's epoch records.

    Returns:
        Panels ``loss``, ``accuracy``, ``lr`` and ``other`` (those with at least one point).
    """
    out: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for record in records:
        for tag, value in metric_scalars(record).items():
            panel = tag.split("/")[0] if tag.split("/")[0] in PANELS else "other"
            epochs, values = out.setdefault(panel, {}).setdefault(tag, ([], []))
            epochs.append(int(record["epoch"]))
            values.append(value)
    return out


def plot_training(run: dict[str, Any], path: str, force: bool = False) -> str:
    """Draw one run's training curves into ``path`` (one panel per group of curves).

    Args:
        run: ``load_run``'s result.
        path: the figure file (.png, .pdf or .svg).
        force: replace an existing figure.

    Returns:
        ``path``.
    """
    panels = curves(run["records"])
    order = [p for p in (*PANELS, "other") if p in panels]
    fig = new_figure((4.2 * len(order), 3.6))
    axes = fig.subplots(1, len(order), squeeze=False)[0]
    for ax, panel in zip(axes, order):
        for tag, (epochs, values) in sorted(panels[panel].items()):
            ax.plot(epochs, values, marker="o", ms=3, label=tag.split("/")[-1])
        ax.set_xlabel("epoch")
        ax.set_title({"lr": "learning rate"}.get(panel, panel))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"training curves: {os.path.basename(os.path.abspath(run['path']))}", fontsize=10)
    return save_figure(fig, path, force)
