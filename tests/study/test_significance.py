"""The statistics a comparison prints (study/significance.py) against hand values and independent
formulas: mean ± std with missing values, Welch's t from its definition, zero variance in one group only,
the direction words, and Holm's families with the generalisation-gap rows present. The paired statistics:
the paired t by its formula, the exact Wilcoxon p by enumerating every sign assignment, ties and zeros
through scipy, a zero-variance difference, and the bootstrap interval by an independent loop."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from flatness.generalization.correlation import holm
from flatness.study.quantities import Quantity
from flatness.study.significance import (
    add_holm,
    bootstrap_interval,
    direction,
    holm_family,
    mean_std,
    paired,
    paired_t,
    versus_baseline,
    welch,
    wilcoxon,
)


def welch_by_hand(a, b):
    """Welch's t of mean(b) − mean(a), its Welch–Satterthwaite degrees of freedom and the two-sided p."""
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(b) - np.mean(a)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t, 2 * stats.t.sf(abs(t), df)


def test_mean_std_leaves_out_missing_and_non_finite_values():
    mean, std, n = mean_std([2.0, None, 4.0, float("nan"), 9.0, float("inf")])
    assert (mean, std, n) == (pytest.approx(5.0), pytest.approx(math.sqrt(13.0)), 3)  # ddof=1: (9+1+16)/2
    assert mean_std([3.5]) == (3.5, None, 1)
    assert mean_std([1.0, 4.0]) == (2.5, pytest.approx(math.sqrt(4.5)), 2)  # two values have a std
    assert mean_std([None, float("-inf")]) == (None, None, 0)


def test_welch_t_and_p_equal_the_textbook_formula_on_unequal_variances_and_sizes():
    a, b = [1.0, 2.0, 3.0], [4.0, 6.0, 8.0, 13.0]
    t, p = welch_by_hand(a, b)
    out = welch(a, b)
    assert (out["t"], out["p"], out["note"]) == (pytest.approx(t), pytest.approx(p), "")
    assert out["t"] > 0  # b's mean is the larger: the sign says mean(b) − mean(a)
    assert welch(b, a)["t"] == pytest.approx(-t)


def test_welch_with_zero_variance_in_one_group_only_is_a_test_and_in_both_is_none():
    a, b = [5.0, 5.0, 5.0], [5.5, 6.5, 7.0]  # a is constant, b is not: Welch's test is defined
    t, p = welch_by_hand(a, b)
    out = welch(a, b)
    assert (out["t"], out["p"]) == (pytest.approx(t), pytest.approx(p))
    assert welch(b, a)["p"] == pytest.approx(p)
    both = welch([5.0, 5.0, 5.0], [7.0, 7.0])
    assert both == {"t": None, "p": None, "note": "zero variance in both groups"}
    # equal up to rounding counts as constant, relative to the values' size
    assert welch([1e6, 1e6 + 1e-7, 1e6], [2e6, 2e6, 2e6 - 1e-7])["note"] == "zero variance in both groups"
    assert welch([1.0, 1.0 + 1e-9], [2.0, 2.0])["p"] is not None


def test_welch_needs_two_finite_values_per_group():
    for a, b in (([1.0, None, float("nan")], [1.0, 2.0, 3.0]), ([1.0, 2.0], [3.0, float("inf")])):
        assert welch(a, b) == {"t": None, "p": None, "note": "needs ≥ 2 seeds per method"}
    t, p = welch_by_hand([1.0, 2.0], [3.0, 5.0])
    assert welch([1.0, None, 2.0], [3.0, float("nan"), 5.0])["p"] == pytest.approx(p)


LAMBDA = Quantity("lambda_1", "λmax", "", "", "lower", True)
LOSS = Quantity("probe_loss", "train loss (probe)", "nats", "", "lower")
ACC = Quantity("test_acc", "test accuracy", "%", "", "higher")


@pytest.mark.parametrize(
    "quantity, diff, word",
    [
        (LAMBDA, -0.5, "flatter"),
        (LAMBDA, 0.5, "sharper"),
        (LOSS, -0.5, "better"),
        (LOSS, 0.5, "worse"),
        (ACC, 0.5, "better"),
        (ACC, -0.5, "worse"),
        (ACC, 0.0, None),
        (LAMBDA, None, None),
    ],
)
def test_direction_words_follow_which_way_is_better(quantity, diff, word):
    assert direction(quantity, diff) == word


