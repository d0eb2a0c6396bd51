"""``flatness.training.run_folder``: whether ``--out`` may be started or resumed, and what a killed run left."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.formats.checkpoint import save_checkpoint
from flatness.training.config import TrainConfig
from flatness.training.run_folder import prepare_folder, resume_config, stored_config, write_metrics

CONFIG = TrainConfig(epochs=4, lr=0.05, seed=3).checked()


def _checkpoint(path, config: TrainConfig, epoch: int, weight: float = 1.0) -> None:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(weight)
    save_checkpoint(str(path), model, model_spec={"name": "linear"}, config=config.to_dict(), epoch=epoch)


def _run(folder, config: TrainConfig = CONFIG, epoch: int = 2, recorded: TrainConfig | None = None):
    """A run folder stopped after ``epoch`` epochs: config.json, init.pt, last.pt, metrics.jsonl."""
    os.makedirs(folder, exist_ok=True)
    (folder / "config.json").write_text(json.dumps((recorded or config).to_dict()))
    _checkpoint(folder / "init.pt", config, 0)
    _checkpoint(folder / "last.pt", config, epoch, weight=float(epoch))
    write_metrics(str(folder), [{"epoch": e, "train_loss": 1.0 / e} for e in range(1, epoch + 1)])
    return folder


def test_a_new_folder_starts_a_new_run(tmp_path):
    assert prepare_folder(CONFIG, str(tmp_path / "new"), resume=False, main_rank=True) == (None, CONFIG)
    (tmp_path / "empty").mkdir()
    assert prepare_folder(CONFIG, str(tmp_path / "empty"), resume=False, main_rank=True) == (None, CONFIG)


def test_a_resume_goes_on_from_last_pt_with_more_epochs(tmp_path):
    folder = _run(tmp_path / "run")
    state, config = prepare_folder(TrainConfig.from_dict({**CONFIG.to_dict(), "epochs": 6}), str(folder), True, True)
    assert state["epoch"] == 2 and float(state["model_state"]["weight"][0, 0]) == 2.0
    assert config.epochs == 6 and config.lr == 0.05 and config.seed == 3
    assert stored_config(str(folder)) == CONFIG


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"lr": 0.1}, "cannot change lr when resuming"),
        ({"seed": 4}, "cannot change seed when resuming"),
        ({"epochs": 1}, "has already trained 2 epochs; --epochs 1 would not undo them"),
    ],
)
def test_a_resume_refuses_what_may_not_change(tmp_path, change, says):
    folder = _run(tmp_path / "run")
    asked = TrainConfig.from_dict({**CONFIG.to_dict(), **change}).checked()
    with pytest.raises(FlatnessError) as err:
        prepare_folder(asked, str(folder), resume=True, main_rank=True)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_a_last_pt_copied_in_from_another_run_is_refused(tmp_path):
    other = TrainConfig.from_dict({**CONFIG.to_dict(), "lr": 0.2}).checked()
    folder = _run(tmp_path / "run", config=other, recorded=CONFIG)
    with pytest.raises(FlatnessError, match=r"last.pt is not this run's checkpoint: it was trained with lr=0.2"):
        prepare_folder(CONFIG, str(folder), resume=True, main_rank=True)


def test_a_finished_folder_is_not_started_over(tmp_path):
    folder = _run(tmp_path / "run")
    with pytest.raises(FlatnessError, match="already exists and is not empty; pass --resume"):
        prepare_folder(CONFIG, str(folder), resume=False, main_rank=True)
    assert (folder / "last.pt").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FlatnessError, match="not empty"):
        prepare_folder(CONFIG, str(mine), resume=False, main_rank=True)
    assert (mine / "notes.txt").read_text() == "keep"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FlatnessError, match="is a file, not a run folder"):
        prepare_folder(CONFIG, str(tmp_path / "file"), resume=False, main_rank=True)


def test_a_run_killed_in_its_first_epoch_starts_over_and_its_temporaries_go(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG.to_dict()))
    _checkpoint(folder / "init.pt", CONFIG, 0)
    (folder / ".last.pt.abc123.tmp").write_bytes(b"cut short")
    (folder / ".epoch-001.pt.x.tmp").write_bytes(b"cut short")
    # resuming it starts it over (nothing was finished)
    assert prepare_folder(CONFIG, str(folder), resume=True, main_rank=True) == (None, CONFIG)
    assert sorted(os.listdir(folder)) == []  # the first files and the temporaries removed
    with pytest.raises(FlatnessError, match=r"nothing to resume in .* \(no last.pt\)"):
        stored_config(str(folder))  # now empty


def test_another_rank_removes_nothing(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG.to_dict()))
    (folder / ".last.pt.abc.tmp").write_bytes(b"x")
    prepare_folder(CONFIG, str(folder), resume=False, main_rank=False)
    assert sorted(os.listdir(folder)) == [".last.pt.abc.tmp", "config.json"]


def test_resume_config_needs_the_code_named_again(tmp_path):
    config = TrainConfig.from_dict({**CONFIG.to_dict(), "model": f"{tmp_path}/net.py:make"})
    folder = _run(tmp_path / "run", config=config)
    with pytest.raises(FlatnessError, match=r"pass --model .*net.py:make again"):
        resume_config(str(folder), {"epochs": 5})


def test_write_metrics_is_one_json_line_per_epoch(tmp_path):
    records = [{"epoch": 1, "test_acc": 0.5}, {"epoch": 2, "test_acc": 0.75}]
    write_metrics(str(tmp_path), records)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records
