"""Every number of one run (study/quantities.py) against values worked out by hand, with the probe's and
the training log's train accuracy and loss DIFFERENT, so that a swapped source or subtraction shows.
Scale invariance: the flag table checked on a rescaled ReLU net, and the primary rule."""

import copy

import pytest
import torch

from flatness.sharpness.measure import SharpnessSettings
from flatness.study.probe import ProbeSettings, measure
from flatness.study.quantities import (
    BASE_QUANTITIES,
    INVARIANT_METRICS,
    Quantity,
    is_primary_sharpness,
    primary_radii,
    probe_values,
    quantities_for,
    record_values,
    sharpness_key,
    sharpness_unit,
    training_radius,
)
from flatness.study.run_record import RunRecord

FIRST = {"epoch": 1, "train_acc": 0.5, "test_acc": 0.4, "train_loss": 2.0, "test_loss": 2.5}
LAST = {"epoch": 2, "train_acc": 0.9, "test_acc": 0.8, "train_loss": 0.3, "test_loss": 0.7}
TRAIN_PROBE = {"data": {"split": "train"}, "accuracy": 0.97, "loss": 0.1}


def record(epochs=(FIRST, LAST), probe=None):
    return RunRecord(source="run", method="erm", seed=0, epochs=list(epochs), probe=probe)


def test_gaps_use_the_train_probe_in_eval_mode_and_the_last_epochs_test_numbers():
    out = record(probe=TRAIN_PROBE | {"hessian": {"eigenvalues": [3.0]}})
    values = record_values(out)
    assert values["test_acc"] == pytest.approx(80.0)
    assert values["train_acc"] == pytest.approx(90.0)  # the log's, kept as its own row
    assert values["probe_acc"] == pytest.approx(97.0)
    assert values["probe_loss"] == pytest.approx(0.1)
    assert values["gap_acc"] == pytest.approx(97.0 - 80.0)  # probe train accuracy − test accuracy, in pp
    assert values["gap_loss"] == pytest.approx(0.7 - 0.1)  # test loss − probe train loss, in nats
    assert values["lambda_1"] == 3.0


def test_gaps_fall_back_to_the_logged_train_numbers_without_a_train_probe():
    values = record_values(record())
    assert values["gap_acc"] == pytest.approx(90.0 - 80.0)
    assert values["gap_loss"] == pytest.approx(0.7 - 0.3)
    assert "probe_acc" not in values and "probe_loss" not in values
    # a probe made on the test split is no train measurement: the gaps keep the logged train numbers
    test_probe = {"data": {"split": "test"}, "accuracy": 0.6, "loss": 1.5}
    values = record_values(record(probe=test_probe))
    assert values["gap_acc"] == pytest.approx(90.0 - 80.0)
    assert values["gap_loss"] == pytest.approx(0.7 - 0.3)
    assert values["test_acc"] == pytest.approx(80.0)  # the log's test accuracy comes first
    # nor is its loss the "train loss (probe)" row (it was, before this test)
    assert "probe_acc" not in values and "probe_loss" not in values


def test_test_accuracy_from_a_test_probe_only_without_a_log():
    test_probe = {"data": {"split": "test"}, "accuracy": 0.6, "loss": 1.5}
    assert record_values(record(epochs=(), probe=test_probe)) == {"test_acc": pytest.approx(60.0)}
    train_only = record_values(record(epochs=(), probe=TRAIN_PROBE))
    assert train_only == {"probe_acc": pytest.approx(97.0), "probe_loss": 0.1}  # no test number: no gap


def test_missing_or_non_finite_numbers_leave_their_quantities_out():
    last = {"epoch": 2, "train_acc": float("nan"), "test_acc": 0.8, "train_loss": None, "test_loss": 0.7}
    values = record_values(record(epochs=(last,), probe={"data": {"split": "train"}, "accuracy": "n/a", "loss": None}))
    assert values == {"test_acc": pytest.approx(80.0)}
    last = {"epoch": 2, "train_acc": 0.9, "test_acc": 0.8, "train_loss": 0.3, "test_loss": float("inf")}
    values = record_values(record(epochs=(last,)))
    assert "gap_loss" not in values and values["gap_acc"] == pytest.approx(10.0)


