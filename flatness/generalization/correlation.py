"""Rank correlation of measures with generalisation over a table of trained cells.

The statistics of Jiang et al. (ICLR 2020, "Fantastic Generalization Measures"):

* Kendall's τ-b of a measure with the target (the generalisation gap, or the test error) over all
  cells, computed by ``scipy.stats.kendalltau`` (τ-b: ties in either variable are accounted for);
  its two-sided p-value, and a percentile bootstrap 95 % interval (cells resampled with replacement);
* the granulated Ψ: for each axis (a varied hyperparameter; the seed is never an axis), the cells
  are grouped by their values on every other axis and on the seed; τ is taken within every group
  that holds at least two values of the axis, and averaged; Ψ is the mean of these per-axis means
  over the axes that have any such group. A group whose τ is undefined (the measure or the target
  constant in it) counts as no group. Its interval is a bootstrap over the groups of each axis;
* Holm's step-down adjustment of the p-values for the number of measures tested.

A cell table here is a list of dicts (one per cell) with the axes, ``seed``, the target and each
measure as keys; missing values are None and leave that cell out of that measure's statistics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_DRAWS = 1000
BOOTSTRAP_SEED = 0


def _finite(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """Kendall's τ-b and its two-sided p-value (``scipy.stats.kendalltau``).

    Args:
        x: one value per cell.
        y: the target, one value per cell.

    Returns:
        (τ, p); (None, None) when it is undefined (fewer than 2 cells, or x or y constant).
    """
    from scipy import stats  # noqa: PLC0415 - SciPy is heavy; importing flatness (holm) needs no SciPy

    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.kendalltau(x, y)
    tau, p = float(res.statistic), float(res.pvalue)
    return (tau if math.isfinite(tau) else None), (p if math.isfinite(p) else None)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family = the p-values given; None entries are not tested).

    Args:
        pvalues: raw p-values, None where there is none.

    Returns:
        The adjusted p-values in the same order: the i-th smallest of m becomes
        max over j <= i of min(1, (m - j + 1) p_(j)).
    """
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(present)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def _pairs(cells: Sequence[dict[str, Any]], measure: str, target: str) -> tuple[list[float], list[float], list[int]]:
    xs, ys, idx = [], [], []
    for i, cell in enumerate(cells):
        x, y = _finite(cell.get(measure)), _finite(cell.get(target))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
            idx.append(i)
    return xs, ys, idx


def _percentile_interval(values: Sequence[float], confidence: float) -> list[float] | None:
    arr = np.asarray([v for v in values if v is not None], float)
    if arr.size < 10:  # too few defined resamples for an interval to mean anything
        return None
    tail = 100 * (1 - confidence) / 2
    return [float(np.percentile(arr, tail)), float(np.percentile(arr, 100 - tail))]


def bootstrap_tau(
    x: Sequence[float],
    y: Sequence[float],
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = BOOTSTRAP_SEED,
    confidences: Sequence[float] = (CONFIDENCE,),
) -> list[list[float] | None]:
    """Percentile bootstrap intervals of τ-b: the cells resampled with replacement ``draws`` times.

    Args:
        x: the measure, one value per cell.
        y: the target, one value per cell.
        draws: bootstrap resamples.
        seed: the resampling generator's seed (intervals are reproducible).
        confidences: the interval levels wanted (e.g. 0.95, and a Bonferroni-level one).

    Returns:
        One [low, high] per level, None when fewer than 10 resamples had a defined τ.
    """
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x, float), np.asarray(y, float)
    # τ-b of a resample from the pairwise sign matrices: a pair drawn twice is tied in both variables,
    # exactly as scipy.stats.kendalltau counts it; one matrix gather per draw instead of a scipy call.
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    taus = []
    for _ in range(draws):
        pick = rng.integers(0, len(x), len(x))
        a, b = sx[np.ix_(pick, pick)], sy[np.ix_(pick, pick)]
        denominator = math.sqrt(float(np.abs(a).sum()) * float(np.abs(b).sum()))
        taus.append(float((a * b).sum()) / denominator if denominator > 0 else None)
    return [_percentile_interval(taus, c) for c in confidences]


@dataclass
class AxisGroups:
    """The τ of every usable group of one axis (None where τ was undefined)."""

    axis: str
    taus: list[float]

    @property
    def mean(self) -> float | None:
        """The mean τ over the groups (None without any)."""
        return float(np.mean(self.taus)) if self.taus else None


