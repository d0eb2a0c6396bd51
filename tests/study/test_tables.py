"""``flatness.study.tables``: the Markdown table and the CSV, their numbers checked against a hand computation."""

from __future__ import annotations

import csv
import io
import statistics

import pytest
from scipy import stats

from flatness.study.compare import compare
from flatness.study.run_record import RunRecord
from flatness.study.tables import (
    PAIRED_CSV_ROWS,
    csv_text,
    format_mean_std,
    format_number,
    format_p,
    format_p_holm,
    markdown_table,
)

ERM = {0: (10.0, 91.0), 1: (12.0, 90.0), 2: (11.5, 92.5)}  # seed: (lambda_1, test accuracy in %)
AMP = {0: (6.0, 92.0), 1: (7.25, 93.5), 2: (5.0, 91.0)}


@pytest.mark.parametrize(
    ("value", "digits", "text"),
    [
        (None, 4, "–"),
        (0.0, 4, "0"),
        (0.5, 4, "0.5"),
        (1234.5678, 4, "1235"),
        (-2.0 / 3.0, 4, "-0.6667"),
        (0.001, 4, "0.001"),
        (0.000123456, 4, "1.235e-04"),
        (123456.0, 4, "1.235e+05"),
        (-99999.0, 2, "-1e+05"),
        (3.14159, 2, "3.1"),
    ],
)
def test_format_number(value, digits, text):
    assert format_number(value, digits) == text


def test_cells_and_p_values():
    assert format_mean_std({"n": 0, "mean": None, "std": None}) == "–"
    assert format_mean_std({"n": 1, "mean": 2.5, "std": None}) == "2.5 (n=1, std undefined)"
    assert format_mean_std({"n": 3, "mean": 2.5, "std": 0.125}) == "2.5 ± 0.12"
    assert format_mean_std({"n": 3, "mean": 1e6, "std": 1e-7}) == "1.000e+06 ± 0"  # rounding noise shows as 0
    assert format_p({"p": 0.01234}) == "0.012" and format_p({"p": 2.5e-5}) == "2.5e-05"
    assert format_p({"p": None, "note": "zero variance"}) == "n/a (zero variance)"
    assert format_p({"p": None}) == "n/a (undefined)"
    assert format_p_holm({"p_holm": 0.5}) == "0.5" and format_p_holm({"p_holm": 1e-4}) == "1.0e-04"
    assert format_p_holm({}) == "–"


def _comp():
    records = [
        RunRecord(f"/r/{m}-{s}", m, s, values={"lambda_1": lam, "test_acc": acc})
        for m, seeds in (("amp", AMP), ("erm", ERM))
        for s, (lam, acc) in seeds.items()
    ]
    return compare(records)


def _row_of(lines, label):
    rows = [line for line in lines if line.startswith("| " + label)]
    assert len(rows) == 1, (label, lines)
    return [c.strip() for c in rows[0].strip("|").split("|")]


def test_the_markdown_table_holds_the_hand_computed_numbers():
    comp = _comp()
    text = markdown_table(comp)
    lines = text.splitlines()
    assert lines[0].split(" | ")[2:4] == ["ERM (n=3)", "AMP (n=3)"]  # ERM first: the baseline, then the others
    row = _row_of(lines, next(r["label"] for r in comp["rows"] if r["key"] == "lambda_1"))
    erm, amp = [v[0] for v in ERM.values()], [v[0] for v in AMP.values()]
    assert row[2] == f"{statistics.mean(erm):.4g} ± {statistics.stdev(erm):.2g}"
    assert row[3] == f"{statistics.mean(amp):.4g} ± {statistics.stdev(amp):.2g}"
    assert row[4] == f"{statistics.mean(amp) - statistics.mean(erm):.4g}"
    p = stats.ttest_ind(amp, erm, equal_var=False).pvalue
    assert row[5] == (f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")
    assert row[0].endswith("↓")  # lower λ1 is flatter
    assert _row_of(lines, next(r["label"] for r in comp["rows"] if r["key"] == "test_acc"))[0].endswith("↑")
    assert "With 3 seeds per method a p-value is weak evidence either way." in text


def test_the_csv_holds_every_run_and_the_hand_computed_statistics():
    comp = _comp()
    rows = list(csv.reader(io.StringIO(csv_text(comp))))
    header = rows[0]
    assert header[:4] == ["row", "method", "seed", "source"]
    col = {
        key: header.index(label)
        for key, label in [(r["key"], r["label"] + (f" ({r['unit']})" if r["unit"] else "")) for r in comp["rows"]]
    }
    runs = [r for r in rows if r[0] == "run"]
    assert len(runs) == 6
    for r in runs:
        lam, acc = (ERM if r[1] == "erm" else AMP)[int(r[2])]
        assert float(r[col["lambda_1"]]) == lam and float(r[col["test_acc"]]) == acc  # written exactly (repr)
        assert r[3] == f"/r/{r[1]}-{r[2]}"
    by_name = {(r[0], r[1]): r for r in rows if r[0] != "run"}
    for m, seeds in (("erm", ERM), ("amp", AMP)):
        lams = [v[0] for v in seeds.values()]
        assert float(by_name[("mean", m)][col["lambda_1"]]) == pytest.approx(statistics.mean(lams), rel=1e-12)
        assert float(by_name[("std", m)][col["lambda_1"]]) == pytest.approx(statistics.stdev(lams), rel=1e-12)
        assert by_name[("n", m)][col["lambda_1"]] == "3"
    diff = statistics.mean(v[0] for v in AMP.values()) - statistics.mean(v[0] for v in ERM.values())
    assert float(by_name[("diff amp-erm", "amp")][col["lambda_1"]]) == pytest.approx(diff, rel=1e-12)
    assert all((f"paired_{k} amp-erm", "amp") in by_name for k in PAIRED_CSV_ROWS)
    paired_diff = statistics.mean(AMP[s][0] - ERM[s][0] for s in ERM)  # seed by seed
    assert float(by_name[("paired_diff amp-erm", "amp")][col["lambda_1"]]) == pytest.approx(paired_diff, rel=1e-12)


def test_names_from_files_stay_text():
    records = [RunRecord("=HYPERLINK(1)", "erm", 0, values={"lambda_1": 1.0})]
    comp = compare(records)
    runs = [r for r in csv.reader(io.StringIO(csv_text(comp))) if r[0] == "run"]
    assert runs[0][3] == "'=HYPERLINK(1)"  # a spreadsheet shows it, never runs it
    assert "(n=1, std undefined)" in markdown_table(comp)
