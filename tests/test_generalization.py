"""Kendall τ-b, the granulated Ψ, Holm's adjustment and ``flatness correlate`` on synthetic cell
tables whose answers are known by construction or worked out by hand."""

import itertools
import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from flatness.core.errors import FlatnessError
from flatness.generalization.correlation import (
    bootstrap_tau,
    correlate_table,
    granulated_psi,
    holm,
    kendall_tau,
)
from flatness.sweep.cells import read_table, write_table
from flatness.sweep.correlate import compute, correlate


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


def _write_sweep(folder, n_cells, target_fn, status="done"):
    records = []
    for i in range(n_cells):
        a, seed = i % 3 + 1, i // 3
        gap = target_fn(a, seed)
        records.append(
            {
                "cell": f"c{i}",
                "params": {"method": "erm" if i % 2 else "sam", "a": a},
                "seed": seed,
                "train_acc": 90.0,
                "test_acc": 90.0 - gap,
                "gap": gap,
                "test_error": 10.0 + gap,
                "status": status,
                "measures": {"lambda_1": gap * 2, "weight_norm": -gap, "margin_p10": -gap},
            }
        )
    os.makedirs(folder, exist_ok=True)
    write_table(str(folder), records, ["method", "a"])


def test_correlate_writes_every_output_and_counts_only_adjusted_significance(tmp_path):
    _write_sweep(tmp_path, 12, lambda a, s: a + 0.1 * s)
    result = correlate(str(tmp_path), "gap", draws=100)
    with open(tmp_path / "correlation.json") as handle:
        saved = json.load(handle)
    assert saved["target"] == "gap" and saved["axes"] == ["method", "a"]
    by = {m["measure"]: m for m in saved["measures"]}
    assert set(by["lambda_1"]) >= {"measure", "kendall_tau", "tau_ci", "psi", "psi_by_axis", "p_holm"}
    assert by["lambda_1"]["kendall_tau"] == pytest.approx(1.0) and by["lambda_1"]["predicts"]
    assert by["margin_p10"]["kendall_tau"] == pytest.approx(-1.0) and by["margin_p10"]["predicts"]  # sign −1
    assert by["weight_norm"]["kendall_tau"] == pytest.approx(-1.0) and not by["weight_norm"]["predicts"]
    assert by["lambda_1"]["p_holm"] >= by["lambda_1"]["p_value"]
    for key in ("csv", "markdown", "html", "bars", "scatter"):
        assert os.path.isfile(result["files"][key])
    html = (tmp_path / "report.html").read_text()
    assert "Holm" in html and "data:image/png;base64" in html
    rows, axes, measures = read_table(str(tmp_path))
    assert axes == ["method", "a"] and measures == ["lambda_1", "weight_norm", "margin_p10"]


def test_correlate_refuses_fewer_than_three_finished_cells(tmp_path):
    _write_sweep(tmp_path, 2, lambda a, s: a)
    with pytest.raises(FlatnessError, match="at least 3"):
        compute(str(tmp_path))
    with pytest.raises(FlatnessError, match="target"):
        compute(str(tmp_path), "accuracy")
    with pytest.raises(FlatnessError, match="cannot read"):
        compute(str(tmp_path / "nowhere"))


def test_comparison_adds_holm_adjusted_p_values_beside_the_raw_ones():
    from flatness.study.compare import compare
    from flatness.study.run_record import RunRecord
    from flatness.study.tables import markdown_table

    erm = [{"trace": 10.0 + s, "lambda_1": 5.0 + 0.1 * s} for s in range(3)]
    amp = [{"trace": 4.0 + s, "lambda_1": 5.05 + 0.1 * s} for s in range(3)]
    records = [
        RunRecord(source=f"{m}{s}", method=m, seed=s, values=v)
        for m, vals in (("erm", erm), ("amp", amp))
        for s, v in enumerate(vals)
    ]
    comp = compare(records)
    raw = {r["key"]: r["versus"]["amp"]["p"] for r in comp["rows"]}
    welch_trace = stats.ttest_ind([4, 5, 6], [10, 11, 12], equal_var=False).pvalue
    welch_lambda = stats.ttest_ind([5.05, 5.15, 5.25], [5.0, 5.1, 5.2], equal_var=False).pvalue
    assert raw == {"trace": pytest.approx(welch_trace), "lambda_1": pytest.approx(welch_lambda)}
    small, large = sorted([welch_trace, welch_lambda])
    expected = {welch_trace: min(1, 2 * small) if welch_trace == small else max(min(1, 2 * small), large)}
    adjusted = {r["key"]: r["versus"]["amp"]["p_holm"] for r in comp["rows"]}
    assert adjusted["trace"] == pytest.approx(expected[welch_trace])
    assert adjusted["lambda_1"] == pytest.approx(max(2 * small, large))
    assert "p (Holm)" in markdown_table(comp)


