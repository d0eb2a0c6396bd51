"""The numbers ``flatness correlate`` prints (generalization/correlation.py) against hand-resampled references
and hand-worked tables: the τ interval and its multiplicity-adjusted form, the Ψ interval, the edge cases
(missing and non-finite values, one cell per group, constant measures, the 10-resample floor); τ-b against
its pair-by-pair definition with ties, Ψ and Holm's adjustment worked by hand, the bootstrap against scipy's
τ on each replayed resample."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from flatness.generalization.correlation import (
    axis_groups,
    bootstrap_psi,
    bootstrap_tau,
    correlate_table,
    granulated_psi,
    holm,
    kendall_tau,
    varied_axes,
)

# ten cells, distinct values, a measure that follows the target loosely (τ about 0.5), asymmetric spread
X = [0.3, 1.9, 0.7, 2.8, 1.1, 3.5, 0.2, 2.2, 4.1, 1.5]
Y = [1.0, 2.5, 3.0, 2.0, 0.5, 4.5, 1.5, 5.0, 3.5, 0.8]


def percentiles(values, confidence):
    tail = 100 * (1 - confidence) / 2
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def tau_reference(x, y, draws, seed, confidence):
    """The τ interval by hand: cells drawn with replacement by numpy's generator, scipy's τ-b of each draw."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x), np.asarray(y)
    taus = []
    for _ in range(draws):
        pick = rng.integers(0, len(x), len(x))
        tau = stats.kendalltau(x[pick], y[pick]).statistic
        if math.isfinite(tau):
            taus.append(tau)
    return percentiles(taus, confidence)


