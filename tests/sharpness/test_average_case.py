"""flatness.sharpness.average_case: ½ρ² tr(A) on a quadratic, within the standard error it reports, which is
itself checked against the closed form."""

import math

import numpy as np
import pytest
from quadratic_toys import Params, dummy_data, quadratic_loss, random_sym

import flatness.sharpness as S


def test_average_case_is_half_rho2_trace():
    A = random_sym([4.0, 2.0, 1.0, 0.5, 0.25], seed=4)
    model = Params(np.zeros(5))
    rho = 0.2
    r = S.average_case_sharpness(S.LossOracle(model, dummy_data(), quadratic_loss(A)), rho, draws=400, seed=3)
    exact = 0.5 * rho**2 * np.trace(A)
    # the standard error is right: var(0.5 ρ² zᵀAz) = 0.5 ρ⁴ tr(A²)
    expected_se = math.sqrt(0.5 * rho**4 * np.trace(A @ A) / 400)
    assert r.stderr == pytest.approx(expected_se, rel=0.25)
    assert abs(r.value - exact) < 4 * r.stderr
    assert r.draws == 400 and r.loss_evals == 401
