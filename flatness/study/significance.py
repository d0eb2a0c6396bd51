"""The statistics of a comparison: mean ± std over seeds, Welch's t-test, paired tests, Holm's adjustment.

Each method is set against the baseline by the difference of means, Welch's t-test and the direction
of the difference; the p-values are Holm-adjusted within three families of tests (``HOLM_FAMILIES``).

The methods of a study share their seeds (the same initial weights and data order), so each method is
also compared *paired*, seed by seed (``paired``): the mean of the per-seed differences with a 95 %
percentile bootstrap interval, the paired t-test (``scipy.stats.ttest_rel``), the Wilcoxon signed-rank
test (``scipy.stats.wilcoxon``, zeros dropped) and the count of seeds in which the method is
flatter/better; their p-values are Holm-adjusted within the families of ``PAIRED_FAMILIES``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from flatness.generalization.correlation import holm
from flatness.study.quantities import Quantity

HOLM_FAMILIES = (
    "Holm's step-down adjustment (p_holm), per compared method, within three families: the flatness "
    "measures (the question 'is it flatter?'); test accuracy alone (the one pre-specified endpoint of "
    "'does it generalise better?', so its adjusted p equals the raw one); every other row (descriptive)"
)


PAIRED_FAMILIES = (
    "Holm's step-down adjustment of the paired p-values (p_t_holm, p_wilcoxon_holm), per compared method, "
    "within four families: the primary flatness measures (declared before the data; the verdict), the "
    "exploratory flatness measures, test accuracy alone, every other row (descriptive)"
)
BOOTSTRAP_RESAMPLES = 10000
BOOTSTRAP_SEED = 0  # the interval is reproducible: the same resamples for every row and run
CONFIDENCE = 0.95


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    """(mean, sample std with ddof=1 or None when n < 2, n)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if arr.size == 0:
        return None, None, 0
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None), int(arr.size)


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Welch's t-test of mean(b) vs mean(a): {t, p, note}; p is None when it is undefined."""
    a = [v for v in a if v is not None and math.isfinite(v)]
    b = [v for v in b if v is not None and math.isfinite(v)]
    if len(a) < 2 or len(b) < 2:
        return {"t": None, "p": None, "note": "needs ≥ 2 seeds per method"}
    from scipy import stats  # noqa: PLC0415 - SciPy is heavy; importing flatness needs no SciPy

    scale = max(1.0, float(np.max(np.abs(a + b))))
    if np.ptp(a) <= 1e-12 * scale and np.ptp(b) <= 1e-12 * scale:  # equal up to rounding
        return {"t": None, "p": None, "note": "zero variance in both groups"}

    with warnings.catch_warnings():  # nearly equal values: scipy warns, the p-value is still reported
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(b, a, equal_var=False)
    t, p = float(res.statistic), float(res.pvalue)
    return {"t": t if math.isfinite(t) else None, "p": p if math.isfinite(p) else None, "note": ""}


def direction(quantity: Quantity, diff: float | None) -> str | None:
    """How a method differs from the baseline on one row, in words.

    Args:
        quantity: the row (which way is better; whether it is a flatness measure).
        diff: the method's mean minus the baseline's.

    Returns:
        ``"flatter"``/``"sharper"`` for a flatness measure, ``"better"``/``"worse"`` otherwise, None
        when there is no difference (or no value).
    """
    if diff is None or diff == 0:
        return None
    if quantity.better == "lower":
        if quantity.flatness:
            return "flatter" if diff < 0 else "sharper"
        return "better" if diff < 0 else "worse"
    return "better" if diff > 0 else "worse"


