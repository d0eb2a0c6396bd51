"""flatness.cli.train_options: the training options ``train`` and ``experiment`` share, one definition, each one a
``TrainConfig`` field; what the user typed reaches the run's config, what was left out keeps the default."""

from __future__ import annotations

import dataclasses
import json

import click
import pytest
from click.testing import CliRunner
from user_model_helpers import one_line_error

from flatness.cli import experiment, train
from flatness.cli.train_options import TRAINING_PARAMETERS, D, explicit_training_values, training_options
from flatness.training.config import TrainConfig


@click.command()
@training_options
def _echo(**values):
    click.echo(json.dumps(explicit_training_values(values), sort_keys=True))


def _params(command):
    return {p.name: p for p in command.params}


def test_the_parameters_are_the_options_in_order_and_each_a_config_field():
    assert [p.name for p in _echo.params] == list(TRAINING_PARAMETERS)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {"compile" if n == "compile_" else n for n in TRAINING_PARAMETERS} <= fields
    assert all(p.default is None for p in _echo.params)  # left out: the recipe's or the config's default


def test_train_and_experiment_declare_each_option_alike():
    ours, in_train, in_experiment = _params(_echo), _params(train.command), _params(experiment.command)
    for name in TRAINING_PARAMETERS:
        for other in (in_train, in_experiment):
            assert other[name].opts == ours[name].opts and other[name].secondary_opts == ours[name].secondary_opts
            assert other[name].help == ours[name].help and other[name].type.name == ours[name].type.name


def test_the_help_shows_the_configs_defaults():
    helps = {p.name: p.help for p in _echo.params}
    assert f"[default: {D.epochs};" in helps["epochs"] and f"[default: {D.lr};" in helps["lr"]
    assert f"[default: {D.batch_size};" in helps["batch_size"] and f"[default: {D.rho}]" in helps["rho"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], {}),
        (["--lr", "0.25", "--epochs", "3"], {"lr": 0.25, "epochs": 3}),
        (["--compile", "--no-nesterov"], {"compile": True, "nesterov": False}),  # compile_ -> compile
        (["--milestones", "5,9", "--precision", "bf16"], {"milestones": "5,9", "precision": "bf16"}),
    ],
)
def test_only_what_was_typed_is_explicit(args, expected):
    result = CliRunner().invoke(_echo, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == expected
    assert explicit_training_values({"lr": None, "out": "x", "seed": 3}) == {}  # other names ignored


def test_a_bad_choice_is_refused_by_the_option():
    result = CliRunner().invoke(_echo, ["--precision", "fp16"])
    assert result.exit_code == 2 and "'fp16' is not one of 'fp32', 'bf16'" in result.output


def test_a_tiny_training_run_records_the_typed_values_and_the_defaults(cli, user, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", user["model"], "--dataset", user["npz"], "--no-progress"]
    result = cli(args + ["--out", out, "--epochs", "1", "--batch-size", "16", "--lr", "0.37", "--no-nesterov"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert (config["epochs"], config["batch_size"], config["lr"], config["nesterov"]) == (1, 16, 0.37, False)
    assert (config["momentum"], config["weight_decay"], config["schedule"]) == (D.momentum, D.weight_decay, D.schedule)
    line = one_line_error(cli(args + ["--out", tmp_path / "bad", "--epochs", "0"]))
    assert "epochs must be an integer >= 1, got 0" in line and not (tmp_path / "bad" / "last.pt").exists()