def test_probe_values_take_five_eigenvalues_the_trace_and_each_sharpness_radius():
    probe = {
        "hessian": {"eigenvalues": [9.0, 7.0, float("nan"), 4.0, 3.0, 2.0]},
        "trace": {"estimate": 40.0},
        "sharpness": [
            {"metric": "worst_l2", "rho": 0.05, "value": 0.2},
            {"metric": "worst_l2", "rho": 0.1, "value": 0.5},
            {"metric": "adaptive_worst", "rho": 0.5, "p": "inf", "value": 0.7},
            {"metric": "keskar", "epsilon": 0.001, "p": 2, "value": 1.5},
            {"metric": "avg", "rho": 0.05, "value": None},
        ],
    }
    assert probe_values(probe) == {
        "lambda_1": 9.0,
        "lambda_2": 7.0,
        "lambda_4": 4.0,
        "lambda_5": 3.0,
        "trace": 40.0,
        "sharp:worst_l2 ρ=0.05": 0.2,
        "sharp:worst_l2 ρ=0.1": 0.5,
        "sharp:adaptive_worst ρ=0.5 p=inf": 0.7,
        "sharp:keskar ε=0.001": 1.5,
    }
    assert probe_values({"trace": {"estimate": "nan"}, "hessian": {}}) == {}


def test_sharpness_names_and_units():
    assert sharpness_key({"metric": "worst_l2", "rho": 0.05, "p": 2}) == "worst_l2 ρ=0.05 p=2"
    assert sharpness_key({"metric": "keskar", "epsilon": 1e-4, "rho": 2}) == "keskar ρ=2 ε=0.0001"
    assert sharpness_key({"metric": "avg", "rho": "big", "p": 2}) == "avg ρ=big"
    assert sharpness_key({"metric": "avg", "rho": 1.0}) == "avg ρ=1"  # numbers in their shortest form
    assert sharpness_key({}) == "sharpness"
    box = "ε-sharpness: 100·(max over the box of L(θ+y) − L(θ))/(1+L(θ))"
    assert sharpness_unit("PAC_bayes") == ("1/σ²", "PAC-Bayes flatness 1/σ*² (bisection on σ with Monte-Carlo draws)")
    assert sharpness_unit("Keskar") == sharpness_unit("eps_sharpness") == ("%", box)
    assert sharpness_unit("Average") == sharpness_unit("avg") == ("nats", "mean of L(θ+δ) − L(θ) over Gaussian draws")
    assert sharpness_unit("adaptive_worst") == (
        "nats",
        "max of L(θ+δ) − L(θ) over ‖δ/|θ|‖_p ≤ ρ, projected gradient ascent",
    )
    assert sharpness_unit("worst_l2") == ("nats", "max of L(θ+δ) − L(θ) over the ball, projected gradient ascent")


def test_quantities_for_lists_the_rows_present_in_a_fixed_order():
    keskar = {"metric": "keskar", "epsilon": 0.001, "value": 1.0}
    worst = {"metric": "worst_l2", "rho": 0.1, "p": 2, "value": None}  # no value: no row
    a = RunRecord(
        source="a",
        method="erm",
        probe={"sharpness": [keskar, worst]},
        values={"gap_acc": 1.0, "test_acc": 2.0, "lambda_2": 1.0, "trace": 3.0, "lambda_0": 0.1, "lambda_6": 0.5},
    )
    b = RunRecord(
        source="b", method="amp", probe={"sharpness": [keskar]}, values={"lambda_1": 5.0, "sharp:keskar ε=0.001": 1.0}
    )
    rows = quantities_for([a, b])
    by = {q.key: q for q in BASE_QUANTITIES}
    assert rows == [
        by["test_acc"],
        by["gap_acc"],
        # λmax and the trace are primary measures (PRIMARY_RULE); none of these is scale-invariant
        Quantity("lambda_1", "λmax", "", "Hessian eigenvalue #1 of the probe loss", "lower", True, False, True),
        Quantity("lambda_2", "λ2", "", "Hessian eigenvalue #2 of the probe loss", "lower", True, False),
        Quantity(
            "trace", "Hessian trace", "", "Hutchinson estimate over Rademacher vectors", "lower", True, False, True
        ),
        Quantity("sharp:keskar ε=0.001", "keskar ε=0.001", "%", sharpness_unit("keskar")[1], "lower", True, False),
    ]
    assert [q.better for q in BASE_QUANTITIES] == ["higher", "higher", "higher", "lower", "lower", "lower"]
    assert not any(q.flatness for q in BASE_QUANTITIES)