def test_versus_baseline_is_the_methods_mean_minus_the_baselines_with_welch_of_their_values():
    base = {"mean": 2.0, "values": [1.0, 2.0, 3.0]}
    other = {"mean": 7.0, "values": [4.0, 6.0, 11.0]}
    out = versus_baseline(LAMBDA, base, other)
    t, p = welch_by_hand(base["values"], other["values"])
    assert out == {
        "diff": pytest.approx(5.0),
        "t": pytest.approx(t),
        "p": pytest.approx(p),
        "note": "",
        "direction": "sharper",
    }
    assert versus_baseline(LAMBDA, {"mean": None, "values": []}, other)["diff"] is None
    assert versus_baseline(LAMBDA, base, {"mean": None, "values": []})["direction"] is None


def family_rows():
    """Rows as compare builds them, with hand-set raw p-values for two compared methods (amp, sam)."""
    raw = {  # key: (flatness, p of amp, p of sam)
        "test_acc": (False, 0.03, 0.2),
        "train_acc": (False, 0.01, 0.5),
        "probe_acc": (False, None, 0.04),
        "gap_acc": (False, 0.04, 0.01),
        "gap_loss": (False, 0.03, 0.3),
        "lambda_1": (True, 0.02, 0.6),
        "trace": (True, 0.5, 0.001),
    }
    return [{"key": k, "flatness": f, "versus": {"amp": {"p": pa}, "sam": {"p": ps}}} for k, (f, pa, ps) in raw.items()]


def test_holm_families_with_the_gap_rows_present():
    rows = family_rows()
    by = {r["key"]: r for r in rows}
    assert [holm_family(by[k]) for k in by] == ["generalisation"] + ["descriptive"] * 4 + ["flatness"] * 2
    add_holm(rows, ["amp", "sam"])
    adjusted = {m: {k: by[k]["versus"][m]["p_holm"] for k in by} for m in ("amp", "sam")}
    # amp. test accuracy alone: unadjusted. Descriptive (p present: train 0.01, gap_acc 0.04, gap_loss 0.03):
    # 3 x 0.01 = 0.03; 2 x 0.03 = 0.06; 1 x 0.04 -> running max 0.06. Flatness: 2 x 0.02 = 0.04; 0.5.
    assert adjusted["amp"] == {
        "test_acc": pytest.approx(0.03),
        "train_acc": pytest.approx(0.03),
        "probe_acc": None,
        "gap_acc": pytest.approx(0.06),
        "gap_loss": pytest.approx(0.06),
        "lambda_1": pytest.approx(0.04),
        "trace": pytest.approx(0.5),
    }
    # sam: descriptive 0.5, 0.04, 0.01, 0.3 -> 4 x 0.01 = 0.04; 3 x 0.04 = 0.12; 2 x 0.3 = 0.6; 1 x 0.5 -> 0.6
    assert adjusted["sam"] == {
        "test_acc": pytest.approx(0.2),
        "train_acc": pytest.approx(0.6),
        "probe_acc": pytest.approx(0.12),
        "gap_acc": pytest.approx(0.04),
        "gap_loss": pytest.approx(0.6),
        "lambda_1": pytest.approx(0.6),
        "trace": pytest.approx(0.002),
    }
    assert adjusted["sam"]["gap_acc"] == pytest.approx(holm([0.5, 0.04, 0.01, 0.3])[2])


def test_welch_constant_means_spread_at_most_1e_12_of_the_values_size():
    # exactly at the threshold (1e-12 x max(1, |values|)) counts as constant, on either side
    assert welch([0.0, 1e-12], [0.0, 0.0])["note"] == "zero variance in both groups"
    assert welch([0.0, 0.0], [0.0, 1e-12])["note"] == "zero variance in both groups"
    # just above it, with values below 1 in size, it is a test (the scale is never below 1)
    assert welch([1.0, 1.0 + 1.5e-12], [1.0, 1.0])["note"] == ""
    assert welch([2.0, 2.0], [1.0, 1.0 + 1e-9])["p"] == pytest.approx(welch_by_hand([2.0, 2.0], [1.0, 1.0 + 1e-9])[1])


def test_welch_never_reports_a_non_finite_statistic():
    # the mean of these overflows: there is no t, rather than a NaN presented as one
    assert welch([1.7e308, 1.79e308], [1.0, 2.0]) == {"t": None, "p": None, "note": ""}


LOWER = Quantity("lambda_1", "λmax", "", "", "lower", True)


HIGHER = Quantity("test_acc", "test accuracy", "%", "", "higher")


