"""flatness.sweep.correlate on hand-written cell tables: every output written and only Holm-adjusted
significance counted, the cells it keeps (finished, fitting their training set, reaching the stop loss, and
old tables without the stop columns), and the verdict: a baseline's sign adjusted as it says, and a warning
(so in the report) when the cells it ranks are underfit."""

import json
import os

import pytest
from scipy import stats
from sweep_tables import write_stop_sweep

from flatness.core.errors import FlatnessError
from flatness.sweep.cells import read_table, write_table
from flatness.sweep.correlate import compute, correlate, underfit_cells, verdict


def _summary(cells):
    return {"measures": [], "target": "gap", "cells": len(cells), "axes": ["lr"], **underfit_cells(cells)}


def test_underfit_cells_are_counted_by_train_accuracy_and_unreached_stop_loss():
    cells = [
        {"train_acc": 100.0, "reached_stop_loss": True},
        {"train_acc": 98.9},
        {"train_acc": 47.0},
        {"train_acc": 99.5, "reached_stop_loss": False},
    ]
    counts = underfit_cells(cells)
    assert counts == {"underfit_cells": 3, "underfit_lowest_train_acc": 47.0, "unreached_used": 1}
    sentences = verdict(_summary(cells))
    assert sentences[0].startswith("**Warning: 3 of 4 cells are underfit**") and "47" in sentences[0]


def test_no_warning_when_every_cell_fits():
    cells = [{"train_acc": 100.0, "reached_stop_loss": True}, {"train_acc": 99.0}]
    assert underfit_cells(cells)["underfit_cells"] == 0
    assert not any("underfit" in s for s in verdict(_summary(cells)))


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


def test_correlate_leaves_out_cells_that_missed_the_stop_loss_unless_asked(tmp_path):
    write_stop_sweep(tmp_path, lambda i: i % 4 != 3)  # cells 3, 7, 11 did not reach it
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
    write_stop_sweep(tmp_path, lambda i: i < 2)
    with pytest.raises(FlatnessError, match="that reached the stop loss .10 did not; --include-unreached"):
        compute(str(tmp_path), draws=50)


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
