"""flatness.sharpness.measure: the settings checked in one line each and put in normal form, radii parsed from
numbers and command-line text, the solver settings, the records' layout, and every metric on a real checkpoint:
finite, reproducible under the seed, the model's mode and weights given back."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from quadratic_toys import Params, dummy_data, quadratic_loss, random_sym

import flatness.sharpness as S
from flatness.core.errors import FlatnessError
from flatness.formats.checkpoint import load_checkpoint


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(metrics="sharpest"), "unknown sharpness metric"),
        (dict(metrics="worst_case,nope"), "unknown sharpness metric"),
        (dict(metrics=""), "no sharpness metric"),
        (dict(metrics="all", rhos=[0.1, 0.0]), "rho must be > 0"),
        (dict(metrics="all", rhos=[-1]), "rho must be > 0"),
        (dict(metrics="all", rhos=[float("nan")]), "rho must be > 0"),
        (dict(metrics="keskar", epsilons=[0]), "epsilon must be > 0"),
        (dict(metrics="worst_case", rhos=[]), "at least one rho"),
        (dict(metrics="all", draws=0), "draws must be"),
        (dict(metrics="all", ascent_steps=0), "ascent steps must be"),
        (dict(metrics="all", ball="sphere"), "ball must be"),
        (dict(metrics="all", p=3), "p must be 2 or inf"),
        (dict(metrics="all", lbfgs_iterations=0), "lbfgs iterations must be"),
        (dict(metrics="all", pac_bayes_draws=0), "pac-bayes draws must be"),
        (dict(metrics="all", draws=1.5), "draws must be an integer"),
        (dict(metrics="all", draws=float("nan")), "draws must be an integer"),
        (dict(metrics="all", ascent_steps="3"), "ascent steps must be an integer >= 1, got '3'"),
        (dict(metrics="all", draws=True), "draws must be an integer"),
        (dict(metrics="all", rhos="0.1,x"), "--rho takes numbers separated by commas, got 'x'"),
    ],
)
def test_checked_rejects_bad_input(kwargs, match):
    with pytest.raises(FlatnessError, match=match) as info:
        S.SharpnessSettings(**kwargs).checked()
    assert "\n" not in str(info.value)


def test_checked_expands_all_and_names():
    assert S.SharpnessSettings(metrics="all").checked().metrics == S.METRIC_NAMES
    assert S.SharpnessSettings(metrics="keskar, pac-bayes,keskar").checked().metrics == ("keskar", "pac_bayes")
    settings = S.SharpnessSettings(metrics=["worst_case"], rhos=[0.1], ball="global", draws=3, ascent_steps=2, p="inf")
    checked = settings.checked()
    assert checked.metrics == ("worst_case",) and checked.rhos == (0.1,) and checked.p == "inf"
    assert checked.epsilons == S.DEFAULTS["epsilons"] and checked.draws == 3 and checked.lbfgs_iterations is None
    assert checked.checked() == checked  # the normal form is a fixed point
    assert S.SharpnessSettings().checked().rhos == S.DEFAULTS["rhos"] and S.SharpnessSettings().checked().p == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.ball = "tensor"


@pytest.mark.parametrize(
    "values, expected",
    [
        (None, (0.02, 0.05)),
        (0.1, (0.1,)),
        ([0.1, "0.2"], (0.1, 0.2)),
        ("0.05, 0.1", (0.05, 0.1)),
        ("0.05,,0.1,", (0.05, 0.1)),
        ([], ()),
    ],
)
def test_radii_reads_numbers_and_command_line_text(values, expected):
    assert S.radii(values, (0.02, 0.05), "rho") == expected


@pytest.mark.parametrize(
    "values, match",
    [
        ("0.05,abc", "--rho takes numbers separated by commas, got 'abc'"),
        ("-1", "--rho values must be finite and > 0, got -1"),
        ("0.1,inf", "--rho values must be finite and > 0, got inf"),
        ("nan", "--rho values must be finite and > 0, got nan"),
        (" , ", "--rho needs at least one value"),
        ([0.1, float("inf")], "rho must be > 0 and finite"),
        (0, "rho must be > 0 and finite"),
        (["x"], "rho must be a number, got 'x'"),
    ],
)
def test_radii_rejects_bad_values_in_one_line(values, match):
    with pytest.raises(FlatnessError, match=match) as info:
        S.radii(values, (0.02,), "rho")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "settings, match",
    [
        (S.AscentSettings(steps=0), "ascent steps must be >= 1"),
        (S.AscentSettings(init="sideways"), "init must be gradient or random"),
        (S.BisectionSettings(target_deviation=1.0), "target deviation must be in"),
        (S.BisectionSettings(target_deviation=0), "target deviation must be in"),
    ],
)
def test_solver_settings_are_checked(settings, match):
    with pytest.raises(FlatnessError, match=match):
        settings.checked()


def test_solver_settings_fill_the_defaults():
    assert S.AscentSettings().checked() == S.AscentSettings(steps=10, step_size=1.0, init="gradient")
    assert S.BisectionSettings().checked() == S.BisectionSettings(target_deviation=0.1, tolerance=0.02, max_steps=30)


def test_results_keep_the_probe_record_layout():
    """The probe JSON's sharpness records are the results' to_dict(): their keys, in this order, are the format."""
    counts = ["loss_evals", "gradient_evals", "error_evals", "seconds"]
    layout = {
        "keskar": ["metric", "value", "epsilon", "p", "ball", "c", "base_loss", "max_loss", "solver", "iterations"]
        + ["solver_message"],
        "worst_case": ["metric", "value", "rho", "p", "ball", "c", "base_loss", "max_loss", "solver", "iterations"]
        + ["best_step", "init", "step_size", "delta_norm"],
        "average_case": ["metric", "value", "stderr", "rho", "p", "ball", "c", "base_loss", "draws", "solver"]
        + ["iterations"],
        "pac_bayes": ["metric", "value", "sigma", "flatness", "p", "ball", "c", "base_error", "criterion"]
        + ["target_deviation", "draws", "sigma_low", "sigma_high", "converged", "solver", "iterations"],
    }
    A = random_sym([2.0, 1.0, 0.5], seed=5)
    oracle = S.LossOracle(Params(np.array([0.3, -0.2, 0.1])), dummy_data(), quadratic_loss(A))
    results = S.measure_with_oracle(
        oracle, S.SharpnessSettings(metrics="all", rhos=0.1, epsilons=1e-3, draws=2, ascent_steps=2, pac_bayes_draws=2)
    )
    assert [r.metric for r in results] == list(S.METRIC_NAMES)
    for r in results:
        record = r.to_dict()
        assert list(record) == layout[r.metric.replace("adaptive_", "").replace("_magnitude", "")] + counts
        assert record["value"] == r.value and json.loads(json.dumps(record)) == record
    assert (results[0].p, results[0].ball, results[0].solver) == ("inf", "box", "L-BFGS-B")
    assert (results[3].p, results[3].ball, results[5].solver) == (None, None, "bisection")


def _strip(records):
    return [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in records]


def test_measure_sharpness_all_on_digits_checkpoint(digits_checkpoint, small_digits):
    model, _ = load_checkpoint(digits_checkpoint)
    model.train()  # measure_sharpness must measure in eval mode and give the mode back
    state = {k: v.clone() for k, v in model.state_dict().items()}
    settings = S.SharpnessSettings(
        ball="tensor", draws=6, ascent_steps=5, seed=3, progress=False, lbfgs_iterations=5, pac_bayes_draws=4
    )
    kw = dict(rho=[0.05, 0.5], epsilon=[1e-3], settings=settings)
    results = S.measure_sharpness(model, small_digits, S.METRIC_NAMES, **kw)
    records = [r.to_dict() for r in results]  # the probe file's records
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # weights and BN buffers, bit for bit
    assert [r["metric"] for r in records] == ["keskar"] + ["worst_case"] * 2 + ["adaptive_worst_case"] * 2 + [
        "average_case"
    ] * 2 + ["adaptive_average_case"] * 2 + ["pac_bayes", "pac_bayes_magnitude"]
    for r in records:
        assert math.isfinite(r["value"]) and r["seconds"] >= 0
        for key in ("p", "ball", "c", "solver", "iterations", "loss_evals", "gradient_evals", "error_evals"):
            assert key in r
        if r["metric"] in S.RHO_METRICS:
            assert r["rho"] in (0.05, 0.5)
        if "average_case" in r["metric"]:
            assert math.isfinite(r["stderr"])
        if r["metric"].startswith("pac_bayes"):
            assert r["sigma"] > 0 and r["flatness"] == pytest.approx(1 / r["sigma"] ** 2)
    keskar = records[0]
    assert keskar["epsilon"] == 1e-3 and keskar["solver"] == "L-BFGS-B" and keskar["value"] >= 0
    wc = [r for r in records if r["metric"] == "worst_case"]
    assert wc[0]["ball"] == "tensor" and 0 < wc[0]["value"] < wc[1]["value"]
    json.dumps(records)  # JSON-safe
    model.eval()
    again = S.measure_sharpness(model, small_digits, "all", **kw)
    assert _strip(again) == _strip(results)  # reproducible under the seed
    other = S.measure_sharpness(
        model,
        small_digits,
        "average_case",
        rho=kw["rho"],
        epsilon=kw["epsilon"],
        settings=dataclasses.replace(settings, seed=4),
    )
    assert other[0].value != results[5].value
