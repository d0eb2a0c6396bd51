"""Training curves: ``flatness train --log tensorboard`` read back with TensorBoard's own event reader (the
scalars equal metrics.jsonl, float32-rounded as TensorBoard stores them), and ``flatness plot RUN``."""

import json
import math
import os
import sys

import numpy as np
import pytest

from flatness.core.errors import FlatnessError
from flatness.formats.checkpoint import metric_scalars, read_metrics
from flatness.training.tensorboard_log import LOG_FOLDER, check_logger

pytest.importorskip("tensorboard")  # in the test extra, so CI runs this file

TRAIN = ["train", "--dataset", "digits", "--model", "mlp", "--depth", "1", "--width", "16", "--batch-size", "256"]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """An AMP run of 3 epochs with a stop loss it cannot reach (so every epoch has its whole-train loss)."""
    from click.testing import CliRunner

    from flatness.cli.main import main

    out = tmp_path_factory.mktemp("tb") / "run"
    args = [*TRAIN, "--method", "amp", "--epochs", "3", "--stop-loss", "1e-6", "--device", "cpu"]
    result = CliRunner().invoke(main, [*args, "--no-progress", "--log", "tensorboard", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def event_scalars(log_dir):
    """{tag: [(step, value)]} as TensorBoard itself reads the event files."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0})  # 0: keep every event
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()[SCALARS]}


def test_tensorboard_scalars_equal_metrics_jsonl(logged_run):
    records = read_metrics(logged_run)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    events = event_scalars(logged_run / LOG_FOLDER)
    expected_tags = {"loss/train_loss", "loss/test_loss", "loss/full_train_loss", "accuracy/train_acc", "lr"}
    expected_tags |= {"perturbation_norm"}  # AMP's mean ‖δ‖ per epoch
    assert expected_tags <= set(events), sorted(events)
    # Every number of every record, and nothing else, at step = epoch (float32: TensorBoard's storage).
    from_jsonl = {}
    for record in records:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                tag = f"loss/{key}" if key.endswith("_loss") else f"accuracy/{key}" if key.endswith("_acc") else key
                from_jsonl.setdefault(tag, []).append((record["epoch"], float(np.float32(value))))
    assert events == from_jsonl


def test_missing_tensorboard_is_one_line_error(monkeypatch, cli, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.raises(FlatnessError, match=r"pip install 'flatness\[tensorboard\]'"):
        check_logger("tensorboard")
    result = cli([*TRAIN, "--epochs", "1", "--log", "tensorboard", "--out", tmp_path / "run"])
    assert result.exit_code != 0 and result.output.startswith("Error: --log tensorboard needs")
    assert not (tmp_path / "run").exists()  # refused before anything was trained
    assert check_logger(None) == "none"
    with pytest.raises(FlatnessError, match="unknown logger"):
        check_logger("wandb")


def test_metric_scalars_keep_every_finite_number_but_the_epoch():
    record = {"epoch": 4, "lr": 0.1, "train_loss": 0.5, "test_acc": 0.9, "note": "x", "flag": True, "bad": math.nan}
    assert metric_scalars(record) == {"lr": 0.1, "loss/train_loss": 0.5, "accuracy/test_acc": 0.9}


def test_plot_run_folder_draws_the_curves_of_metrics_jsonl(logged_run, cli, tmp_path):
    from flatness.plot.training import curves, load_run

    panels = curves(load_run(str(logged_run))["records"])
    assert set(panels) == {"loss", "accuracy", "lr", "other"}  # other: seconds per epoch, AMP's ‖δ‖
    epochs, values = panels["loss"]["loss/full_train_loss"]
    assert epochs == [1, 2, 3] and values == [r["full_train_loss"] for r in read_metrics(logged_run)]
    result = cli(["plot", logged_run, "--out", tmp_path / "figs"])
    assert result.exit_code == 0, result.output
    figure = tmp_path / "figs" / "run-training.png"
    assert figure.stat().st_size > 10_000
    assert cli(["plot", logged_run, "--out", tmp_path / "figs"]).exit_code != 0  # never replaced without --force
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli(["plot", empty])
    assert result.exit_code != 0 and "without metrics.jsonl" in result.output
    (empty / "metrics.jsonl").write_text("")
    result = cli(["plot", empty])
    assert result.exit_code != 0 and "no finished epoch" in result.output


def test_sweep_cells_log_into_their_run_folders(tmp_path):
    from flatness.sweep.run import SweepSettings, plan, task_for

    p = plan(SweepSettings(out=str(tmp_path / "sw"), grid="lr=0.05,0.1", seeds="0", quick=True, log="tensorboard"))
    tasks = [task_for(p, cell) for cell in p.cells]
    assert {t.extra["log"] for t in tasks} == {"tensorboard"}
    assert len({os.path.join(t.folder, LOG_FOLDER) for t in tasks}) == len(tasks)  # one run per cell under OUT
    with pytest.raises(FlatnessError, match="unknown logger"):
        plan(SweepSettings(out=str(tmp_path / "sw2"), quick=True, log="nope"))
    assert json.dumps(tasks[0].extra)  # plain data: crosses process and Ray boundaries
