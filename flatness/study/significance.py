"""The statistics of a comparison: mean ± std over seeds, Welch's t-test, Holm's adjustment.

Each method is set against the baseline by the difference of means, Welch's t-test and the direction
of the difference; the p-values are Holm-adjusted within three families of tests (``HOLM_FAMILIES``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from flatness.study.quantities import Quantity

HOLM_FAMILIES = (
    "Holm's step-down adjustment (p_holm), per compared method, within three families: the flatness "
    "measures (the question 'is it flatter?'); test accuracy alone (the one pre-specified endpoint of "
    "'does it generalise better?', so its adjusted p equals the raw one); every other row (descriptive)"
)


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
    from scipy import stats

    scale = max(1.0, float(np.max(np.abs(a + b))))
    if np.ptp(a) <= 1e-12 * scale and np.ptp(b) <= 1e-12 * scale:  # equal up to rounding
        return {"t": None, "p": None, "note": "zero variance in both groups"}
    import warnings

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
    from flatness.generalization.correlation import holm

    for family in ("flatness", "generalisation", "descriptive"):
        members = [row for row in rows if holm_family(row) == family]
        for m in others:
            for row, adjusted in zip(members, holm([row["versus"][m]["p"] for row in members])):
                row["versus"][m]["p_holm"] = adjusted
