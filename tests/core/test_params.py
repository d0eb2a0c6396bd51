"""flatness.core.params: the flat parameter vector, checked entry by entry on a net whose values are known.

The vector order is ``named_parameters`` order over trainable parameters only, ``select_params`` globs,
the norms and distance against hand sums in float64, and the refusals; the round trip and ``perturbed``
on a convnet, restored bitwise.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from quadratic_toys import Params
from tiny_mlp import tiny_mlp, tiny_xy

import flatness
from flatness.core.errors import FlatnessError
from flatness.core.params import (
    distance,
    flatten,
    get_flat_params,
    named_trainable,
    num_params,
    perturbed,
    segments,
    select_params,
    set_flat_params_,
    unflatten,
    weight_norm,
)
from flatness.models.registry import build_model


def _net():
    """Linear(2, 3) -> Linear(3, 1) with every entry set to its position 1..13; the first bias frozen."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    with torch.no_grad():
        for p, start in zip(net.parameters(), (1, 7, 10, 13)):
            p.copy_(torch.arange(start, start + p.numel(), dtype=torch.float32).view_as(p))
    net[0].bias.requires_grad_(False)  # 7, 8, 9: not a trainable parameter, not in the vector
    return net


def test_the_vector_is_the_trainable_parameters_in_named_parameters_order():
    net = _net()
    assert [n for n, _ in named_trainable(net)] == ["0.weight", "2.weight", "2.bias"]
    assert get_flat_params(net).tolist() == [1, 2, 3, 4, 5, 6, 10, 11, 12, 13]
    assert num_params(net) == 10
    assert [n for n, _ in named_trainable(net, ["2.bias", "0.weight"])] == ["0.weight", "2.bias"]
    with pytest.raises(KeyError, match="no trainable parameter named '0.bias'"):
        named_trainable(net, ["0.bias"])


def test_segments_flatten_and_unflatten_agree_and_unflatten_gives_views():
    like = [torch.zeros(2, 3), torch.zeros(0), torch.zeros(4)]
    assert segments(like) == [slice(0, 6), slice(6, 6), slice(6, 10)]
    vector = torch.arange(10.0)
    parts = unflatten(vector, like)
    assert [p.shape for p in parts] == [(2, 3), (0,), (4,)] and parts[2].tolist() == [6, 7, 8, 9]
    assert torch.equal(flatten(parts), vector)
    parts[0][1, 2] = -1.0  # a view: writes reach the vector
    assert vector[5] == -1.0
    with pytest.raises(ValueError, match="vector has 9 entries, parameters have 10"):
        unflatten(torch.zeros(9), like)


def test_set_and_perturb_write_the_entries_in_vector_order_and_restore_exactly():
    net = _net()
    theta = get_flat_params(net)
    set_flat_params_(net, torch.arange(10, dtype=torch.float64))  # converted to the parameters' dtype
    assert net[2].bias.item() == 9.0 and net[0].weight[1, 0].item() == 2.0 and net[0].weight.dtype == torch.float32
    assert net[0].bias.tolist() == [7, 8, 9]  # frozen: untouched
    set_flat_params_(net, theta)
    delta = torch.full((10,), 0.1)
    with perturbed(net, delta):
        assert torch.equal(get_flat_params(net), theta + delta)
    assert torch.equal(get_flat_params(net), theta)
    with pytest.raises(RuntimeError), perturbed(net, delta):
        raise RuntimeError("a failure inside")
    assert torch.equal(get_flat_params(net), theta)  # restored on the way out of an exception too


def test_norm_and_distance_are_float64_sums_over_trainable_parameters():
    net, other = _net(), _net()
    assert weight_norm(net) == math.sqrt(sum(v * v for v in [1, 2, 3, 4, 5, 6, 10, 11, 12, 13]))
    with torch.no_grad():
        other[2].bias.add_(3.0)
        other[0].weight[0, 0] -= 4.0
        other[0].bias.add_(100.0)  # frozen: not part of the distance
    assert distance(net, other) == 5.0
    assert distance(net, net) == 0.0
    with pytest.raises(FlatnessError, match="different parameters; is it the same architecture"):
        distance(net, nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1)))


def test_select_params_globs_in_vector_order_and_names_real_ones_on_a_typo():
    net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 3), nn.Linear(3, 1))
    assert select_params(net, "2.*, 0.weight") == ["0.weight", "2.weight", "2.bias"]
    assert select_params(net, ["*.bias"]) == ["0.bias", "1.bias", "2.bias"]
    with pytest.raises(
        FlatnessError,
        match=r"--params 'layer4.\*' matches no trainable parameter \(names look like: "
        r"0.weight, 0.bias, 1.weight, 1.bias, \.\.\.\)",
    ):
        select_params(net, "0.*, layer4.*")
    with pytest.raises(FlatnessError, match="--params needs at least one parameter name or pattern"):
        select_params(net, " , ")


def test_flat_vector_round_trip_and_perturbation_restores_bitwise():
    model = build_model("convnet", 1, 8, 10)
    theta = get_flat_params(model)
    assert theta.numel() == sum(p.numel() for _, p in named_trainable(model))
    delta = torch.randn_like(theta)
    with perturbed(model, delta):
        assert torch.allclose(get_flat_params(model), theta + delta)
    assert torch.equal(get_flat_params(model), theta)
    set_flat_params_(model, theta * 2)
    assert torch.equal(get_flat_params(model), theta * 2)
    parts = unflatten(theta, [p for _, p in named_trainable(model)])
    assert [p.shape for p in parts] == [p.shape for _, p in named_trainable(model)]


def test_weight_norm_and_distance_from_init():
    a, b = Params(np.array([3.0, 0.0]), np.array([[4.0]])), Params(np.array([0.0, 0.0]), np.array([[1.0]]))
    from flatness.core.params import distance, weight_norm

    assert weight_norm(a) == pytest.approx(5.0)
    assert distance(a, b) == pytest.approx(math.sqrt(9 + 9))
    with pytest.raises(FlatnessError):
        distance(a, Params(np.zeros(3)))


def test_params_takes_globs_and_a_string_is_one_pattern():
    model, (x, y) = tiny_mlp(), tiny_xy()
    assert flatness.HessianOperator(model, (x, y), params="2.*").names == ["2.weight", "2.bias"]
    assert flatness.HessianOperator(model, (x, y), params=["0.weight", "2.bias"]).names == ["0.weight", "2.bias"]
    with pytest.raises(FlatnessError, match="matches no trainable parameter"):
        flatness.HessianOperator(model, (x, y), params="layer4.*")
