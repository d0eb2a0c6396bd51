"""Scale invariance of every measure (the flag table checked on a rescaled ReLU net) and the primary rule."""

import copy

import pytest
import torch

from flatness.sharpness.measure import SharpnessSettings
from flatness.study.probe import ProbeSettings, measure
from flatness.study.quantities import (
    BASE_QUANTITIES,
    INVARIANT_METRICS,
    is_primary_sharpness,
    primary_radii,
    probe_values,
    sharpness_key,
    training_radius,
)


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
