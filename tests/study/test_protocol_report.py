"""``flatness.study.protocol_report``: the verdict section's table and notes, cell by cell."""

from __future__ import annotations

from flatness.study.protocol_report import primary_section, primary_table
from flatness.study.quantities import PRIMARY_RULE
from flatness.study.run_record import RunRecord


def _paired(diff, lo, hi, wins, n, p):
    return {"paired": {"diff": diff, "ci_low": lo, "ci_high": hi, "wins": wins, "n": n, "p_t_holm": p}}


def _row(key, label, better, invariant, primary, versus):
    return {"key": key, "label": label, "better": better, "invariant": invariant, "primary": primary, "versus": versus}


FIXED = {
    "others": ["amp"],
    "rows": [
        _row("lambda_1", "λmax", "lower", False, True, {"amp": _paired(-2.5, -4.0, -1.25, 3, 3, 0.0123)}),
        _row("trace", "trace | sum", "lower", False, True, {"amp": _paired(None, None, None, 0, 0, None)}),
        _row("sharp:x", "not primary", "lower", True, False, {"amp": _paired(1.0, 0.0, 2.0, 1, 3, 0.5)}),
        _row("test_acc", "test accuracy", "higher", None, False, {"amp": _paired(1.5, None, None, 2, 3, 2e-5)}),
    ],
}
MATCHED = {
    "others": ["amp"],
    "rows": [_row("lambda_1", "λmax", "lower", False, True, {"amp": _paired(-1.0, -2.0, 0.5, 2, 3, None)})],
}


def test_the_table_holds_the_primaries_and_test_accuracy_under_both_protocols():
    lines = primary_table(FIXED, MATCHED)
    assert lines[0] == "| measure | invariant | AMP − ERM, fixed budget | AMP − ERM, matched loss |"
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]
    assert rows[0] == ["λmax ↓", "no", "-2.5 [-4, -1.25]; 3/3; p 0.012", "-1 [-2, 0.5]; 2/3; p n/a"]
    assert rows[1][0] == "trace \\| sum ↓" and rows[1][2:] == ["–", "–"]  # no paired difference; a | escaped
    assert rows[2] == ["test accuracy ↑", "–", "1.5; 2/3; p 2.0e-05", "–"]  # no interval; not in the matched table
    assert len(rows) == 3  # the non-primary row is left out


def test_the_section_names_unreached_matched_and_underfit_runs():
    matched = [RunRecord("m", "amp", 1, probe={"checkpoint": {"epoch": 7}})]
    unreached = [RunRecord("u", "erm", 2)]
    records = [
        RunRecord("a", "erm", 0, values={"probe_acc": 97.25}),
        RunRecord("b", "amp", 0, values={"probe_acc": 100.0}),
    ]
    verdicts = [
        {"sentences": ["AMP is flatter."], "details": ["λmax lower"], "protocol": "Fixed budget", "method": "amp"}
    ]
    text = "\n".join(
        primary_section(verdicts, FIXED, records, {"comp_matched": MATCHED, "matched": matched, "unreached": unreached})
    )
    assert text.startswith(f"Primary measures, declared before the data: {PRIMARY_RULE}.")
    assert "- AMP is flatter." in text
    assert "Matched-loss checkpoints (epoch of each): AMP seed 1: 7." in text
    assert "left out of the matched-loss protocol:** ERM seed 2." in text
    assert "(train accuracy below 99 % at the end): ERM seed 0 (97.2 %)." in text and "AMP seed 0 (" not in text
    assert "Details, fixed budget, AMP:\n\n- λmax lower" in text
    quiet = "\n".join(primary_section([], FIXED, records[1:], {}))
    assert "Matched-loss" not in quiet and "Never reached" not in quiet and "underfit" not in quiet
