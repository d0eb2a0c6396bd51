"""``flatness.plot.training``: a run's training curves, one panel per group, drawn from metrics.jsonl."""

from __future__ import annotations

import json

import pytest
from plot_helpers import check_file

from flatness.core.errors import FlatnessError
from flatness.plot import style, training

RECORDS = [
    {"epoch": 0, "test_loss": 9.0},  # the untrained model's record: not a finished epoch
    {"epoch": 1, "train_loss": 1.5, "test_loss": 1.7, "train_acc": 0.6, "test_acc": 0.55, "lr": 0.1, "seconds": 2.0},
    {"epoch": 2, "train_loss": 0.9, "test_loss": float("nan"), "train_acc": 0.8, "test_acc": 0.7, "lr": 0.05},
    {"epoch": 3, "train_loss": 0.4, "test_loss": 0.8, "train_acc": 0.9, "test_acc": 0.75, "lr": 0.01, "ok": True},
]


def _run(tmp_path, records=RECORDS):
    folder = tmp_path / "amp-s1"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(folder)


def test_curves_by_panel(tmp_path):
    run = training.load_run(_run(tmp_path))
    assert [r["epoch"] for r in run["records"]] == [1, 2, 3]
    panels = training.curves(run["records"])
    assert sorted(panels) == ["accuracy", "loss", "lr", "other"]
    assert panels["loss"]["loss/train_loss"] == ([1, 2, 3], [1.5, 0.9, 0.4])
    assert panels["loss"]["loss/test_loss"] == ([1, 3], [1.7, 0.8])  # the NaN is left out, not drawn as 0
    assert panels["lr"]["lr"] == ([1, 2, 3], [0.1, 0.05, 0.01])
    assert panels["other"] == {"seconds": ([1], [2.0])}  # a flag (True) is not a number to draw


def test_the_figure_holds_the_curves(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(
        training,
        "save_figure",
        lambda fig, path, force=False: figures.append(fig) or style.save_figure(fig, path, force),
    )
    run = training.load_run(_run(tmp_path))
    check_file(training.plot_training(run, str(tmp_path / "t.png")), "png")
    (fig,) = figures
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "accuracy", "learning rate", "other"]
    acc = {line.get_label(): line for line in fig.axes[1].get_lines()}
    assert list(acc["test_acc"].get_xdata()) == [1, 2, 3] and list(acc["test_acc"].get_ydata()) == [0.55, 0.7, 0.75]
    assert fig._suptitle.get_text() == "training curves: amp-s1"


def test_a_run_without_a_finished_epoch_is_refused(tmp_path):
    with pytest.raises(FlatnessError, match="records no finished epoch yet"):
        training.load_run(_run(tmp_path, RECORDS[:1]))
