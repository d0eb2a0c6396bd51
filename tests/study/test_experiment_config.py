"""flatness.study.experiment_config: ExperimentConfig.checked() (frozen, defaults filled, experiment.json's probe
record as before, unknown training options and methods without erm refused)."""

import pytest


def test_checked_config_is_frozen_fills_defaults_and_records_the_probe_as_before():
    """experiment.json's probe record keeps the layout of the dict the study stored before ProbeSettings."""
    import dataclasses

    from flatness.core.errors import FlatnessError
    from flatness.study.experiment_config import ExperimentConfig

    cfg = ExperimentConfig(quick=True, methods="erm,AMP", seeds="0,1", workers=1, threads=2).checked()
    assert (cfg.methods, cfg.seeds, cfg.epochs, cfg.samples, cfg.grid) == (("erm", "amp"), (0, 1), 1, 128, 5)
    assert (cfg.model, cfg.recipe, cfg.match_loss, cfg.workers, cfg.threads) == ("mlp1d", None, 5.0, 1, 2)
    assert cfg.train_overrides == {"batch_size": 128}
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.samples = 3
    quick_probe = {
        "top_k": 2,
        "eig_method": "lanczos",
        "max_iter": 20,
        "tol": 1e-3,
        "trace": True,
        "trace_samples": 4,
        "density": True,
        "density_steps": 10,
        "density_vectors": 1,
        "sharpness": ["all"],
        "sharpness_options": {
            "rhos": [0.05],
            "epsilons": [1e-3],
            "draws": 2,
            "ascent_steps": 2,
            "lbfgs_iterations": 2,
            "pac_bayes_draws": 2,
        },
    }
    record = cfg.to_dict()["probe"]
    assert record == quick_probe and list(record) == list(quick_probe)
    float64 = dataclasses.replace(cfg.probe, dtype="float64", samples=7)  # samples: the study's own
    assert list(ExperimentConfig(probe=float64).to_dict()["probe"]) == [*quick_probe, "dtype"]
    with pytest.raises(FlatnessError, match="unknown training option.*lrr"):
        ExperimentConfig(train_overrides={"lrr": 0.1}).checked()
    with pytest.raises(FlatnessError, match="--methods must include erm"):
        ExperimentConfig(methods=("amp", "sam")).checked()
