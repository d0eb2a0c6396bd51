"""``flatness.landscape.weights``: a model moved to θ + a·d1 + b·d2 in place, and BatchNorm recalibration."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.landscape.weights import WeightSetter, batchnorm_layers, kept_batchnorm_state, recalibrate_bn


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 2))


def _directions(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    names = [n for n, _ in model.named_parameters()]
    d1 = {n: torch.randn(p.shape, generator=g) for n, p in model.named_parameters()}
    d1["1.running_mean"] = torch.randn(4, generator=g)  # a direction may move BN buffers too
    d2 = {n: torch.randn(model.state_dict()[n].shape, generator=g) for n in names[:2]}  # only the first layer
    return d1, d2


def test_a_point_is_theta_plus_a_d1_plus_b_d2():
    model = _model()
    theta = {k: v.detach().clone() for k, v in model.state_dict().items()}
    d1, d2 = _directions(model)
    setter = WeightSetter(model, [d1, d2])
    for a, b in [(0.5, -1.25), (-2.0, 0.0), (0.0, 3.0), (1e-3, 7.5)]:
        setter.set([a, b])
        state = model.state_dict()
        for name, base in theta.items():
            # the ground truth in float64, term by term
            expected = base.double()
            if name in d1:
                expected = expected + a * d1[name].double()
            if name in d2:
                expected = expected + b * d2[name].double()
            if base.is_floating_point():
                torch.testing.assert_close(state[name].double(), expected, rtol=0, atol=1e-6)
            else:
                assert torch.equal(state[name], base)  # num_batches_tracked is never moved
        assert not torch.equal(state["0.weight"], theta["0.weight"]) or (a, b) == (0.0, 0.0)
    setter.restore()
    for name, base in theta.items():
        assert torch.equal(model.state_dict()[name], base)  # the centre bit for bit


def test_the_points_do_not_drift_with_the_order_of_visits():
    model = _model()
    d1, d2 = _directions(model)
    setter = WeightSetter(model, [d1, d2])
    setter.set([0.3, -0.7])
    first = {k: v.clone() for k, v in model.state_dict().items()}
    for a, b in [(5.0, 5.0), (-1.0, 2.0), (0.3, -0.7)]:
        setter.set([a, b])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in first.items())


def test_an_interpolation_hits_both_end_points_exactly():
    model_a, model_b = _model(0), _model(1)
    start = {k: v.clone() for k, v in model_a.state_dict().items()}
    end = {n: p.detach().clone() for n, p in model_b.named_parameters()}
    direction = {n: end[n] - start[n] for n in end}
    setter = WeightSetter(model_a, [direction], end=end)
    setter.set([1.0])
    assert all(torch.equal(model_a.state_dict()[n], end[n]) for n in end)
    setter.set([0.25])
    for n in end:
        torch.testing.assert_close(model_a.state_dict()[n], start[n] + 0.25 * (end[n] - start[n]), rtol=0, atol=1e-6)
    setter.set([0.0])
    assert all(torch.equal(model_a.state_dict()[n], start[n]) for n in end)
    with pytest.raises(ValueError, match="exactly one direction"):
        WeightSetter(model_a, [direction, direction], end=end)


@pytest.mark.parametrize(
    ("direction", "says"),
    [
        ({"9.weight": torch.zeros(1)}, "the direction has '9.weight', which the model does not"),
        ({"0.weight": torch.zeros(3, 4)}, "the direction's '0.weight' has shape (3, 4), the model's (4, 3)"),
        ({"1.num_batches_tracked": torch.zeros(())}, "moves '1.num_batches_tracked', which is not a floating-point"),
    ],
)
def test_a_direction_that_does_not_fit_is_refused(direction, says):
    with pytest.raises(FlatnessError) as err:
        WeightSetter(_model(), [direction])
    assert says in str(err.value)


def _batches(seed=2, n=3, size=8):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, generator=g), torch.zeros(size, dtype=torch.long)) for _ in range(n)]


def test_recalibration_is_the_average_of_the_batch_statistics():
    model = _model()
    model.train()
    model[3].eval()  # a module the user put in eval mode stays there
    bn = model[1]
    bn.momentum = 0.3
    batches = _batches()
    # ground truth by hand: BN's input on each batch, its mean and unbiased variance, averaged over batches
    with torch.no_grad():
        pre = [model[0](x) for x, _ in batches]
    mean = torch.stack([h.mean(0) for h in pre]).mean(0)
    var = torch.stack([h.var(0, unbiased=True) for h in pre]).mean(0)
    recalibrate_bn(model, batches)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-5, atol=1e-6)
    assert int(bn.num_batches_tracked) == len(batches)
    assert bn.momentum == 0.3
    assert [m.training for m in model] == [True, True, True, False, True]
    with torch.no_grad():  # everything else untouched
        assert torch.equal(model[0].weight, _model()[0].weight)


def test_recalibration_runs_dropout_in_eval_mode():
    model = _model()
    model.train()
    model.insert(1, nn.Dropout(0.9))  # between the Linear and the BN: in train mode it would change the statistics
    batches = _batches()
    with torch.no_grad():
        pre = [model[0](x) for x, _ in batches]
    recalibrate_bn(model, batches)
    torch.testing.assert_close(
        model[2].running_mean, torch.stack([h.mean(0) for h in pre]).mean(0), rtol=1e-5, atol=1e-6
    )
    assert model[1].training  # and back in train mode afterwards


def test_kept_state_restores_the_buffers_and_a_model_without_bn_is_left_alone():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with kept_batchnorm_state(model):
        recalibrate_bn(model, _batches())
        assert not torch.equal(model[1].running_mean, before["1.running_mean"])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    plain = nn.Sequential(nn.Linear(3, 2))
    assert batchnorm_layers(plain) == [] and batchnorm_layers(model) == [model[1]]
    recalibrate_bn(plain, _batches())  # nothing to do, nothing raised
