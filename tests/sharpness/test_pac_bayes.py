"""flatness.sharpness.pac_bayes: the bisection's σ against closed forms (a linear classifier, plain and
magnitude-aware; an error quadratic in σ), reported as the midpoint of the final bracket."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from quadratic_toys import Params, dummy_data
from scipy.optimize import brentq
from scipy.stats import norm
from tiny_mlp import tiny_mlp, tiny_xy

import flatness
import flatness.sharpness as S
from flatness.data.probe_data import ProbeData
from flatness.sharpness import LossOracle, measure_with_oracle
from flatness.sharpness.oracle import draw_seed, standard_normal


class TwoClassLinear(nn.Module):
    """logits = [-z, z] with z = x·w: class 1 is right iff x·w > 0."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float32).clone())

    def forward(self, x):
        z = x @ self.w
        return torch.stack([-z, z], dim=1)


def test_pac_bayes_bisection_recovers_closed_form_sigma():
    # x_i = e_i, y_i = 1, so θ+u misclassifies example i iff w_i + u_i < 0, independently over i:
    # E err(σ) = mean_i Φ(-w_i / s_i(σ)) with s_i = σ (plain) or sqrt(σ² w_i² + 1e-6) (magnitude-aware).
    n = 1000
    w = np.linspace(0.5, 2.0, n)
    data = ProbeData.from_tensors(torch.eye(n), torch.ones(n, dtype=torch.long), 250)
    model = TwoClassLinear(w)
    plain_exact = brentq(lambda s: norm.cdf(-w / s).mean() - 0.1, 1e-3, 100)
    mag_exact = brentq(lambda s: norm.cdf(-w / np.sqrt(s * s * w * w + 1e-6)).mean() - 0.1, 1e-3, 100)
    assert mag_exact == pytest.approx(1 / norm.ppf(0.9), rel=1e-3)
    before = model.w.detach().clone()
    oracle = S.LossOracle(model, data)
    r = S.pac_bayes_flatness(oracle, draws=16, seed=0)
    assert r.base_error == 0.0 and r.converged
    assert r.sigma == pytest.approx(plain_exact, rel=0.05)
    assert r.flatness == pytest.approx(1 / r.sigma**2) and r.value == r.flatness
    m = S.pac_bayes_flatness(oracle, draws=16, magnitude=True, seed=0)
    assert m.sigma == pytest.approx(mag_exact, rel=0.05)
    assert torch.equal(model.w.detach(), before)
    # deterministic under the seed
    assert S.pac_bayes_flatness(S.LossOracle(model, data), draws=16, seed=0).sigma == r.sigma


def test_pac_bayes_reports_the_midpoint_that_meets_the_target():
    """θ = 0 and err(θ+u) = mean(u²) (the Params model outputs its weights): with the draws z_k fixed,
    the mean error is σ²·c, c = mean_k mean(z_k²) ≈ 1, so σ* = sqrt(0.1 / c) in closed form. The
    reported σ* must be the midpoint of the final bracket, strictly inside it (not one of its ends),
    and meet the target within the bisection tolerance."""
    d, draws, tol = 100_000, 8, 1e-3
    model = Params(np.zeros(d))

    def error_fn(outputs, targets):
        return (outputs.double() ** 2).mean()

    oracle = S.LossOracle(model, dummy_data(), error_fn=error_fn)
    r = S.pac_bayes_flatness(oracle, draws=draws, bisection=S.BisectionSettings(tolerance=tol, max_steps=60), seed=0)
    lo, hi, sigma = r.sigma_low, r.sigma_high, r.sigma
    assert r.converged and r.base_error == 0.0
    assert lo < sigma < hi and sigma == pytest.approx(0.5 * (lo + hi), rel=1e-12)
    assert hi - lo <= tol * hi
    # c from the same draws at σ = 1 (the error is exactly quadratic in σ), and c ≈ 1 by the law of
    # large numbers (8·10⁵ squared normals: 5 standard deviations is 0.8%)
    c = np.mean([oracle.error(standard_normal(oracle, draw_seed(0, k))) for k in range(draws)])
    assert c == pytest.approx(1.0, abs=5 * math.sqrt(2 / (draws * d)))
    exact = math.sqrt(0.1 / c)
    assert lo <= exact <= hi
    assert abs(sigma - exact) <= 0.5 * tol * hi
    assert r.flatness == pytest.approx(1 / sigma**2)


def test_no_accuracy_and_a_loss_based_pac_bayes_on_a_regression_loss():
    """Was: PAC-Bayes 5.6e-13 from an argmax "error" of 1.0 on a one-output regression model."""
    model, (x, _) = tiny_mlp(out=1), tiny_xy()
    y = torch.randn(12)
    assert flatness.evaluate(model, (x, y), "mse")[1] is None
    assert flatness.evaluate(model, (x, y.unsqueeze(1)), F.mse_loss)[1] is None
    (record,) = flatness.measure_sharpness(model, (x, y.unsqueeze(1)), "pac_bayes", loss_fn=nn.MSELoss())
    base = flatness.evaluate(model, (x, y), "mse")[0]
    assert record.criterion == "loss" and record.base_error == pytest.approx(base, rel=1e-6)
    assert record.value is not None and record.value < 1e6
    # classification keeps the error, and a user's error_fn is taken as given
    (cls,) = flatness.measure_sharpness(tiny_mlp(), tiny_xy(), "pac_bayes")
    assert cls.criterion == "error"
    oracle = LossOracle(model, (x, y), "mse", error_fn=lambda o, t: (o[:, 0] - t).abs().mean())
    (own,) = measure_with_oracle(oracle, flatness.SharpnessSettings(metrics="pac_bayes"))
    assert own.criterion == "error"
    # accuracy needs at least two classes: a one-output model on integer labels has none
    assert flatness.evaluate(model, (x, torch.zeros(12, dtype=torch.long)), lambda o, t: o.mean())[1] is None
