"""flatness sweep (cli/sweep.py): a bad grid or bad options are one line and start nothing, the ray engine
without ray says how to install it, and two shards into one folder equal one run."""

import importlib.util
import subprocess

import pytest
from click.testing import CliRunner
from sweep_runs import TINY, sweep_cmd, uninterrupted_cells

from flatness.cli.main import main


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted sweep, on two local worker processes."""
    return uninterrupted_cells(tmp_path_factory)


@pytest.mark.parametrize(
    "grid, message",
    [
        ("colour=red", "unknown grid key 'colour'"),
        ("lr=fast", "grid key lr takes numbers, got 'fast'"),
        ("batch_size=3.5", "grid key batch_size takes integers"),
        ("   ", "the grid is empty"),
        ("lr=", "grid key lr has no values"),
        ("rho=0.1", "applies only to sam cells"),
        ("method=erm,newton", "unknown method 'newton'"),
        ("lr=-1", "lr must be a positive number"),
    ],
)
def test_bad_grid_is_one_line_and_starts_nothing(tmp_path, grid, message):
    out = tmp_path / "sweep"
    result = CliRunner().invoke(main, ["sweep", "--out", str(out), "--quick", "--dataset", "digits", "--grid", grid])
    assert result.exit_code != 0
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "option, message",
    [
        (["--shard", "3/2"], "--shard I/N needs 0 <= I < N"),
        (["--shard", "two"], "--shard takes I/N"),
        (["--engine", "spark"], "unknown engine 'spark'"),
        (["--seeds", "0,0"], "--seeds repeats a value"),
        (["--workers", "0"], "--workers"),
        (["--stop-loss", "0"], "stop_loss must be a finite number > 0"),
        (["--stop-loss", "inf"], "stop_loss must be a finite number > 0"),
    ],
)
def test_bad_options_are_one_line_and_start_nothing(tmp_path, option, message):
    out = tmp_path / "sweep"
    result = CliRunner().invoke(main, ["sweep", "--out", str(out), *TINY, *option])
    assert result.exit_code != 0 and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_ray_engine_without_ray_says_how_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    out = tmp_path / "sweep"
    result = CliRunner().invoke(main, ["sweep", "--out", str(out), *TINY, "--engine", "ray"])
    assert result.exit_code != 0 and "pip install 'flatness[ray]'" in result.output
    assert not out.exists()


def test_two_shards_into_one_folder_equal_one_run(reference, tmp_path):
    out = tmp_path / "shared"
    procs = [
        subprocess.Popen(
            sweep_cmd(out, "--workers", "1", "--shard", f"{i}/2"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert (out / "cells.csv").read_text() == reference