def test_holm_families_flatness_measures_test_accuracy_alone_and_the_rest():
    from flatness.study.compare import compare
    from flatness.study.run_record import RunRecord
    from flatness.study.significance import holm_family

    def values(s, shift):
        return {
            "trace": 10.0 + s - shift,
            "lambda_1": 5.0 + 0.1 * s,
            "test_acc": 90.0 + s + shift,
            "train_acc": 99.0 + 0.1 * s + 0.01 * shift,
            "train_loss": 0.1 + 0.01 * s + 0.001 * shift,
        }

    records = [
        RunRecord(source=f"{m}{s}", method=m, seed=s, values=values(s, 3.0 if m == "amp" else 0.0))
        for m in ("erm", "amp")
        for s in range(3)
    ]
    comp = compare(records)
    by = {r["key"]: r for r in comp["rows"]}
    assert {holm_family(by[k]) for k in ("trace", "lambda_1")} == {"flatness"}
    assert holm_family(by["test_acc"]) == "generalisation"
    # the one pre-specified generalisation test is a family of one: adjusted equals raw
    assert by["test_acc"]["versus"]["amp"]["p_holm"] == pytest.approx(by["test_acc"]["versus"]["amp"]["p"])
    # the flatness measures are adjusted among themselves only (two of them here)
    flat = sorted(by[k]["versus"]["amp"]["p"] for k in ("trace", "lambda_1"))
    assert min(by[k]["versus"]["amp"]["p_holm"] for k in ("trace", "lambda_1")) == pytest.approx(min(1, 2 * flat[0]))


def test_min_train_acc_keeps_only_the_cells_that_fit(tmp_path):
    _write_sweep(tmp_path, 12, lambda a, s: a + 0.1 * s)
    rows, axes, _ = read_table(str(tmp_path))
    # the cells of a = 1 did not fit their training set (train accuracy 60 %)
    records = [
        {
            "cell": r["cell"],
            "params": {"method": r["method"], "a": r["a"]},
            "seed": r["seed"],
            "train_acc": 60.0 if str(r["a"]) == "1" else 100.0,
            "test_acc": r["test_acc"],
            "gap": r["gap"],
            "test_error": r["test_error"],
            "status": "done",
            "measures": {"lambda_1": r["lambda_1"], "weight_norm": r["weight_norm"], "margin_p10": r["margin_p10"]},
        }
        for r in rows
    ]
    write_table(str(tmp_path), records, axes)
    assert compute(str(tmp_path), draws=50)["cells"] == 12
    kept = compute(str(tmp_path), draws=50, min_train_acc=99)
    assert kept["cells"] == 8 and kept["min_train_acc"] == 99
    with pytest.raises(FlatnessError, match="percentage"):
        compute(str(tmp_path), min_train_acc=101)


def _write_stop_sweep(folder, reached_fn):
    """12 cells where lambda_1 ranks the gap perfectly among the cells that reached the stop loss and
    backwards among those that did not (so including them must change τ)."""
    records = []
    for i in range(12):
        a, seed = i % 3 + 1, i // 3
        reached = reached_fn(i)
        gap = float(i) if reached else 100.0 + i
        records.append(
            {
                "cell": f"c{i}",
                "params": {"method": "erm", "a": a},
                "seed": seed,
                "train_acc": 100.0,
                "test_acc": 100.0 - gap,
                "gap": gap,
                "test_error": gap,
                "stopped_epoch": 40 if reached else 200,
                "reached_stop_loss": reached,
                "status": "done",
                "measures": {"lambda_1": float(i) if reached else -float(i), "weight_norm": 1.0 + i % 2},
            }
        )
    write_table(str(folder), records, ["a"])


