"""flatness.sweep.run: the same cells.csv whichever way the cells ran (one local worker killed by SIGKILL
and rerun, finished cells never redone, Ray), a failed cell recorded, the plan checked before anything starts, the
stop-loss defaults, and SweepSettings.checked."""

import dataclasses
import importlib.util
import os
import signal
import subprocess

import pytest
from holds import hold_env, wait_for_hold
from sweep_runs import run_cli, sweep_cmd, uninterrupted_cells

from flatness.core.errors import FlatnessError
from flatness.sweep.cells import CELLS, MEASURES, read_table
from flatness.sweep.run import DEFAULT_SEEDS, SweepSettings, plan, run_sweep


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted sweep, on two local worker processes."""
    return uninterrupted_cells(tmp_path_factory)


def test_reference_table_has_the_issue_columns(reference, tmp_path):
    (tmp_path / "cells.csv").write_text(reference)
    rows, axes, measures = read_table(str(tmp_path))
    assert axes == ["method", "lr"]
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
    head = reference.splitlines()[0].split(",")
    assert head[:8] == ["cell", "method", "lr", "seed", "train_acc", "test_acc", "gap", "test_error"]
    for r in rows:
        assert r["gap"] == pytest.approx(r["train_acc"] - r["test_acc"])
        assert r["test_error"] == pytest.approx(100 - r["test_acc"])
    assert {"lambda_1", "trace", "weight_norm", "distance_from_init", "margin_p10", "log_spectral_product"} <= set(
        measures
    )
    assert any(m.startswith("sharp:worst_case") for m in measures)


def test_sigkill_then_rerun_equals_uninterrupted(reference, tmp_path):
    out = tmp_path / "killed"
    held = tmp_path / "held"
    # Killed in the middle: held (tests/holds.py) before its 4th epoch, the second of the second cell
    # (2 epochs a cell, one cell at a time in this process), so one cell is finished and the next one
    # trained part way, whatever the machine's speed.
    env = hold_env(os.environ, "train-epoch", 3, held)
    log = tmp_path / "sweep.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen(sweep_cmd(out, "--workers", "1"), stdout=handle, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_hold(proc, held, log)
        cells = out / CELLS
        assert len(list(cells.glob(f"*/{MEASURES}"))) == 1 and len(list(cells.glob("*/last.pt"))) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (out / "cells.csv").exists() or (out / "cells.csv").read_text() != reference
    run_cli(out, "--workers", "1")
    assert (out / "cells.csv").read_text() == reference


def test_finished_cells_are_never_redone(reference, tmp_path):
    out = tmp_path / "again"
    settings = SweepSettings(
        out=str(out),
        grid="method=erm,sam lr=0.02,0.1",
        seeds="0",
        dataset="digits",
        quick=True,
        workers=1,
        progress=False,
    )
    first = run_sweep(settings, echo=None)
    stamps = {p: p.stat().st_mtime_ns for p in (out / CELLS).glob(f"*/{MEASURES}")}
    second = run_sweep(settings, echo=None)
    assert (first["ran"], second["ran"]) == (4, 0)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert (out / "cells.csv").read_text() == reference
    with pytest.raises(FlatnessError, match="other grid settings"):
        run_sweep(
            SweepSettings(
                out=str(out), grid="method=erm lr=0.02", seeds="0", dataset="digits", quick=True, progress=False
            ),
            echo=None,
        )


def test_failed_cell_is_recorded_and_others_go_on(tmp_path):
    # batch_size 4096 exceeds digits' 1437 training examples: that cell fails when it trains, the other runs
    out = tmp_path / "failing"
    result = run_sweep(
        SweepSettings(
            out=str(out), grid="batch_size=64,4096", seeds="0", dataset="digits", quick=True, workers=1, progress=False
        ),
        echo=None,
    )
    assert (result["done"], result["failed"]) == (1, 1)
    rows, _, _ = read_table(str(out))
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and "exceeds" in failed[0]["error"] and failed[0]["gap"] is None


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is an optional extra")
def test_ray_on_a_local_instance_gives_the_same_cells(reference, tmp_path):
    out = tmp_path / "ray"
    run_sweep(
        SweepSettings(
            out=str(out),
            grid="method=erm,sam lr=0.02,0.1",
            seeds="0",
            dataset="digits",
            quick=True,
            workers=2,
            engine="ray",
            progress=False,
        ),
        echo=None,
    )
    assert (out / "cells.csv").read_text() == reference


def test_plan_checks_every_cell_before_starting(tmp_path):
    p = plan(SweepSettings(out=str(tmp_path / "x"), quick=True, dataset="digits"))
    assert len(p.cells) >= 8 and p.mine == p.cells
    assert not (tmp_path / "x").exists()


def test_default_grid_trains_to_the_stop_loss_and_other_grids_do_not(tmp_path):
    from flatness.sweep.run import DEFAULT_STOP_CAP, DEFAULT_STOP_LOSS, STOP_SCHEDULE

    default = plan(SweepSettings(out=str(tmp_path / "d"), dataset="digits"))
    assert default.train["stop_loss"] == DEFAULT_STOP_LOSS == 0.01
    assert (default.train["epochs"], default.train["schedule"]) == (DEFAULT_STOP_CAP, STOP_SCHEDULE)
    capped = plan(SweepSettings(out=str(tmp_path / "c"), dataset="digits", epochs=7, stop_loss=0.05))
    assert (capped.train["epochs"], capped.train["stop_loss"]) == (7, 0.05)
    custom = plan(SweepSettings(out=str(tmp_path / "g"), dataset="digits", grid="lr=0.1,0.2"))
    assert "stop_loss" not in custom.train and custom.train["schedule"] == "cosine"
    assert plan(SweepSettings(out=str(tmp_path / "q"), quick=True, dataset="digits")).train.get("stop_loss") is None
    assert not any((tmp_path / n).exists() for n in "dcgq")


def test_stop_loss_sweep_records_each_cells_stop_in_the_table(tmp_path):
    from flatness.formats.checkpoint import LAST, load_checkpoint, read_metrics

    # one epoch as the cap; on digits lr 0.02 gets under 0.15 in it (~0.13), lr 0.1 does not (~0.27)
    out = tmp_path / "stop"
    settings = SweepSettings(
        out=str(out), grid="lr=0.02,0.1", seeds="0", dataset="digits", quick=True, epochs=1, stop_loss=0.15
    )
    run_sweep(dataclasses.replace(settings, workers=1, progress=False), echo=None)
    rows, axes, measures = read_table(str(out))
    assert axes == ["lr"] and "stopped_epoch" not in measures and "reached_stop_loss" not in measures
    for r in rows:
        folder = out / CELLS / r["cell"]
        metrics, (_, info) = read_metrics(str(folder)), load_checkpoint(str(folder / LAST))
        assert r["stopped_epoch"] == info["epoch"] == info["stop"]["epoch"] == metrics[-1]["epoch"] == 1
        assert r["reached_stop_loss"] is info["stop"]["reached"] is (metrics[-1]["full_train_loss"] <= 0.15)
    assert [r["reached_stop_loss"] for r in rows] == [True, False]


def test_sweep_settings_checked_resolves_the_defaults(tmp_path):
    """checked() lowercases the engine and resolves seeds, dataset, model and workers; the default grid
    stays None (its cells train to the stop loss)."""
    checked = SweepSettings(out=str(tmp_path / "s"), engine="LOCAL", dataset="digits").checked()
    assert (checked.engine, checked.seeds, checked.model, checked.grid) == ("local", DEFAULT_SEEDS, "convnet", None)
    assert checked.workers == (os.cpu_count() or 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        checked.quick = True
    with pytest.raises(FlatnessError, match="--workers"):
        SweepSettings(out=str(tmp_path / "s"), workers=0).checked()
