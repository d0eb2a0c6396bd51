"""Paired statistics of flatness.study.significance against independent computations and scipy.

Hand-made differences: the paired t-test by its formula, the exact Wilcoxon p by enumerating every sign
assignment, ties and zeros through scipy, a zero-variance difference, and the bootstrap interval by an
independent loop.
"""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from flatness.study.quantities import Quantity
from flatness.study.significance import bootstrap_interval, paired, paired_t, wilcoxon

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
