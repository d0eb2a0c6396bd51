"""flatness.sharpness.keskar: the box maximum on a separable quadratic (convex and concave coordinates) against
its closed form."""

import numpy as np
import pytest
import torch
from quadratic_toys import Params, dummy_data

import flatness.sharpness as S


def test_keskar_on_separable_quadratic_matches_closed_form():
    theta = np.array([1.0, -2.0, 0.5, 3.0, -0.2, 0.0])
    a = np.array([2.0, 1.0, 4.0, -1.0, -3.0, 0.5])  # convex and concave coordinates
    m = np.array([0.9, -2.5, 2.0, 3.05, -0.9, 0.3])  # minima / maxima of each coordinate
    eps = 0.1
    bound = eps * (np.abs(theta) + 1)

    def loss_fn(t, targets):
        d = t - torch.as_tensor(m)
        return 0.5 * (torch.as_tensor(a) * d * d).sum()

    best_y = np.empty_like(theta)
    for i in range(len(theta)):
        if a[i] > 0:  # convex: the endpoint farther from m
            best_y[i] = bound[i] if theta[i] >= m[i] else -bound[i]
        else:  # concave: m clipped into the box
            best_y[i] = np.clip(m[i] - theta[i], -bound[i], bound[i])

    def f(y):
        return 0.5 * np.sum(a * (theta + y - m) ** 2)

    base = f(np.zeros_like(theta))
    exact = 100 * (f(best_y) - base) / (1 + base)
    model = Params(theta)
    oracle = S.LossOracle(model, dummy_data(), loss_fn)
    r = S.keskar_sharpness(oracle, eps, iterations=50)
    assert r.value == pytest.approx(exact, rel=1e-6)
    assert r.solver == "L-BFGS-B" and r.iterations >= 1 and r.base_loss == pytest.approx(base)
    # the box really binds: a bigger box gives a bigger value
    assert S.keskar_sharpness(oracle, 2 * eps, iterations=50).value > exact
