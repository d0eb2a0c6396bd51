"""``flatness.training.recipes``: every named preset is a valid training config with the published values."""

from __future__ import annotations

import pytest

from flatness.core.errors import FlatnessError
from flatness.training.config import TrainConfig, build_config, recipe_values
from flatness.training.recipes import DATASET_RECIPES, RECIPES, recipe_names


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_is_a_valid_config(name):
    config = build_config({}, recipe=name)
    assert config.recipe == name
    for key, value in RECIPES[name]["values"].items():
        assert getattr(config, key) == value, key
    assert RECIPES[name]["description"]


def test_the_amp_paper_values():
    # Zheng et al. (CVPR 2021) and their reference code: PreActResNet18, SGD 0.1 Nesterov, wd 1e-4, batch 50, ...
    c = build_config({}, recipe="amp-paper")
    assert (c.model, c.dataset, c.method, c.epochs, c.batch_size, c.lr) == (
        "preactresnet18",
        "cifar10",
        "amp",
        200,
        50,
        0.1,
    )
    assert (c.momentum, c.nesterov, c.weight_decay, c.schedule, c.milestones) == (0.9, True, 1e-4, "step", [100, 150])
    assert (c.grad_clip, c.epsilon, c.inner_lr, c.inner_iter, c.ball, c.augment) == (50.0, 0.5, 1.0, 1, "tensor", True)
    vgg = build_config({}, recipe="amp-paper-vgg")
    assert (vgg.model, vgg.epsilon, vgg.inner_lr, vgg.lr) == ("vgg16", 0.1, 0.2, 0.1)
    per = build_config({}, recipe="amp-wrn-28-10-svhn")
    assert (per.model, per.dataset, per.epsilon) == ("wrn-28-10", "svhn", 0.5)
    assert len([n for n in RECIPES if n.startswith(("amp-preactresnet18-", "amp-wrn-28-10-"))]) == 8


def test_typed_options_override_a_recipe_and_defaults_fill_the_rest():
    c = build_config({"lr": 0.01, "epochs": 3}, recipe="amp-paper")
    assert (c.lr, c.epochs, c.batch_size) == (0.01, 3, 50)
    assert build_config({}, recipe="digits-default").to_dict() | {
        "recipe": None
    } == TrainConfig().checked().to_dict() | {"recipe": None}


def test_a_dataset_recipe_is_the_default_for_its_dataset():
    assert DATASET_RECIPES["mnist1d"] in RECIPES
    c = build_config({"dataset": "mnist1d"})
    assert (c.recipe, c.model, c.schedule) == ("mnist1d-default", "mlp1d", "cosine")


def test_names_and_unknown_recipes():
    assert recipe_names() == sorted(RECIPES)
    with pytest.raises(FlatnessError, match="unknown recipe 'nope'; choose one of: amp-paper"):
        recipe_values("nope")
    values = recipe_values("amp-paper")
    values["lr"] = 9.0
    assert RECIPES["amp-paper"]["values"]["lr"] == 0.1  # a copy: the preset is never changed
