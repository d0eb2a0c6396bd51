"""flatness.training.config: the recipe a dataset picks, the checked settings, the learning-rate schedule."""


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
