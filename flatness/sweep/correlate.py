"""``correlate(DIR, target)`` behind ``flatness correlate``: rank a sweep's measures against generalisation.

Every measure is ranked against the generalisation gap (or the test error), and the report says, in
plain words, which ones predict it here.

Reads ``DIR/cells.csv`` (finished cells only; ``flatness.sweep.cells`` owns the format) and writes
``DIR/correlation.json`` (``{"target", "axes", "measures": [{"measure", "kendall_tau", "tau_ci", "psi",
"psi_by_axis", ...}]}``), ``correlation.csv``, ``correlation.md``, ``figures/correlation-*.png`` and
``report.html`` (the Markdown rendered by the experiment report's converter).

The verdict rule (also stated in the report): a measure *predicts* the target when its τ has the
expected sign (positive for every flatness measure and norm, negative for the margin) and its
Holm-adjusted p-value is below 0.05; raw p-values are shown but never counted. Flatness "beats the
norm baselines" when the best flatness measure's sign-adjusted τ and Ψ both exceed the best baseline's.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from flatness.core.errors import FlatnessError
from flatness.core.fileio import atomic_write_json, atomic_write_text
from flatness.core.limits import check_limit
from flatness.core.markup import csv_cell, figure_text, md_text, plain
from flatness.core.paths import check_new
from flatness.core.validation import check_count
from flatness.generalization.baselines import BASELINES, EXPECTED_SIGN
from flatness.generalization.correlation import CONFIDENCE, correlate_table, varied_axes
from flatness.plot.style import new_figure, save_figure
from flatness.study.report import markdown_to_html
from flatness.sweep.cells import read_table

TARGETS = ("gap", "test_error")
TARGET_WORDS = {"gap": "generalisation gap (train − test accuracy, points)", "test_error": "test error (%)"}
# Cells without accuracy (a regression loss, --loss mse): the sweep's gap is the loss gap.
LOSS_GAP_WORDS = "generalisation gap (test − train loss; the cells have no accuracy)"


def target_words(summary: dict[str, Any]) -> str:
    """What the target is, in words: the accuracy gap, or the loss gap of cells without accuracy."""
    if summary["target"] == "gap" and summary.get("gap_kind") == "loss":
        return LOSS_GAP_WORDS
    return TARGET_WORDS[summary["target"]]


ALPHA = 0.05
MIN_CELLS = 3
FIGURES = "figures"


def expected_sign(measure: str) -> int:
    """+1 when a larger value should mean worse generalisation (flatness measures, norms), -1 for the margin."""
    return EXPECTED_SIGN.get(measure, 1)


def family(measure: str) -> str:
    """``baseline`` for the norm/margin measures, ``flatness`` for every other one."""
    return "baseline" if measure in BASELINES else "flatness"


def _signed(value: float | None, measure: str) -> float | None:
    return None if value is None else value * expected_sign(measure)


def select_cells(
    rows: Sequence[dict[str, Any]], target: str, min_train_acc: float | None, include_unreached: bool
) -> tuple[list[dict[str, Any]], int | None]:
    """The finished cells that ``compute`` correlates over.

    Args:
        rows: ``cells.csv`` rows (``flatness.sweep.cells.read_table``).
        target: the column predicted.
        min_train_acc: keep only cells with at least this train accuracy (%), or None.
        include_unreached: keep the cells that did not reach the sweep's stop loss.

    Returns:
        ``(the cells kept, how many finished cells were left out for not reaching the stop loss)``;
        the count is None when the sweep trained without a stop loss (no such column, or blank).
    """
    done = [r for r in rows if r.get("status") == "done" and r.get(target) is not None]
    unreached = None
    if any(r.get("reached_stop_loss") is not None for r in done):
        missed = [r for r in done if r.get("reached_stop_loss") is not True]
        unreached = 0 if include_unreached else len(missed)
        if not include_unreached:
            done = [r for r in done if r.get("reached_stop_loss") is True]
    if min_train_acc is not None:
        if not 0 <= min_train_acc <= 100:
            raise FlatnessError(f"--min-train-acc is a percentage from 0 to 100, got {min_train_acc}")
        done = [r for r in done if r.get("train_acc") is not None and float(r["train_acc"]) >= min_train_acc]
    return done, unreached


def _check_defined(cells: Sequence[dict[str, Any]], target: str, measures: Sequence[str]) -> None:
    """Refuse a target for which no rank correlation exists: text, NaN, infinite or constant values."""
    for row in cells:
        value = row.get(target)
        if not isinstance(value, float) or not math.isfinite(value):
            raise FlatnessError(
                f"cell {plain(row.get('cell'))} has {target} = {plain(repr(value))}, not a finite number; "
                "no correlation with it exists"
            )
    if len({row[target] for row in cells}) < 2:
        raise FlatnessError(
            f"the {target} is {cells[0][target]:g} in every one of the {len(cells)} cells; "
            "a constant has no rank correlation with anything"
        )
    if not measures:
        raise FlatnessError("the cells table has no measure columns: nothing to correlate")


def compute(
    folder: str,
    target: str = "gap",
    draws: int = 1000,
    min_train_acc: float | None = None,
    include_unreached: bool = False,
) -> dict[str, Any]:
    """The correlation summary of a sweep folder (nothing written).

    Args:
        folder: the sweep's ``--out`` (holding ``cells.csv``).
        target: ``gap`` or ``test_error``.
        draws: bootstrap resamples per interval.
        min_train_acc: keep only the cells whose train accuracy (%) is at least this. Models that
            do not fit their training set have small gaps and small norms for the same reason
            (underfitting), which can make any measure look predictive; Jiang et al. (2020) compare
            only models trained to the same low training loss.
        include_unreached: when the sweep trained to a stop loss, also use the cells that did not reach
            it within the epoch cap (by default they are left out, and counted in ``unreached_left_out``).

    Returns:
        The ``correlation.json`` dict, measures ranked by sign-adjusted τ (best first).
    """
    if target not in TARGETS:
        raise FlatnessError(f"unknown target {target!r}; use gap or test_error")
    check_count(draws, "--draws", minimum=10)
    check_limit(draws, "draws")
    rows, columns, measures = read_table(folder)
    finished = [r for r in rows if r.get("status") == "done"]
    gap_kind = "loss" if finished and all(r.get("train_acc") is None for r in finished) else "accuracy"
    if gap_kind == "loss" and target == "test_error":
        raise FlatnessError(
            f"{folder}'s cells have no accuracy (a regression loss), so no test error: use --target gap (the loss gap)"
        )
    done, unreached = select_cells(rows, target, min_train_acc, include_unreached)
    if len(done) < MIN_CELLS:
        kept = "" if min_train_acc is None else f" with train accuracy >= {min_train_acc:g} %"
        if unreached:
            kept += f" that reached the stop loss ({unreached} did not; --include-unreached keeps them)"
        raise FlatnessError(f"{folder} has {len(done)} finished cell(s){kept}; correlate needs at least {MIN_CELLS}")
    _check_defined(done, target, measures)
    axes = varied_axes(done, columns)
    stats = correlate_table(done, axes, measures, target, draws=draws)
    if all(row["kendall_tau"] is None for row in stats):
        raise FlatnessError(
            f"no measure of {folder} has a rank correlation with the {target}: every measure is constant "
            "or missing over the cells, so there is nothing to judge"
        )
    for row in stats:
        row["family"] = family(row["measure"])
        row["expected_sign"] = expected_sign(row["measure"])
        row["predicts"] = bool(
            row["kendall_tau"] is not None
            and row["p_holm"] is not None
            and _signed(row["kendall_tau"], row["measure"]) > 0
            and row["p_holm"] < ALPHA
        )
    stats.sort(key=lambda r: (r["kendall_tau"] is None, -(_signed(r["kendall_tau"], r["measure"]) or 0.0)))
    return {
        "format": "flatness-correlation",
        "target": target,
        "gap_kind": gap_kind,
        "axes": axes,
        "cells": len(done),
        "cells_total": len(rows),
        "min_train_acc": min_train_acc,
        "stop_loss_used": unreached is not None,
        "include_unreached": bool(include_unreached),
        "unreached_left_out": unreached or 0,
        **underfit_cells(done),
        "confidence": CONFIDENCE,
        "alpha": ALPHA,
        "bootstrap_draws": draws,
        "measures": stats,
    }


UNDERFIT_TRAIN_ACC = 99.0  # % train accuracy below which a cell is called underfit


def underfit_cells(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How many of the cells used are underfit: train accuracy < 99 % or the stop loss not reached.

    Args:
        cells: the cells the correlations use (``select_cells``).

    Returns:
        ``{"underfit_cells", "underfit_lowest_train_acc", "unreached_used"}``.
    """
    accs = [float(r["train_acc"]) for r in cells if r.get("train_acc") is not None]
    low = [a for a in accs if a < UNDERFIT_TRAIN_ACC]
    unreached = [r for r in cells if r.get("reached_stop_loss") is False]
    underfit = [
        r
        for r in cells
        if r.get("reached_stop_loss") is False
        or (r.get("train_acc") is not None and float(r["train_acc"]) < UNDERFIT_TRAIN_ACC)
    ]
    return {
        "underfit_cells": len(underfit),
        "underfit_lowest_train_acc": min(low) if low else None,
        "unreached_used": len(unreached),
    }


