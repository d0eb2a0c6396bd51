"""flatness.cli.compare (``flatness compare``): a table of probe files whose means and differences are checked by
hand, the JSON and CSV it writes, and its one-line refusals."""

from __future__ import annotations

import csv
import json
import statistics

import pytest
from plot_helpers import make_probe
from user_model_helpers import one_line_error

LAMBDA_1 = {("erm", 0): 10.0, ("erm", 1): 12.0, ("erm", 2): 11.0, ("amp", 0): 6.0, ("amp", 1): 8.5, ("amp", 2): 7.0}


@pytest.fixture
def probes(tmp_path):
    return [
        make_probe(tmp_path / f"{m}-{s}.json", method=m, seed=s, eig=(lam, 1.0, 0.5, 0.25, 0.1), density=False)
        for (m, s), lam in LAMBDA_1.items()
    ]


def _values(method):
    return [v for (m, _), v in LAMBDA_1.items() if m == method]


def test_the_table_and_the_files_hold_the_hand_computed_numbers(cli, probes, tmp_path):
    out_json, out_csv = tmp_path / "c.json", tmp_path / "c.csv"
    result = cli(["compare", *probes, "--json", out_json, "--csv", out_csv])
    assert result.exit_code == 0, result.output
    erm, amp = _values("erm"), _values("amp")
    (row,) = [line for line in result.output.splitlines() if line.startswith("| λmax ↓ |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == f"{statistics.mean(erm):.4g} ± {statistics.stdev(erm):.2g}"
    assert cells[3] == f"{statistics.mean(amp):.4g} ± {statistics.stdev(amp):.2g}"
    assert cells[4] == f"{statistics.mean(amp) - statistics.mean(erm):.4g}"
    summary = json.loads(out_json.read_text())
    lam = next(r for r in summary["rows"] if r["key"] == "lambda_1")
    assert lam["methods"]["erm"]["mean"] == pytest.approx(statistics.mean(erm))
    assert lam["methods"]["amp"]["std"] == pytest.approx(statistics.stdev(amp))
    assert lam["versus"]["amp"]["diff"] == pytest.approx(statistics.mean(amp) - statistics.mean(erm))
    runs = [r for r in csv.reader(out_csv.open()) if r and r[0] == "run"]
    assert sorted((r[1], int(r[2])) for r in runs) == sorted(LAMBDA_1)
    assert f"json: {out_json}" in result.output and f"csv: {out_csv}" in result.output


def test_another_baseline(cli, probes):
    result = cli(["compare", *probes, "--baseline", "AMP"])
    assert result.exit_code == 0, result.output
    head = result.output.splitlines()[0]
    assert "ERM − AMP" in head and "AMP − ERM" not in head


def test_refusals_are_one_line(cli, probes, tmp_path):
    assert "no inputs" in one_line_error(cli(["compare"]))
    (tmp_path / "notes.txt").write_text("x")
    assert "unknown input type '.txt'" in one_line_error(cli(["compare", tmp_path / "notes.txt"]))
    assert "not found" in one_line_error(cli(["compare", tmp_path / "missing.json"]))
    mine = tmp_path / "mine.csv"
    mine.write_text("keep")
    assert "--force" in one_line_error(cli(["compare", *probes, "--csv", mine]))
    assert mine.read_text() == "keep"
    assert cli(["compare", *probes, "--csv", mine, "--force"]).exit_code == 0
    assert mine.read_text().startswith("row,method,seed,source")
