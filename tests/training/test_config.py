"""flatness.training.config: the recipe a dataset picks, the checked settings, the learning-rate schedule."""

import dataclasses
import os

import pytest
import torch

from flatness.core.errors import FlatnessError
from flatness.training.config import GAMMA, TrainConfig, default_out_dir, lr_at


def test_mnist1d_picks_its_model_and_recipe():
    from flatness.training.config import build_config, recipe_values

    config = build_config({"dataset": "mnist1d"})
    assert (config.model, config.recipe) == ("mlp1d", "mnist1d-default")
    recipe = recipe_values("mnist1d-default")
    assert (config.lr, config.epsilon, config.inner_lr, config.schedule, config.nesterov) == (
        recipe["lr"],
        0.5,
        1.0,
        "cosine",
        False,
    )
    assert build_config({"dataset": "mnist1d", "model": "conv1d", "lr": 0.05}).model == "conv1d"
    assert build_config({"dataset": "mnist1d", "lr": 0.05}).lr == 0.05
    assert build_config({}).model == "convnet"  # digits keeps the general defaults


def scheduler_lrs(config, make_scheduler):
    """The learning rate of each epoch by torch's own scheduler, stepped once per epoch: the ground truth."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for _ in range(config.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_lr_at_is_torchs_step_and_cosine_schedules_in_closed_form():
    step = TrainConfig(lr=0.3, epochs=10, schedule="step", milestones="7,3").checked()
    assert step.milestones == [3, 7]
    expected = scheduler_lrs(step, lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [3, 7], gamma=GAMMA))
    assert [lr_at(step, e) for e in range(1, 11)] == pytest.approx(expected, rel=1e-12)
    assert lr_at(step, 4) == pytest.approx(0.03) and lr_at(step, 3) == 0.3  # milestone 3: x0.1 from epoch 4
    cosine = TrainConfig(lr=0.2, epochs=7, schedule="cosine").checked()
    expected = scheduler_lrs(cosine, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=7))
    assert [lr_at(cosine, e) for e in range(1, 8)] == pytest.approx(expected, rel=1e-9)
    constant = TrainConfig(lr=0.07, epochs=3, schedule="constant").checked()
    assert [lr_at(constant, e) for e in (1, 2, 3)] == [0.07] * 3


def test_checked_returns_a_frozen_canonical_copy():
    given = TrainConfig(model="ConvNet", milestones="9, 2", loss=None)
    checked = given.checked()
    assert checked is not given and (checked.model, checked.milestones) == ("convnet", [2, 9])
    assert given.milestones == "9, 2"  # the original is left as it was
    with pytest.raises(dataclasses.FrozenInstanceError):
        checked.lr = 1.0
    assert TrainConfig.from_dict(checked.to_dict()).checked() == checked


@pytest.mark.parametrize(
    "values, message",
    [
        ({"method": "adam"}, "unknown method 'adam'; choose one of: "),
        ({"schedule": "linear"}, "unknown schedule 'linear'"),
        ({"epochs": 0}, "epochs must be an integer >= 1, got 0"),
        ({"batch_size": 2.0}, "batch_size must be an integer >= 1"),
        ({"save_every": -1}, "save_every must be an integer >= 0"),
        ({"seed": -1}, "seed must be an integer >= 0, got -1"),
        ({"seed": 2**64}, "seed must be a whole number"),
        ({"depth": -1}, "depth must be an integer >= 0"),
        ({"lr": 0}, "lr must be a positive number, got 0"),
        ({"rho": float("nan")}, "rho must be a positive number"),
        ({"momentum": -0.1, "nesterov": False}, "momentum must be a non-negative number"),
        ({"momentum": 0, "nesterov": True}, "Nesterov momentum needs momentum > 0"),
        ({"grad_clip": 0}, "grad_clip must be a positive number"),
        ({"milestones": "3,x"}, "milestones must be a comma-separated list of epochs"),
        ({"milestones": [0]}, "milestones must be epochs >= 1, got 0"),
        ({"model_args": {"width": 3}}, "--model-args applies to --model module:callable"),
    ],
)
def test_checked_refuses_each_bad_value_in_one_line_naming_it(values, message):
    with pytest.raises(FlatnessError) as info:
        TrainConfig(**values).checked()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_default_out_dir_names_dataset_model_method_and_seed():
    config = TrainConfig(model="mlp", method="sam", seed=4).checked()
    assert default_out_dir(config) == os.path.join("checkpoints", "digits-mlp-sam-s4")