def _underfit_sentence(summary: dict[str, Any]) -> list[str]:
    """The warning when the correlations rest on underfit models (nothing when every cell fits)."""
    n = summary.get("underfit_cells") or 0
    if not n:
        return []
    lowest = summary.get("underfit_lowest_train_acc")
    detail = f"lowest train accuracy {_g(lowest)} %" if lowest is not None else "the stop loss not reached"
    return [
        f"**Warning: {n} of {summary['cells']} cells are underfit** (train accuracy below "
        f"{UNDERFIT_TRAIN_ACC:g} % or the stop loss not reached; {detail}): over underfit models the ranking "
        "says how well each fits, not whether flatness predicts generalisation. Train to a stop loss "
        "(`flatness sweep --stop-loss 0.01` with enough epochs) or pass --min-train-acc 99."
    ]


# --------------------------------------------------------------------------- text


def _g(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


def _ci(ci: Sequence[float] | None) -> str:
    return "–" if not ci else f"[{_g(ci[0])}, {_g(ci[1])}]"


def _best(stats: list[dict[str, Any]], fam: str, key: str) -> dict[str, Any] | None:
    rows = [r for r in stats if r["family"] == fam and r[key] is not None]
    return max(rows, key=lambda r: _signed(r[key], r["measure"]), default=None)


def verdict(summary: dict[str, Any], name: Callable[[object], str] = plain) -> list[str]:
    """Plain-language sentences: which measures predict the target, and flatness against the baselines.

    Args:
        summary: the correlation summary (``compute``).
        name: how a measure's name (a column of someone's ``cells.csv``: data) is written; ``plain``
            for a terminal, ``md_text`` for the Markdown report.

    Returns:
        The sentences (``**`` marks what the Markdown report shows in bold).
    """
    stats, target = summary["measures"], summary["target"]
    words = target_words(summary)
    good = [r for r in stats if r["predicts"]]
    kept = summary.get("min_train_acc")
    which = "finished cells" if kept is None else f"finished cells with train accuracy >= {kept:g} %"
    if summary.get("stop_loss_used"):
        which += " that reached the stop loss" if not summary.get("include_unreached") else ""
    s = _underfit_sentence(summary) + [
        f"Over {summary['cells']} {which}, **{len(good)} of {len(stats)} measures predict the {words}** "
        f"(rule: τ of the expected sign with a Holm-adjusted p < {ALPHA}, adjusted for the {len(stats)} measures "
        "tested; raw p-values are not counted): "
        + (
            ", ".join(
                f"{name(r['measure'])} (τ = {_g(r['kendall_tau'])}, adjusted p = {_g(r['p_holm'])})" for r in good
            )
            or "none"
        )
        + "."
    ]
    wrong = [
        r
        for r in stats
        if r["kendall_tau"] is not None and r["p_holm"] is not None and r["p_holm"] < ALPHA and not r["predicts"]
    ]
    if wrong:
        s.append(
            "Significant in the unexpected direction (flatter or smaller went with a larger "
            f"{target.replace('_', ' ')}): "
            + ", ".join(f"{name(r['measure'])} (τ = {_g(r['kendall_tau'])})" for r in wrong)
            + "."
        )
    for key, symbol in (("kendall_tau", "τ"), ("psi", "Ψ")):
        flat, base = _best(stats, "flatness", key), _best(stats, "baseline", key)
        if flat and base:
            flat_value, base_value = _signed(flat[key], flat["measure"]), _signed(base[key], base["measure"])
            beats = flat_value > base_value
            s.append(
                f"By {symbol} (sign-adjusted), the best flatness measure is {name(flat['measure'])} ({_g(flat_value)}) "
                f"and the best norm/margin baseline is {name(base['measure'])} ({_g(base_value)}): flatness "
                f"**{'beats' if beats else 'does not beat'}** the baselines on {symbol} here."
            )
    s.extend(_stop_sentence(summary))
    if not summary["axes"]:
        s.append("No hyperparameter varied over the finished cells, so Ψ is undefined.")
    s.append(
        f"These are rank correlations over one grid on one dataset; intervals are {int(CONFIDENCE * 100)} % "
        "percentile bootstraps (cells resampled for τ, groups for Ψ), and the adjusted τ intervals are at the "
        "Bonferroni level 1 − 0.05/m."
    )
    return s


def _stop_sentence(summary: dict[str, Any]) -> list[str]:
    """What the stop loss did to the cells used (nothing when the sweep trained without one)."""
    if not summary.get("stop_loss_used"):
        return []
    if summary.get("include_unreached"):
        return [
            "Cells that did not reach the sweep's stop loss within the epoch cap are included "
            "(--include-unreached): they are compared at a higher training loss than the others."
        ]
    left = summary.get("unreached_left_out", 0)
    return [
        f"{left} finished cell(s) did not reach the sweep's stop loss within the epoch cap and were left out "
        "(every model compared is trained to the same training loss, as Jiang et al. 2020 do; "
        "--include-unreached keeps them)."
    ]


def markdown(summary: dict[str, Any], figures: dict[str, str], root: str) -> str:
    """The report as Markdown (figures linked relative to ``root``)."""
    L = [f"# Does flatness predict generalisation? Target: {target_words(summary)}", "", "## Verdict", ""]
    L += [f"- {x}" for x in verdict(summary, md_text)] + [""]
    L += ["## Ranked measures", "", table_markdown(summary), ""]
    axes = ", ".join(md_text(a) for a in summary["axes"]) or "(none)"
    L += [
        "τ: Kendall's τ-b over all finished cells (`scipy.stats.kendalltau`); p: its two-sided p-value, "
        "raw and Holm-adjusted over the measures; Ψ: the granulated τ of Jiang et al. (2020), the mean over "
        f"the axes {axes} of the mean τ within groups of cells that differ "
        "only in that axis (same seed). Sign: +1 where a larger value should mean a larger gap, −1 for the "
        "margin. Baselines: weight norm, distance from initialisation, path norm (networks without "
        "BatchNorm or pooling only), the 10th-percentile output margin, Σ log of the layers' spectral norms.",
        "",
    ]
    L += ["## Figures", ""]
    for key, caption in (
        ("bars", "τ and Ψ per measure, ranked, with 95 % bootstrap intervals."),
        ("scatter", "Each measure against the target, one point per cell, coloured by method."),
    ):
        if key in figures:
            rel = os.path.relpath(figures[key], root).replace(os.sep, "/")
            L += [f"![{caption}]({rel})", "", f"*{caption}*", ""]
    return "\n".join(L)


def table_markdown(summary: dict[str, Any]) -> str:
    """The ranked measures as a Markdown table (raw and Holm-adjusted p-values side by side)."""
    head = [
        "measure",
        "family",
        "sign",
        "n",
        "τ",
        "τ 95 % CI",
        "τ CI (adjusted)",
        "p",
        "p (Holm)",
        "Ψ",
        "Ψ 95 % CI",
        "predicts",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary["measures"]:
        cells = [
            md_text(r["measure"]),
            r["family"],
            f"{r['expected_sign']:+d}",
            str(r["n"]),
            _g(r["kendall_tau"]),
            _ci(r["tau_ci"]),
            _ci(r["tau_ci_adjusted"]),
            _g(r["p_value"]),
            _g(r["p_holm"]),
            _g(r["psi"]),
            _ci(r["psi_ci"]),
            "yes" if r["predicts"] else "no",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(summary: dict[str, Any]) -> str:
    """``correlation.csv``: one row per measure, intervals split into low/high columns, Ψ per axis."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    axes = summary["axes"]
    writer.writerow(
        [
            "measure",
            "family",
            "expected_sign",
            "n",
            "kendall_tau",
            "tau_ci_low",
            "tau_ci_high",
            "tau_ci_adjusted_low",
            "tau_ci_adjusted_high",
            "p_value",
            "p_holm",
            "psi",
            "psi_ci_low",
            "psi_ci_high",
            "predicts",
        ]
        + [csv_cell(f"psi_{a}") for a in axes]
    )
    for r in summary["measures"]:
        ci, adj, pci = r["tau_ci"] or [None, None], r["tau_ci_adjusted"] or [None, None], r["psi_ci"] or [None, None]
        values = [
            csv_cell(r["measure"]),
            r["family"],
            r["expected_sign"],
            r["n"],
            r["kendall_tau"],
            *ci,
            *adj,
            r["p_value"],
            r["p_holm"],
            r["psi"],
            *pci,
            r["predicts"],
        ] + [r["psi_by_axis"].get(a) for a in axes]
        writer.writerow(["" if v is None else v for v in values])
    return buf.getvalue()


# --------------------------------------------------------------------------- figures


def figure_bars(summary: dict[str, Any], path: str) -> str | None:
    """Ranked horizontal bars of τ and Ψ with their intervals."""
    stats = [r for r in summary["measures"] if r["kendall_tau"] is not None]
    if not stats:
        return None
    fig = new_figure((9, 0.35 * len(stats) + 1.8))
    ax = fig.subplots()
    ys = list(range(len(stats)))[::-1]
    for offset, key, ci_key, color in ((0.18, "kendall_tau", "tau_ci", "C0"), (-0.18, "psi", "psi_ci", "C1")):
        vals = [r[key] if r[key] is not None else 0.0 for r in stats]
        # a percentile interval need not contain the point estimate: whiskers stop at the bar then
        lo = [max(0.0, v - (r[ci_key] or [v, v])[0]) for v, r in zip(vals, stats)]
        hi = [max(0.0, (r[ci_key] or [v, v])[1] - v) for v, r in zip(vals, stats)]
        ax.barh(
            [y + offset for y in ys],
            vals,
            height=0.34,
            color=color,
            xerr=[lo, hi],
            capsize=2,
            label="Kendall τ (all cells)" if key == "kendall_tau" else "granulated Ψ",
        )
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{figure_text(r['measure'])} ({r['expected_sign']:+d})" for r in stats], fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel(f"rank correlation with the {summary['target'].replace('_', ' ')} (bars: 95 % bootstrap intervals)")
    ax.legend(fontsize=8)
    ax.set_title("Measures ranked by sign-adjusted τ (sign in brackets: the expected direction)", fontsize=9)
    return save_figure(fig, path, force=True)


def figure_scatter(folder: str, summary: dict[str, Any], path: str) -> str | None:
    """One panel per measure: the measure against the target, coloured by method."""
    rows, _, _ = read_table(folder)
    target = summary["target"]
    # the cells the statistics used, no others
    rows, _ = select_cells(rows, target, summary.get("min_train_acc"), summary.get("include_unreached", False))
    names = [r["measure"] for r in summary["measures"]]
    if not names:
        return None
    cols = min(4, len(names))
    nrows = (len(names) + cols - 1) // cols
    fig = new_figure((3.2 * cols, 2.6 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    methods = sorted({str(r.get("method") or "all") for r in rows})
    for ax, name in zip(axes, names):
        for i, m in enumerate(methods):
            pts = [(r.get(name), r.get(target)) for r in rows if str(r.get("method") or "all") == m]
            pts = [(x, y) for x, y in pts if x is not None and y is not None]
            if pts:
                ax.scatter(*zip(*pts), s=12, color=f"C{i}", label=figure_text(m.upper()), alpha=0.8)
        ax.set_title(figure_text(name), fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=6)
    axes[0].set_ylabel(target.replace("_", " "), fontsize=7)
    fig.suptitle(f"Each measure (x) against the {target_words(summary)} (y); one point per cell", fontsize=9)
    return save_figure(fig, path, force=True)


def correlate(
    folder: str,
    target: str = "gap",
    draws: int = 1000,
    figures: bool = True,
    min_train_acc: float | None = None,
    include_unreached: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Compute and write every output of ``flatness correlate``.

    Args:
        folder: the sweep folder.
        target: ``gap`` or ``test_error``.
        draws: bootstrap resamples per interval.
        figures: draw the figures (and embed them in the report).
        min_train_acc: keep only cells with at least this train accuracy (%), as in ``compute``.
        include_unreached: also use cells that did not reach the sweep's stop loss, as in ``compute``.
        force: replace outputs of an earlier run (else they are refused before any work).

    Returns:
        The summary, with ``files`` (output paths) and ``verdict`` (the sentences).
    """
    files = {
        "json": os.path.join(folder, "correlation.json"),
        "csv": os.path.join(folder, "correlation.csv"),
        "markdown": os.path.join(folder, "correlation.md"),
        "html": os.path.join(folder, "report.html"),
    }
    figure_paths = [os.path.join(folder, FIGURES, f"correlation-{key}.png") for key in ("bars", "scatter")]
    check_new([*files.values(), *(figure_paths if figures else [])], force)
    summary = compute(folder, target, draws, min_train_acc, include_unreached)
    figs: dict[str, str] = {}
    if figures:
        os.makedirs(os.path.join(folder, FIGURES), exist_ok=True)
        for key, fn in (
            ("bars", lambda p: figure_bars(summary, p)),
            ("scatter", lambda p: figure_scatter(folder, summary, p)),
        ):
            written = fn(os.path.join(folder, FIGURES, f"correlation-{key}.png"))
            if written:
                figs[key] = written
    md = markdown(summary, figs, folder)
    files.update(figs)
    atomic_write_json(files["json"], summary)
    atomic_write_text(files["csv"], csv_text(summary))
    atomic_write_text(files["markdown"], md)
    page = markdown_to_html(md, folder, f"flatness correlate: {plain(folder)}", figures=figs.values())
    atomic_write_text(files["html"], page)
    return {**summary, "files": files, "verdict": verdict(summary)}