def _fitted_relu_net():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    x = torch.randn(128, 10)
    y = x[:, :3].argmax(1)
    opt = torch.optim.SGD(net.parameters(), lr=0.2)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net, x, y


def _measures(model, x, y):
    settings = ProbeSettings(
        top_k=1,
        trace=True,
        trace_samples=20,
        sharpness=SharpnessSettings(metrics=["all"], rhos=[0.05], epsilons=[1e-3]),
        progress=False,
    )
    result = measure(model, (x, y), settings=settings)
    values = probe_values(result)
    values["probe_loss"], values["probe_acc"] = result["loss"], result["accuracy"]
    metric_of = {"sharp:" + sharpness_key(entry): entry["metric"] for entry in result["sharpness"]}
    return values, metric_of


def test_rescaling_a_relu_layer_moves_exactly_the_measures_flagged_not_invariant():
    net, x, y = _fitted_relu_net()
    rescaled = copy.deepcopy(net)
    with torch.no_grad():  # layer 1 ×4 (weights and bias), layer 2 ÷4: the same function
        rescaled[0].weight.mul_(4)
        rescaled[0].bias.mul_(4)
        rescaled[2].weight.div_(4)
    assert torch.allclose(net(x), rescaled(x), atol=1e-5)
    before, metric_of = _measures(net, x, y)
    after, _ = _measures(rescaled, x, y)
    flags = {"lambda_1": False, "trace": False}
    flags.update({q.key: q.invariant for q in BASE_QUANTITIES})
    flags.update({key: INVARIANT_METRICS[metric] for key, metric in metric_of.items()})
    assert set(metric_of.values()) == set(INVARIANT_METRICS)  # every sharpness metric was measured
    for key, value in before.items():
        change = abs(after[key] - value) / max(abs(value), 1e-12)
        if flags[key]:
            assert change < 2e-3, (key, value, after[key])
        else:
            assert change > 5e-2, (key, value, after[key])  # λmax moves by ~4x, the trace by ~2.6x


def test_primary_rule_uses_amp_epsilon_else_sam_rho():
    configs = [{"method": "erm"}, {"method": "sam", "rho": 0.05}, {"method": "amp", "epsilon": 0.5}]
    assert training_radius(configs) == 0.5
    assert training_radius(configs[:2]) == 0.05
    assert training_radius(configs[:1]) is None
    assert primary_radii(0.5) == (0.5, pytest.approx(0.1))
    assert is_primary_sharpness({"metric": "worst_case", "rho": 0.1, "p": 2}, 0.5)
    assert is_primary_sharpness({"metric": "worst_case", "rho": 0.5, "p": 2}, 0.5)
    assert not is_primary_sharpness({"metric": "worst_case", "rho": 0.05, "p": 2}, 0.5)
    assert is_primary_sharpness({"metric": "adaptive_worst_case", "rho": 0.5, "p": 2}, 0.5)
    assert not is_primary_sharpness({"metric": "adaptive_worst_case", "rho": 0.1, "p": 2}, 0.5)
    assert not is_primary_sharpness({"metric": "average_case", "rho": 0.5}, 0.5)
    assert is_primary_sharpness({"metric": "pac_bayes_magnitude"}, None)
