"""Sharpness metrics (flatness.sharpness): closed forms, Dinh rescaling, PAC-Bayes bisection, real data."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.optimize import brentq
from scipy.stats import norm

import flatness.sharpness as S
from flatness.core.errors import FlatnessError
from flatness.core.params import flatten
from flatness.data.probe_data import ProbeData, load_probe_data
from flatness.formats.checkpoint import load_checkpoint
from flatness.sharpness.oracle import draw_seed, standard_normal

# --------------------------------------------------------------------------- quadratic toys


class Params(nn.Module):
    """Only parameters; its output is the flat parameter vector, so loss_fn(outputs, _) is a closed form."""

    def __init__(self, *values):
        super().__init__()
        self.ts = nn.ParameterList([nn.Parameter(torch.as_tensor(v, dtype=torch.float64).clone()) for v in values])

    def forward(self, x):
        return flatten(list(self.parameters()))


def dummy_data():
    # two batches of unequal size: the n_b / n weights must still sum the batch losses to the quadratic
    return ProbeData.from_tensors(torch.zeros(5, 1), torch.zeros(5, dtype=torch.long), 3)


def quadratic_loss(A):
    A = torch.as_tensor(A, dtype=torch.float64)

    def loss_fn(theta, targets):
        return 0.5 * theta @ A @ theta

    return loss_fn


def random_sym(eigs, seed):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    return q @ np.diag(eigs) @ q.T


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


# --------------------------------------------------------------------------- Dinh rescaling


@pytest.fixture(scope="module")
def small_digits():
    return load_probe_data("digits", "train", 200, 100)


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


# --------------------------------------------------------------------------- PAC-Bayes bisection


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


# --------------------------------------------------------------------------- monotone in the radius, validation


def test_worst_case_grows_with_radius(digits_checkpoint, small_digits):
    model, _ = load_checkpoint(digits_checkpoint)
    oracle, ascent = S.LossOracle(model, small_digits), S.AscentSettings(steps=5)
    values = [S.worst_case_sharpness(oracle, rho, ball="tensor", ascent=ascent).value for rho in (0.01, 0.05, 0.2)]
    assert 0 < values[0] < values[1] < values[2]
    adaptive = [S.worst_case_sharpness(oracle, rho, adaptive=True, ascent=ascent).value for rho in (0.05, 0.2)]
    assert 0 < adaptive[0] < adaptive[1]


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


def test_default_rhos_include_the_digits_amp_epsilon():
    from flatness.training.config import TrainConfig

    config = TrainConfig()
    assert config.epsilon in S.DEFAULTS["rhos"] and S.DEFAULTS["ball"] == config.ball


def test_oracle_is_the_exact_full_data_mean(digits_checkpoint):
    from flatness.core.evaluation import evaluate

    model, _ = load_checkpoint(digits_checkpoint)
    data = load_probe_data("digits", "train", 150, 64)  # batches of 64, 64, 22: weights n_b / n matter
    oracle = S.LossOracle(model.eval(), data)
    loss, acc = evaluate(model, data)
    assert oracle.loss() == pytest.approx(loss, rel=1e-6)
    assert oracle.error() == pytest.approx(1 - acc, abs=1e-12)
    value, grad = oracle.loss_and_grad()
    # reference, independent of the batch weighting: all 150 examples as one batch
    params = [p for p in model.parameters() if p.requires_grad]
    x_all = torch.cat([x for x, _ in data])
    y_all = torch.cat([y for _, y in data])
    whole = torch.nn.functional.cross_entropy(model(x_all), y_all)
    ref_loss, ref_grad = float(whole), torch.autograd.grad(whole, params)
    assert value == pytest.approx(ref_loss, rel=1e-6)
    ref = flatten(ref_grad)
    # float32 sums in another order: equal to rounding, measured relative to the gradient's size
    assert torch.allclose(grad, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    assert oracle.counts() == (1, 1, 1)


def test_weight_norm_and_distance_from_init():
    a, b = Params(np.array([3.0, 0.0]), np.array([[4.0]])), Params(np.array([0.0, 0.0]), np.array([[1.0]]))
    from flatness.core.params import distance, weight_norm

    assert weight_norm(a) == pytest.approx(5.0)
    assert distance(a, b) == pytest.approx(math.sqrt(9 + 9))
    with pytest.raises(FlatnessError):
        distance(a, Params(np.zeros(3)))


# --------------------------------------------------------------------------- the real checkpoint, all metrics


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


# --------------------------------------------------------------------------- the probe CLI


def _has_probe_cli():
    import importlib.util

    return importlib.util.find_spec("flatness.cli.probe") is not None


@pytest.mark.skipif(not _has_probe_cli(), reason="flatness probe command not there yet")
def test_probe_cli_writes_sharpness(cli, digits_checkpoint, tmp_path):
    out = tmp_path / "probe.json"
    result = cli(
        [
            "probe",
            digits_checkpoint,
            "--sharpness",
            "all",
            "--samples",
            200,
            "--top-k",
            1,
            "--draws",
            4,
            "--ascent-steps",
            3,
            "--rho",
            "0.05,0.1",
            "--epsilon",
            "1e-3",
            "--quiet",
            "--out",
            out,
        ]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["sharpness"]
    assert [r["metric"] for r in rows] == ["keskar"] + [m for m in S.RHO_METRICS for _ in (0.05, 0.1)] + [
        "pac_bayes",
        "pac_bayes_magnitude",
    ]
    for r in rows:
        assert math.isfinite(r["value"])
        if r["metric"] in S.RHO_METRICS:
            assert r["rho"] in (0.05, 0.1)
    assert {r["draws"] for r in rows if "average_case" in r["metric"]} == {4}
    assert {r["iterations"] for r in rows if "worst_case" in r["metric"]} == {3}
    assert all(r["ball"] == "tensor" for r in rows if "worst_case" in r["metric"])
    assert "sharpness worst_case @ 0.1" in result.output


@pytest.mark.skipif(not _has_probe_cli(), reason="flatness probe command not there yet")
@pytest.mark.parametrize(
    "args, match",
    [
        (["--sharpness", "all", "--rho", "0"], "rho"),
        (["--sharpness", "all", "--rho", "-0.1"], "rho"),
        (["--sharpness", "keskar", "--epsilon", "0"], "epsilon"),
        (["--sharpness", "flatest"], "unknown sharpness metric"),
        (["--sharpness", "worst_case", "--ascent-steps", "0"], "ascent steps"),
        (["--sharpness", "average_case", "--draws", "0"], "draws"),
    ],
)
def test_probe_cli_rejects_bad_sharpness_options(cli, digits_checkpoint, tmp_path, args, match):
    out = tmp_path / "bad.json"
    result = cli(["probe", digits_checkpoint, "--samples", 50, "--top-k", 0, "--quiet", "--out", out] + args)
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and match in lines[0], result.output
    assert not out.exists()


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
