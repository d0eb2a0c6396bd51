"""``flatness.study.experiment_steps``: the study's runs, their configs and its surfaces, planned before any runs."""

from __future__ import annotations

import os

from flatness.sharpness.measure import SharpnessSettings
from flatness.sharpness.oracle import DEFAULTS
from flatness.study.experiment_config import ExperimentConfig
from flatness.study.experiment_steps import (
    interp_path,
    run_dir,
    surface_jobs,
    surface_seed,
    train_config_for,
    with_training_radius,
)
from flatness.training.config import build_config


def _cfg(tmp_path, **kw):
    values = {"out": str(tmp_path), "methods": "erm,amp,sam", "seeds": "3,1", "grid": 5, "epochs": 2} | kw
    return ExperimentConfig(**values).checked()


def test_a_runs_config_is_what_flatness_train_would_build(tmp_path):
    cfg = _cfg(tmp_path, train_overrides={"epsilon": 0.25, "lr": 0.07}, match_loss=0.02)
    config = train_config_for(cfg, "amp", 1)
    expected = build_config(
        {
            "dataset": "mnist1d",
            "method": "amp",
            "seed": 1,
            "device": "auto",
            "epochs": 2,
            "epsilon": 0.25,
            "lr": 0.07,
            "match_loss": 0.02,
            "model": cfg.model,
        }  # fmt: skip
    )
    assert config == expected
    assert (config.recipe, config.model, config.epsilon, config.lr, config.match_loss) == (
        "mnist1d-default", "mlp1d", 0.25, 0.07, 0.02
    )  # fmt: skip
    assert run_dir(cfg, "amp", 1) == os.path.join(str(tmp_path), "runs", "amp-s1")


def test_the_surfaces_of_a_study(tmp_path):
    cfg = _cfg(tmp_path)
    assert surface_seed(cfg) == 3  # the first seed given
    jobs = {job.name: job for job in surface_jobs(cfg)}
    assert sorted(jobs) == sorted(
        [f"surface {d} {m} s3" for m in ("erm", "amp", "sam") for d in ("1D", "2D")]
        + ["surface interp erm→amp s3", "surface interp erm→sam s3"]
    )
    one, two = jobs["surface 1D amp s3"], jobs["surface 2D amp s3"]
    assert one.checkpoint == os.path.join(str(tmp_path), "runs", "amp-s3", "last.pt")
    assert one.options == {"x": (-1.0, 1.0, 9), "direction": "random"} and one.points == 9  # 2g − 1 points
    assert two.options["y"] == (-1.0, 1.0, 5) and two.points == 25
    line = jobs["surface interp erm→sam s3"]
    assert line.checkpoint == os.path.join(str(tmp_path), "runs", "erm-s3", "last.pt")
    assert line.options == {
        "x": (-0.5, 1.5, 9),
        "direction": f"interp:{os.path.join(str(tmp_path), 'runs', 'sam-s3', 'last.pt')}",
    }
    assert line.runs == (("erm", 3), ("sam", 3))
    assert line.out == interp_path(cfg, "sam") == os.path.join(str(tmp_path), "surfaces", "interp-erm-sam-s3.h5")


def test_the_primary_radii_join_the_default_radii(tmp_path):
    cfg = _cfg(tmp_path, train_overrides={"epsilon": 0.3})  # AMP's ε is r: r and r/5 are probed
    rhos = with_training_radius(cfg, SharpnessSettings()).rhos
    assert list(rhos[: len(DEFAULTS["rhos"])]) == list(DEFAULTS["rhos"])
    assert 0.3 not in DEFAULTS["rhos"] and list(rhos[len(DEFAULTS["rhos"]) :]) == [0.3, 0.3 / 5]
    given = SharpnessSettings(rhos=(0.01,))
    assert with_training_radius(cfg, given) is given  # radii the user chose are kept as they are
