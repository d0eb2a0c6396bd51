"""flatness.training.launch: the torchrun relaunch of --nproc and training from the command's options."""

import sys

import pytest

from flatness.core.errors import FlatnessError
from flatness.training import launch


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--nproc", "3", "--epochs", "1"],
        ["train", "--nproc=3", "--epochs", "1"],
        ["train", "--epochs", "1", "--nproc", "3"],
    ],
)
def test_relaunch_runs_the_same_command_line_under_torchrun_without_nproc(monkeypatch, argv):
    calls = []
    monkeypatch.setattr(launch.subprocess, "call", lambda line: calls.append(line) or 7)
    assert launch.relaunch_under_torchrun(3, argv=argv) == 7  # torchrun's exit code is the command's
    (line,) = calls
    assert line[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=3"]
    assert line[5:] == ["-m", "flatness.cli", "train", "--epochs", "1"]


def test_relaunch_checks_the_logger_before_any_process_starts(monkeypatch):
    monkeypatch.setattr(launch.subprocess, "call", lambda line: pytest.fail("started torchrun"))
    with pytest.raises(FlatnessError, match="unknown logger"):
        launch.relaunch_under_torchrun(2, logger="wandb", argv=["train"])


def test_needs_relaunch_only_outside_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert launch.needs_relaunch(2) and not launch.needs_relaunch(1)
    monkeypatch.setenv("WORLD_SIZE", "2")  # one of torchrun's processes: never again
    assert not launch.needs_relaunch(2)
