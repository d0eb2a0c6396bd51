"""Orthogonalised random directions (landscape/directions.py) against a hand Gram–Schmidt: the second
direction loses its component along the first and keeps its filter-normalised length."""

import math

import pytest
import torch
import torch.nn as nn

from flatness.landscape.directions import orthogonalize, random_directions


def flat(d):
    return torch.cat([t.double().reshape(-1) for t in d.values()])


def test_second_direction_is_gram_schmidt_of_the_plain_one_rescaled_to_its_filter_normalised_length():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x, y = random_directions(model, 2, seed=5)
    x_o, y_o = random_directions(model, 2, seed=5, orthogonal=True)
    assert all(torch.equal(x[k], x_o[k]) for k in x)  # the first is untouched
    vx, vy = flat(x), flat(y)
    # filter normalisation: each weight row has its weights' norm; biases are zeroed
    weights = [p.detach().double() for p in model.parameters() if p.dim() > 1]
    length = math.sqrt(sum(float((w**2).sum()) for w in weights))
    assert float(vy.norm()) == pytest.approx(length, rel=1e-6)
    residual = vy - (vy @ vx) / (vx @ vx) * vx
    expected = residual * (vy.norm() / residual.norm())
    assert float(vy @ vx) != pytest.approx(0.0, abs=1e-3)  # there was something to remove
    assert torch.allclose(flat(y_o), expected, rtol=1e-5, atol=1e-6)
    assert float(flat(y_o).norm()) == pytest.approx(length, rel=1e-6)  # the filter-normalised scale is kept
    assert float(flat(y_o) @ vx) == pytest.approx(0.0, abs=1e-5)


def test_orthogonalize_without_keeping_the_norm_and_against_a_zero_direction():
    y = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([1.0])}
    x = {"a": torch.tensor([1.0, 0.0])}
    out = orthogonalize(y, x, keep_norm=False)
    assert torch.equal(out["a"], torch.tensor([0.0, 4.0])) and torch.equal(out["b"], torch.tensor([1.0]))
    kept = orthogonalize(y, x)
    scale = math.sqrt(26.0) / math.sqrt(17.0)  # ‖y‖ / ‖y − proj‖
    assert torch.allclose(kept["a"], torch.tensor([0.0, 4.0 * scale])) and kept["b"].item() == pytest.approx(scale)
    zero = orthogonalize(y, {"a": torch.zeros(2)})
    assert torch.equal(zero["a"], y["a"]) and zero["a"] is not y["a"]
