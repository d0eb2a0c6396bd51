"""flatness.sharpness.worst_case: the ascent against closed forms on quadratics (global, per-tensor and L∞
balls), growing with the radius on a real checkpoint, and adaptive sharpness (worst and average case) unchanged
by Dinh et al.'s rescaling of a ReLU MLP where the plain measures change."""

import numpy as np
import pytest
import torch
import torch.nn as nn
from quadratic_toys import Params, dummy_data, quadratic_loss, random_sym

import flatness.sharpness as S
from flatness.formats.checkpoint import load_checkpoint


def test_worst_case_global_ball_is_half_rho2_lambda_max():
    A = random_sym([5.0, 2.5, 1.0, 0.5, -1.0, -3.0], seed=1)
    model = Params(np.zeros(6))
    for rho in (0.1, 1.0):
        for init in ("gradient", "random"):  # zero gradient at θ=0: "gradient" falls back to random
            oracle = S.LossOracle(model, dummy_data(), quadratic_loss(A))
            ascent = S.AscentSettings(steps=60, init=init)
            r = S.worst_case_sharpness(oracle, rho, ball="global", p=2, ascent=ascent)
            assert r.value == pytest.approx(0.5 * rho**2 * 5.0, rel=1e-4)
            assert r.delta_norm == pytest.approx(rho, rel=1e-9)
            assert r.gradient_evals >= 60 and r.solver


def test_worst_case_tensor_ball_is_sum_of_block_maxima():
    A1 = random_sym([3.0, 1.0, -2.0], seed=2)
    A2 = random_sym([0.7, 0.2, 0.1, -0.5], seed=3)
    A = np.zeros((7, 7))
    A[:3, :3], A[3:, 3:] = A1, A2
    model = Params(np.zeros(3), np.zeros((2, 2)))
    rho = 0.5
    oracle, ascent = S.LossOracle(model, dummy_data(), quadratic_loss(A)), S.AscentSettings(steps=60)
    tensor = S.worst_case_sharpness(oracle, rho, ball="tensor", ascent=ascent)
    assert tensor.value == pytest.approx(0.5 * rho**2 * (3.0 + 0.7), rel=1e-4)
    glob = S.worst_case_sharpness(oracle, rho, ball="global", ascent=ascent)
    assert glob.value == pytest.approx(0.5 * rho**2 * 3.0, rel=1e-4)


def test_worst_case_linf_ball_on_diagonal_quadratic_is_the_corner():
    a = np.array([2.0, 1.0, 0.5, 0.1])
    model = Params(np.zeros(4))
    oracle = S.LossOracle(model, dummy_data(), quadratic_loss(np.diag(a)))
    r = S.worst_case_sharpness(oracle, 0.3, ball="global", p="inf", ascent=S.AscentSettings(steps=10))
    assert r.value == pytest.approx(0.5 * 0.3**2 * a.sum(), rel=1e-9)
    assert r.p == "inf"


def _rescaled_mlp(path, alpha):
    """Hidden unit j of the ReLU MLP scaled by alpha[j] on the way in and 1/alpha[j] on the way out."""
    model, _ = load_checkpoint(path)
    lin1, lin2 = model.net[1], model.net[3]
    assert isinstance(lin1, nn.Linear) and isinstance(model.net[2], nn.ReLU) and isinstance(lin2, nn.Linear)
    alpha = torch.as_tensor(alpha, dtype=torch.float32).expand(lin1.out_features)
    with torch.no_grad():
        lin1.weight.mul_(alpha[:, None])
        lin1.bias.mul_(alpha)
        lin2.weight.div_(alpha[None, :])
    return model.eval()


@pytest.mark.parametrize("alpha", ["layer", "unit"])
def test_dinh_rescaling_leaves_adaptive_metrics_unchanged(digits_mlp_checkpoint, small_digits, alpha):
    # "layer": one α for the whole layer (Dinh et al.); "unit": a different α per hidden unit
    alpha = 5.0 if alpha == "layer" else torch.linspace(0.2, 5.0, 16)
    a = _rescaled_mlp(digits_mlp_checkpoint, 1.0)
    b = _rescaled_mlp(digits_mlp_checkpoint, alpha)
    x = small_digits.batches[0][0]
    with torch.no_grad():  # the function really is unchanged
        assert torch.allclose(a(x), b(x), rtol=1e-4, atol=1e-5)
    oa, ob = S.LossOracle(a, small_digits), S.LossOracle(b, small_digits)
    for ball, p, init in (
        ("global", 2, "gradient"),
        ("global", 2, "random"),
        ("tensor", 2, "random"),
        ("global", "inf", "random"),
    ):
        rho = 0.5 if p == 2 else 0.05
        kw = dict(ball=ball, p=p, adaptive=True, ascent=S.AscentSettings(steps=6, init=init), seed=7)
        ra = S.worst_case_sharpness(oa, rho, **kw)
        rb = S.worst_case_sharpness(ob, rho, **kw)
        assert ra.value > 0
        assert rb.value == pytest.approx(ra.value, rel=1e-5), (ball, p, init)
        if init == "random":
            assert ra.best_step > 0  # the path matters, not only its start
    aa = S.average_case_sharpness(oa, 0.2, draws=8, adaptive=True, seed=7)
    ab = S.average_case_sharpness(ob, 0.2, draws=8, adaptive=True, seed=7)
    assert aa.value > 0 and ab.value == pytest.approx(aa.value, rel=1e-5)
    # the plain measures see the rescaling
    kw = dict(ball="global", ascent=S.AscentSettings(steps=6), seed=7)
    pa = S.worst_case_sharpness(oa, 0.5, **kw).value
    pb = S.worst_case_sharpness(ob, 0.5, **kw).value
    assert abs(pb - pa) > 0.05 * abs(pa)
    qa = S.average_case_sharpness(oa, 0.2, draws=8, seed=7).value
    qb = S.average_case_sharpness(ob, 0.2, draws=8, seed=7).value
    assert abs(qb - qa) > 0.05 * abs(qa)


def test_worst_case_grows_with_radius(digits_checkpoint, small_digits):
    model, _ = load_checkpoint(digits_checkpoint)
    oracle, ascent = S.LossOracle(model, small_digits), S.AscentSettings(steps=5)
    values = [S.worst_case_sharpness(oracle, rho, ball="tensor", ascent=ascent).value for rho in (0.01, 0.05, 0.2)]
    assert 0 < values[0] < values[1] < values[2]
    adaptive = [S.worst_case_sharpness(oracle, rho, adaptive=True, ascent=ascent).value for rho in (0.05, 0.2)]
    assert 0 < adaptive[0] < adaptive[1]