def exact_wilcoxon_p(d):
    """Two-sided exact p of the signed-rank statistic by enumerating all 2^n sign patterns (no ties)."""
    d = np.asarray([x for x in d if x != 0], float)
    ranks = stats.rankdata(np.abs(d))
    observed = min(ranks[d > 0].sum(), ranks[d < 0].sum())
    count = 0
    total = 0
    for signs in itertools.product((0, 1), repeat=d.size):
        plus = sum(r for r, s in zip(ranks, signs) if s)
        minus = ranks.sum() - plus
        count += min(plus, minus) <= observed + 1e-12
        total += 1
    return count / total


def test_paired_t_is_the_formula_and_scipy():
    d = [0.3, -0.1, 0.5, 0.2, 0.4, 0.1, 0.6, -0.2]
    n = len(d)
    mean, sd = np.mean(d), np.std(d, ddof=1)
    t = mean / (sd / math.sqrt(n))
    p = 2 * stats.t.sf(abs(t), n - 1)
    got = paired_t(d)
    assert got["t"] == pytest.approx(t, rel=1e-12) and got["p"] == pytest.approx(p, rel=1e-10)
    base = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    ref = stats.ttest_rel(base + np.array(d), base)
    assert got["p"] == pytest.approx(float(ref.pvalue), rel=1e-9)


def test_wilcoxon_exact_without_ties_matches_enumeration():
    d = [0.3, -0.1, 0.5, 0.25, 0.4, 0.15, 0.6, -0.2]
    got = wilcoxon(d)
    assert got["p"] == pytest.approx(exact_wilcoxon_p(d), rel=1e-12)
    # every seed the same way: the smallest two-sided p, 2 / 2^n
    assert wilcoxon([0.1 * (i + 1) for i in range(8)])["p"] == pytest.approx(2 / 2**8)


def test_wilcoxon_with_ties_and_zeros_matches_scipy_and_drops_zeros():
    d = [0.2, 0.2, -0.1, 0.0, 0.3, 0.3, 0.3, -0.2]
    ref = stats.wilcoxon(d, zero_method="wilcox", method="auto")
    assert wilcoxon(d)["p"] == pytest.approx(float(ref.pvalue), rel=1e-12)
    # zeros dropped: the same as the test on the non-zero differences alone
    assert wilcoxon(d)["p"] == pytest.approx(float(stats.wilcoxon([x for x in d if x]).pvalue), rel=1e-12)
    nothing = wilcoxon([0.0, 0.0, 0.0])
    assert nothing["p"] is None and "zero" in nothing["note"]


def test_zero_variance_difference_has_no_t_but_a_rank_test_and_a_point_interval():
    d = [0.25] * 8  # the method is higher by exactly 0.25 in every seed
    t = paired_t(d)
    assert t["t"] is None and t["p"] is None and "vary" in t["note"]
    assert wilcoxon(d)["p"] == pytest.approx(2 / 2**8)
    assert bootstrap_interval(d) == (pytest.approx(0.25), pytest.approx(0.25))
    result = paired(LOWER, {s: 1.0 for s in range(8)}, {s: 1.25 for s in range(8)})
    assert result["diff"] == pytest.approx(0.25) and result["wins"] == 0 and result["losses"] == 8
    assert result["p_t"] is None and result["p_wilcoxon"] == pytest.approx(2 / 2**8)


def test_bootstrap_interval_is_the_percentiles_of_resampled_means():
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.4])
    rng = np.random.default_rng(0)
    index = rng.integers(0, d.size, size=(10000, d.size))
    means = [float(np.mean([d[i] for i in row])) for row in index[:10000]]
    low, high = np.percentile(means, [2.5, 97.5])
    got = bootstrap_interval(d)
    assert got[0] == pytest.approx(low, abs=1e-12) and got[1] == pytest.approx(high, abs=1e-12)
    assert got[0] < d.mean() < got[1]
    assert bootstrap_interval([0.4]) == (None, None)


def test_paired_pairs_by_seed_and_counts_wins_ties_and_direction():
    base = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 7: 9.0}
    other = {0: 0.5, 1: 2.5, 2: 3.0, 3: 3.0, 5: 0.0}  # seeds 5 and 7 have no partner: left out
    r = paired(LOWER, base, other)
    assert r["seeds"] == [0, 1, 2, 3] and r["n"] == 4
    assert r["diff"] == pytest.approx(np.mean([-0.5, 0.5, 0.0, -1.0]))
    assert (r["wins"], r["losses"], r["ties"]) == (2, 1, 1)  # lower is flatter
    acc = paired(HIGHER, base, other)
    assert (acc["wins"], acc["losses"], acc["ties"]) == (1, 2, 1)  # higher is better
    ref = stats.ttest_rel([other[s] for s in r["seeds"]], [base[s] for s in r["seeds"]])
    assert r["p_t"] == pytest.approx(float(ref.pvalue), rel=1e-9)