def versus_baseline(quantity: Quantity, base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """One method against the baseline on one row: difference of means, Welch's test, direction.

    Args:
        quantity: the row.
        base: the baseline's cell of the row (``mean``, ``values``).
        other: the method's cell.

    Returns:
        ``{"diff", "t", "p", "note", "direction"}`` (``p_holm`` is added later, by ``add_holm``).
    """
    diff = other["mean"] - base["mean"] if base["mean"] is not None and other["mean"] is not None else None
    test = welch(base["values"], other["values"])
    return {"diff": diff, **test, "direction": direction(quantity, diff)}


def holm_family(row: dict[str, Any]) -> str:
    """Which family of tests a comparison row belongs to (``HOLM_FAMILIES``)."""
    if row["flatness"]:
        return "flatness"
    return "generalisation" if row["key"] == "test_acc" else "descriptive"


def add_holm(rows: list[dict[str, Any]], others: Sequence[str]) -> None:
    """Each method's Holm-adjusted p-values as ``p_holm``, adjusted within each row's family.

    Args:
        rows: the comparison rows, changed in place.
        others: the methods compared with the baseline.

    Returns:
        None.
    """
    for family in ("flatness", "generalisation", "descriptive"):
        members = [row for row in rows if holm_family(row) == family]
        for m in others:
            for row, adjusted in zip(members, holm([row["versus"][m]["p"] for row in members])):
                row["versus"][m]["p_holm"] = adjusted


def _constant(values: np.ndarray) -> bool:
    """Whether every value is the same up to rounding (no spread for a t statistic)."""
    scale = max(1.0, float(np.max(np.abs(values)))) if values.size else 1.0
    return values.size == 0 or float(np.ptp(values)) <= 1e-12 * scale


def bootstrap_interval(
    differences: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float | None, float | None]:
    """The 95 % percentile bootstrap interval of the mean of ``differences``.

    Resamples the n differences with replacement ``resamples`` times (numpy's default_rng(seed),
    indices drawn as one ``(resamples, n)`` array) and takes the 2.5th and 97.5th percentiles of the
    resampled means (numpy's linear interpolation).

    Args:
        differences: the per-seed differences.
        resamples: how many bootstrap samples.
        seed: the generator's seed.

    Returns:
        ``(low, high)``; ``(None, None)`` with fewer than 2 differences.
    """
    d = np.asarray(differences, float)
    if d.size < 2:
        return None, None
    index = np.random.default_rng(seed).integers(0, d.size, size=(resamples, d.size))
    means = d[index].mean(axis=1)
    tail = 100.0 * (1.0 - CONFIDENCE) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def paired_t(differences: Sequence[float]) -> dict[str, Any]:
    """The paired t-test of the mean difference against 0 (two-sided): ``{t, p, note}``.

    Args:
        differences: the per-seed differences (method minus baseline).

    Returns:
        ``t`` and ``p`` from ``scipy.stats.ttest_rel``; both None, with the reason in ``note``, for fewer
        than 2 seeds or differences that do not vary (the t statistic needs a spread; the Wilcoxon test
        still answers then).
    """
    d = np.asarray(differences, float)
    if d.size < 2:
        return {"t": None, "p": None, "note": "needs ≥ 2 paired seeds"}
    if _constant(d):
        return {"t": None, "p": None, "note": "the differences do not vary"}
    from scipy import stats  # noqa: PLC0415 - SciPy is heavy; importing flatness needs no SciPy

    res = stats.ttest_rel(d, np.zeros_like(d))
    t, p = float(res.statistic), float(res.pvalue)
    return {"t": t if math.isfinite(t) else None, "p": p if math.isfinite(p) else None, "note": ""}


def wilcoxon(differences: Sequence[float]) -> dict[str, Any]:
    """The Wilcoxon signed-rank test of the differences against 0 (two-sided): ``{w, p, note}``.

    Zero differences are dropped (``zero_method="wilcox"``); scipy's ``method="auto"`` gives the exact
    distribution for up to 50 non-zero differences without ties, else the normal approximation.

    Args:
        differences: the per-seed differences.

    Returns:
        The statistic and p-value; None with the reason when no difference is non-zero.
    """
    d = np.asarray(differences, float)
    if not np.any(d != 0):
        return {"w": None, "p": None, "note": "every difference is zero" if d.size else "no paired seeds"}
    from scipy import stats  # noqa: PLC0415 - SciPy is heavy; importing flatness needs no SciPy

    res = stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided", method="auto")
    w, p = float(res.statistic), float(res.pvalue)
    return {"w": w, "p": p if math.isfinite(p) else None, "note": ""}


def paired(quantity: Quantity, base: dict[Any, float], other: dict[Any, float]) -> dict[str, Any]:
    """One method against the baseline on one row, seed by seed.

    Args:
        quantity: the row (which way is better).
        base: the baseline's value per seed.
        other: the method's value per seed.

    Returns:
        ``{"seeds", "n", "diff", "ci_low", "ci_high", "t", "p_t", "p_wilcoxon", "wins", "losses", "ties",
        "note"}``: ``diff`` is the mean of (method − baseline) over the seeds both have; ``wins`` counts
        the seeds in which the method is flatter/better, ``losses`` worse, ``ties`` equal.
    """
    seeds = sorted(set(base) & set(other), key=lambda s: (str(type(s)), s))
    d = np.asarray([other[s] - base[s] for s in seeds], float)
    low, high = bootstrap_interval(d)
    t, w = paired_t(d), wilcoxon(d)
    better = d < 0 if quantity.better == "lower" else d > 0
    return {
        "seeds": list(seeds),
        "n": int(d.size),
        "diff": float(d.mean()) if d.size else None,
        "ci_low": low,
        "ci_high": high,
        "t": t["t"],
        "p_t": t["p"],
        "p_wilcoxon": w["p"],
        "wins": int(np.sum(better)),
        "losses": int(np.sum((d != 0) & ~better)),
        "ties": int(np.sum(d == 0)),
        "note": "; ".join(n for n in (t["note"], w["note"]) if n),
    }


def paired_family(row: dict[str, Any]) -> str:
    """Which family of paired tests a comparison row belongs to (``PAIRED_FAMILIES``)."""
    if row["flatness"]:
        return "primary" if row.get("primary") else "exploratory"
    return holm_family(row)


def add_paired_holm(rows: list[dict[str, Any]], others: Sequence[str]) -> None:
    """Each method's Holm-adjusted paired p-values (``p_t_holm``, ``p_wilcoxon_holm``), per family.

    Args:
        rows: the comparison rows with ``versus[m]["paired"]`` filled, changed in place.
        others: the methods compared with the baseline.

    Returns:
        None.
    """
    for family in ("primary", "exploratory", "generalisation", "descriptive"):
        members = [row for row in rows if paired_family(row) == family and row["versus"]]
        for m in others:
            tests = [row["versus"][m]["paired"] for row in members]
            for key in ("p_t", "p_wilcoxon"):
                for test, adjusted in zip(tests, holm([t[key] for t in tests])):
                    test[key + "_holm"] = adjusted