def axis_groups(
    cells: Sequence[dict[str, Any]], axes: Sequence[str], axis: str, measure: str, target: str
) -> AxisGroups:
    """τ within each group of cells that agree on every axis but ``axis`` and on the seed.

    Args:
        cells: the cell table.
        axes: every axis of the table.
        axis: the axis that varies inside a group.
        measure: the measure's key.
        target: the target's key.

    Returns:
        The groups' τ values; groups with fewer than two values of ``axis`` or an undefined τ are left out.
    """
    others = [a for a in axes if a != axis] + ["seed"]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for cell in cells:
        groups.setdefault(tuple(repr(cell.get(a)) for a in others), []).append(cell)
    taus = []
    for members in groups.values():
        xs, ys, idx = _pairs(members, measure, target)
        if len({repr(members[i].get(axis)) for i in idx}) < 2:
            continue
        tau, _ = kendall_tau(xs, ys)
        if tau is not None:
            taus.append(tau)
    return AxisGroups(axis, taus)


def granulated_psi(
    cells: Sequence[dict[str, Any]], axes: Sequence[str], measure: str, target: str
) -> tuple[float | None, dict[str, float | None]]:
    """Ψ of Jiang et al.: the mean over axes of the mean within-group τ.

    Args:
        cells: the cell table.
        axes: the varied hyperparameters (never the seed).
        measure: the measure's key.
        target: the target's key.

    Returns:
        (Ψ, {axis: mean τ or None when the axis had no usable group}); Ψ is None when no axis had one.
    """
    by_axis = {a: axis_groups(cells, axes, a, measure, target).mean for a in axes}
    used = [v for v in by_axis.values() if v is not None]
    return (float(np.mean(used)) if used else None), by_axis


def bootstrap_psi(
    cells: Sequence[dict[str, Any]],
    axes: Sequence[str],
    measure: str,
    target: str,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> list[float] | None:
    """Percentile bootstrap interval of Ψ: each axis's group τ values resampled with replacement.

    Args:
        cells: the cell table.
        axes: the varied hyperparameters.
        measure: the measure's key.
        target: the target's key.
        draws: bootstrap resamples.
        seed: the resampling generator's seed.
        confidence: the interval's level.

    Returns:
        [low, high], or None when no axis has a usable group.
    """
    groups = [g for g in (axis_groups(cells, axes, a, measure, target) for a in axes) if g.taus]
    if not groups:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        means = [float(np.mean(rng.choice(g.taus, len(g.taus)))) for g in groups]
        values.append(float(np.mean(means)))
    return _percentile_interval(values, confidence)


def varied_axes(cells: Sequence[dict[str, Any]], candidates: Sequence[str]) -> list[str]:
    """The candidate columns that take at least two values over the cells (the seed is never one)."""
    return [a for a in candidates if a != "seed" and len({repr(c.get(a)) for c in cells}) >= 2]


def correlate_table(
    cells: Sequence[dict[str, Any]],
    axes: Sequence[str],
    measures: Sequence[str],
    target: str,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = BOOTSTRAP_SEED,
) -> list[dict[str, Any]]:
    """Every statistic of every measure against ``target``.

    Args:
        cells: the cell table (finished cells only).
        axes: the varied hyperparameters.
        measures: the measure keys to rank.
        target: ``gap`` or ``test_error`` (any key of the cells).
        draws: bootstrap resamples for the intervals.
        seed: the bootstrap's seed.

    Returns:
        One dict per measure: ``measure``, ``n`` (cells with a value), ``kendall_tau``, ``p_value``,
        ``p_holm`` (Holm over the measures with a p-value), ``tau_ci`` (95 %), ``tau_ci_adjusted``
        (at 1 − 0.05/m, the Bonferroni level, m = the number of measures tested), ``psi``,
        ``psi_ci`` and ``psi_by_axis``.
    """
    rows = []
    for measure in measures:
        xs, ys, _ = _pairs(cells, measure, target)
        tau, p = kendall_tau(xs, ys)
        psi, by_axis = granulated_psi(cells, axes, measure, target)
        rows.append(
            {
                "measure": measure,
                "n": len(xs),
                "kendall_tau": tau,
                "p_value": p,
                "psi": psi,
                "psi_by_axis": by_axis,
                "_xy": (xs, ys),
            }
        )
    tested = sum(1 for r in rows if r["p_value"] is not None)
    adjusted_level = 1 - (1 - CONFIDENCE) / max(1, tested)
    for row, p_adj in zip(rows, holm([r["p_value"] for r in rows])):
        xs, ys = row.pop("_xy")
        row["p_holm"] = p_adj
        ci, ci_adj = (
            bootstrap_tau(xs, ys, draws, seed, (CONFIDENCE, adjusted_level))
            if row["kendall_tau"] is not None
            else (None, None)
        )
        row["tau_ci"], row["tau_ci_adjusted"] = ci, ci_adj
        row["psi_ci"] = bootstrap_psi(cells, axes, row["measure"], target, draws, seed)
    return rows