def test_correlate_leaves_out_cells_that_missed_the_stop_loss_unless_asked(tmp_path):
    _write_stop_sweep(tmp_path, lambda i: i % 4 != 3)  # cells 3, 7, 11 did not reach it
    rows, axes, measures = read_table(str(tmp_path))
    assert [r["reached_stop_loss"] for r in rows][:4] == [True, True, True, False]
    assert [r["stopped_epoch"] for r in rows][:4] == [40, 40, 40, 200] and measures == ["lambda_1", "weight_norm"]
    result = correlate(str(tmp_path), "gap", draws=50, figures=False)
    saved = json.loads((tmp_path / "correlation.json").read_text())
    assert (saved["cells"], saved["cells_total"], saved["unreached_left_out"]) == (9, 12, 3)
    assert saved["stop_loss_used"] and not saved["include_unreached"]
    by = {m["measure"]: m for m in saved["measures"]}
    kept = [r for r in rows if r["reached_stop_loss"]]
    expected = stats.kendalltau([r["lambda_1"] for r in kept], [r["gap"] for r in kept]).statistic
    assert by["lambda_1"]["kendall_tau"] == pytest.approx(expected) == pytest.approx(1.0)
    assert any("3 finished cell(s) did not reach the sweep's stop loss" in s for s in result["verdict"])
    assert "did not reach the sweep's stop loss" in (tmp_path / "correlation.md").read_text()
    every = compute(str(tmp_path), draws=50, include_unreached=True)
    assert (every["cells"], every["unreached_left_out"], every["include_unreached"]) == (12, 0, True)
    expected = stats.kendalltau([r["lambda_1"] for r in rows], [r["gap"] for r in rows]).statistic
    every_tau = {m["measure"]: m for m in every["measures"]}["lambda_1"]["kendall_tau"]
    assert every_tau == pytest.approx(expected) and every_tau < 0.5
    # --min-train-acc still applies on top
    assert compute(str(tmp_path), draws=50, min_train_acc=99)["cells"] == 9


def test_correlate_without_a_stop_loss_keeps_every_cell_and_reads_old_tables(tmp_path):
    _write_sweep(tmp_path, 12, lambda a, s: a + 0.1 * s)  # records without the stop columns: blank
    summary = compute(str(tmp_path), draws=50)
    assert (summary["cells"], summary["stop_loss_used"], summary["unreached_left_out"]) == (12, False, 0)
    text = (tmp_path / "cells.csv").read_text().splitlines()
    old = [",".join(c for i, c in enumerate(line.split(",")) if i not in (8, 9)) for line in text]
    assert text[0].split(",")[8:10] == ["stopped_epoch", "reached_stop_loss"]
    (tmp_path / "cells.csv").write_text("\n".join(old) + "\n")  # a table from before the stop columns
    rows, axes, measures = read_table(str(tmp_path))
    assert axes == ["method", "a"] and measures == ["lambda_1", "weight_norm", "margin_p10"]
    assert compute(str(tmp_path), draws=50)["cells"] == 12


def test_too_few_cells_reached_the_stop_loss_says_so(tmp_path):
    _write_stop_sweep(tmp_path, lambda i: i < 2)
    with pytest.raises(FlatnessError, match="that reached the stop loss .10 did not; --include-unreached"):
        compute(str(tmp_path), draws=50)


def test_correlate_command_reports_the_left_out_cells_and_includes_them_when_asked(tmp_path, cli):
    _write_stop_sweep(tmp_path, lambda i: i % 4 != 3)
    default = cli(["correlate", tmp_path, "--draws", "20", "--no-figures"])
    assert default.exit_code == 0 and "3 finished cell(s) did not reach the sweep's stop loss" in default.output
    assert json.loads((tmp_path / "correlation.json").read_text())["cells"] == 9
    every = cli(["correlate", tmp_path, "--draws", "20", "--no-figures", "--include-unreached"])
    assert every.exit_code == 0 and "are included (--include-unreached)" in every.output
    saved = json.loads((tmp_path / "correlation.json").read_text())
    assert (saved["cells"], saved["include_unreached"], saved["unreached_left_out"]) == (12, True, 0)


def test_verdict_states_the_baseline_sign_adjusted_as_it_says():
    """The margin's expected sign is −1: its τ of −0.4 is a sign-adjusted +0.4 in the verdict's sentence."""
    from flatness.sweep.correlate import verdict

    def row(measure, family, tau):
        return {"measure": measure, "family": family, "kendall_tau": tau, "psi": tau / 2, "p_holm": 1e-3}

    measures = [
        row("lambda_1", "flatness", 0.3),
        row("margin_p10", "baseline", -0.4),
        row("weight_norm", "baseline", 0.1),
    ]
    for m in measures:
        m["predicts"] = True
    summary = {"measures": measures, "target": "gap", "cells": 20, "min_train_acc": None, "axes": ["lr"]}
    by_tau = next(s for s in verdict(summary) if s.startswith("By τ"))
    assert "margin_p10 (0.4)" in by_tau and "does not beat" in by_tau, by_tau