def psi_reference(group_taus, draws, seed, confidence=0.95):
    """The Ψ interval by hand: each axis's group τ values drawn with replacement, mean of the axis means."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        means = [np.mean([taus[i] for i in rng.integers(0, len(taus), len(taus))]) for taus in group_taus]
        values.append(np.mean(means))
    return percentiles(values, confidence)


def two_axis_cells():
    """a (3 values) x b (2 values) x seeds 0, 1 with a measure whose within-group τ differ from group to group."""
    cells = []
    noise = iter([0.0, 2.5, -1.0, 0.7, 1.8, -2.2, 0.4, -0.3, 2.9, -1.6, 1.1, 0.2])
    for a, b, seed in itertools.product((1, 2, 3), ("x", "y"), (0, 1)):
        gap = a + 0.5 * (b == "y") + 0.1 * seed
        cells.append({"a": a, "b": b, "seed": seed, "gap": gap, "m": gap + next(noise)})
    return cells


def test_tau_interval_is_the_hand_resampled_percentile_interval_for_a_fixed_seed():
    for seed in (0, 7):
        ci, wide = bootstrap_tau(X, Y, draws=300, seed=seed, confidences=(0.95, 0.99))
        assert ci == pytest.approx(tau_reference(X, Y, 300, seed, 0.95))
        assert wide == pytest.approx(tau_reference(X, Y, 300, seed, 0.99))
    ci0 = bootstrap_tau(X, Y, draws=300, seed=0)[0]
    assert ci0 != bootstrap_tau(X, Y, draws=300, seed=7)[0]  # the seed is used
    tau, _ = kendall_tau(X, Y)
    assert ci0[0] < tau < ci0[1]  # it contains the estimate
    assert ci0[1] - ci0[0] > 0.3  # ten cells: a wide interval, not a degenerate one


def test_tau_interval_needs_ten_defined_resamples():
    assert bootstrap_tau(X, Y, draws=10)[0] == pytest.approx(tau_reference(X, Y, 10, 0, 0.95))
    assert bootstrap_tau(X, Y, draws=9) == [None]


def test_kendall_tau_is_undefined_for_one_cell_a_constant_target_or_a_nan():
    assert kendall_tau([1.0], [2.0]) == (None, None)
    assert kendall_tau([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]) == (None, None)
    assert kendall_tau([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == (pytest.approx(1 / 3), pytest.approx(1.0))
    assert kendall_tau([1.0, float("nan"), 3.0], [1.0, 3.0, 2.0]) == (None, None)
    assert kendall_tau([1.0, 3.0, 2.0], [1.0, float("nan"), 2.0]) == (None, None)


def test_holm_caps_every_adjusted_p_at_one():
    assert holm([0.6, 0.8, 0.9]) == [1.0, 1.0, 1.0]
    assert holm([0.2, 0.45]) == [pytest.approx(0.4), pytest.approx(0.45)]


def test_psi_interval_resamples_each_axis_groups_with_replacement():
    cells = two_axis_cells()
    a_groups = axis_groups(cells, ["a", "b"], "a", "m", "gap")
    b_groups = axis_groups(cells, ["a", "b"], "b", "m", "gap")
    assert a_groups.axis == "a" and len(a_groups.taus) == 4  # b x seed groups
    assert len(b_groups.taus) == 6 and len(set(b_groups.taus)) == 2  # a x seed groups, τ = ±1
    for seed in (0, 3):
        ci = bootstrap_psi(cells, ["a", "b"], "m", "gap", draws=400, seed=seed)
        assert ci == pytest.approx(psi_reference([a_groups.taus, b_groups.taus], 400, seed))
    psi, _ = granulated_psi(cells, ["a", "b"], "m", "gap")
    assert ci[0] < psi < ci[1]
    assert ci[1] - ci[0] > 0.2  # drawn without replacement, every draw would give Ψ itself


def test_psi_and_its_interval_are_none_without_any_usable_group():
    cells = [{"a": a, "seed": 0, "gap": float(a), "m": 1.0} for a in (1, 2, 3)]  # a constant measure
    assert granulated_psi(cells, ["a"], "m", "gap") == (None, {"a": None})
    assert bootstrap_psi(cells, ["a"], "m", "gap") is None


def test_a_group_with_one_cell_is_skipped_and_the_next_groups_still_count():
    # seed 0 has one cell (a group with a single value of a), seeds 1 and 2 have three
    cells = [{"a": 1, "seed": 0, "gap": 1.0, "m": 5.0}]
    cells += [{"a": a, "seed": s, "gap": float(a), "m": float(a * s)} for s in (1, 2) for a in (1, 2, 3)]
    groups = axis_groups(cells, ["a"], "a", "m", "gap")
    assert groups.taus == [pytest.approx(1.0), pytest.approx(1.0)]


def test_varied_axes_keeps_the_candidates_with_two_values_and_never_the_seed():
    cells = [{"a": 1, "b": "x", "c": 0.1, "seed": 0}, {"a": 2, "b": "x", "c": 0.2, "seed": 1}]
    assert varied_axes(cells, ["seed", "a", "b", "c"]) == ["a", "c"]


def correlate_cells():
    cells = []
    for i, (x, y) in enumerate(zip(X, Y)):
        cells.append(
            {"a": i % 5, "seed": i // 5, "gap": y, "m": x, "neg": -x + 0.3 * y, "sq": x * x, "flat": 1.0, "gone": None}
        )
    cells[3]["neg"] = float("nan")  # a non-finite value leaves that cell out of that measure only
    cells[4]["m"] = None
    cells.append({"a": 9, "seed": 2, "gap": float("inf"), "m": 9.0, "neg": 9.0, "flat": 1.0})  # no target
    return cells


def test_correlate_table_intervals_and_their_multiplicity_adjustment_against_hand_references():
    cells = correlate_cells()
    measures = ["m", "neg", "sq", "flat", "gone"]
    rows = {r["measure"]: r for r in correlate_table(cells, ["a"], measures, "gap", 300, 5)}
    tested = 3  # "flat" (constant) and "gone" (missing) have no p-value: they are not in the family
    level = 1 - 0.05 / tested
    for name in ("m", "neg", "sq"):
        pairs = [(c[name], c["gap"]) for c in cells[:10] if c[name] is not None and math.isfinite(c[name])]
        xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
        row = rows[name]
        assert row["n"] == 9 + (name == "sq")
        tau, p = stats.kendalltau(xs, ys)
        assert (row["kendall_tau"], row["p_value"]) == (pytest.approx(tau), pytest.approx(p))
        assert row["tau_ci"] == pytest.approx(tau_reference(xs, ys, 300, 5, 0.95))
        assert row["tau_ci_adjusted"] == pytest.approx(tau_reference(xs, ys, 300, 5, level))
        low, high = row["tau_ci"]
        assert row["tau_ci_adjusted"][0] < low < tau < high < row["tau_ci_adjusted"][1]  # wider, both ends
    family = ("m", "neg", "sq")
    assert [rows[m]["p_holm"] for m in family] == pytest.approx(holm([rows[m]["p_value"] for m in family]))
    for name in ("flat", "gone"):
        assert rows[name]["kendall_tau"] is None and rows[name]["tau_ci"] is None
        assert rows[name]["tau_ci_adjusted"] is None and rows[name]["psi_ci"] is None and rows[name]["p_holm"] is None
    assert rows["gone"]["n"] == 0 and rows["flat"]["n"] == 10


def test_correlate_table_psi_interval_is_bootstrap_psi_of_that_measure_and_target():
    cells = two_axis_cells()
    for c in cells:
        c["other"] = -c["m"] + 0.1 * c["seed"]
    rows = {r["measure"]: r for r in correlate_table(cells, ["a", "b"], ["m", "other"], "gap", 300, 4)}
    for name in ("m", "other"):
        groups = [axis_groups(cells, ["a", "b"], axis, name, "gap").taus for axis in ("a", "b")]
        assert rows[name]["psi_ci"] == pytest.approx(psi_reference(groups, 300, 4))
        assert rows[name]["psi_ci"][0] <= rows[name]["psi"] <= rows[name]["psi_ci"][1]
    assert rows["m"]["psi_ci"] != rows["other"]["psi_ci"]


def test_one_tested_measure_has_the_unadjusted_interval():
    cells = correlate_cells()
    (row,) = correlate_table(cells, ["a"], ["m"], "gap", 300, 5)
    assert row["tau_ci_adjusted"] == pytest.approx(row["tau_ci"])
    assert row["p_holm"] == pytest.approx(row["p_value"])


def tau_b_loop(x, y):
    """τ-b by its definition, pair by pair (independent of scipy)."""
    concordant = discordant = tied_x = tied_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tied_x += 1
        elif dy == 0:
            tied_y += 1
        elif dx == dy:
            concordant += 1
        else:
            discordant += 1
    untied = concordant + discordant
    return (concordant - discordant) / math.sqrt((untied + tied_x) * (untied + tied_y))


def grid_cells(target_fn, seeds=(0, 1)):
    """Cells over axes a (3 values) x b (2 values) x seeds, with the target from ``target_fn(a, b, seed)``."""
    cells = []
    for a, b, seed in itertools.product((1, 2, 3), ("x", "y"), seeds):
        cells.append({"cell": f"a{a}-b{b}-s{seed}", "a": a, "b": b, "seed": seed, "gap": target_fn(a, b, seed)})
    return cells


def test_kendall_tau_matches_definition_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, 30).astype(float)
    y = x + rng.integers(0, 3, 30)
    tau, p = kendall_tau(x.tolist(), y.tolist())
    assert tau == pytest.approx(tau_b_loop(x, y), abs=1e-12)
    assert p == pytest.approx(stats.kendalltau(x, y).pvalue)
    assert kendall_tau([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == (None, None)  # a constant measure: undefined


def test_measure_equal_to_target_gives_one_and_its_negative_minus_one():
    cells = grid_cells(lambda a, b, s: 3 * a + (b == "y") + 0.1 * s)
    for c in cells:
        c["same"], c["negative"] = c["gap"], -c["gap"]
    rows = {r["measure"]: r for r in correlate_table(cells, ["a", "b"], ["same", "negative"], "gap", draws=200)}
    assert rows["same"]["kendall_tau"] == pytest.approx(1.0)
    assert rows["same"]["psi"] == pytest.approx(1.0)
    assert rows["same"]["psi_by_axis"] == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}
    assert rows["same"]["tau_ci"] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert rows["negative"]["kendall_tau"] == pytest.approx(-1.0)
    assert rows["negative"]["psi"] == pytest.approx(-1.0)


def test_axis_whose_cells_tie_is_skipped():
    # the target ignores b, so within every group that varies only b the target ties: no τ there
    cells = grid_cells(lambda a, b, s: float(a) + 0.01 * s)
    for c in cells:
        c["m"] = c["gap"] + (0.5 if c["b"] == "y" else 0.0)
    psi, by_axis = granulated_psi(cells, ["a", "b"], "m", "gap")
    assert by_axis["b"] is None
    assert by_axis["a"] == pytest.approx(1.0)
    assert psi == pytest.approx(1.0)  # the mean over the one usable axis only


def test_psi_by_hand_on_a_two_axis_table():
    # (a, b): target, measure. Axis a, b=1: pairs (1,2) C, (1,3) C, (2,3) D -> 1/3; b=2: all D -> -1;
    # mean -1/3. Axis b: every a-group has one concordant pair -> 1. Psi = (-1/3 + 1) / 2 = 1/3.
    table = {(1, 1): (1, 1), (2, 1): (2, 3), (3, 1): (3, 2), (1, 2): (4, 6), (2, 2): (5, 5), (3, 2): (6, 4)}
    cells = [{"a": a, "b": b, "seed": 0, "gap": t, "m": m} for (a, b), (t, m) in table.items()]
    psi, by_axis = granulated_psi(cells, ["a", "b"], "m", "gap")
    assert by_axis["a"] == pytest.approx(-1 / 3)
    assert by_axis["b"] == pytest.approx(1.0)
    assert psi == pytest.approx(1 / 3)


def test_seed_groups_are_kept_apart():
    # within one seed the measure orders the cells along a perfectly; across seeds it would not
    cells = grid_cells(lambda a, b, s: a + 10 * s, seeds=(0, 1))
    for c in cells:
        c["m"] = c["a"] - 10 * c["seed"]
    psi, by_axis = granulated_psi(cells, ["a", "b"], "m", "gap")
    assert by_axis["a"] == pytest.approx(1.0)
    assert kendall_tau([c["m"] for c in cells], [c["gap"] for c in cells])[0] < 0


def test_holm_against_a_hand_worked_example():
    # sorted: 0.005*4 = 0.02; 0.01*3 = 0.03; 0.03*2 = 0.06; 0.04*1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, None, 0.9]) == [pytest.approx(1.0), None, pytest.approx(1.0)]
    assert holm([]) == []


def test_bootstrap_tau_equals_scipy_on_each_resample():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 5, 12).astype(float)
    y = x + rng.normal(0, 2, 12)
    # the bootstrap replays these picks; its interval must equal the percentiles of scipy's τ on them
    from flatness.generalization import correlation as corr

    picks = np.random.default_rng(3).integers(0, 12, (40, 12))
    taus = [stats.kendalltau(x[p], y[p]).statistic for p in picks]
    lo, hi = np.percentile(taus, [2.5, 97.5])

    class Fixed:  # a generator that replays the picks above
        def __init__(self):
            self.rows = iter(picks)

        def integers(self, *args):
            return next(self.rows)

    real = corr.np.random.default_rng
    corr.np.random.default_rng = lambda seed: Fixed()
    try:
        (ci,) = bootstrap_tau(x, y, draws=40)
    finally:
        corr.np.random.default_rng = real
    assert ci == [pytest.approx(lo), pytest.approx(hi)]
