"""The report's verdict on a hand-made comparison summary: the rule (flatter on more than half of the
flatness measures), which measures count as significant (Holm-adjusted p only), and its sentences."""

import pytest

from flatness.study.report import verdict


def cell(mean, n=3):
    return {"mean": mean, "std": 1.0 if n > 1 else None, "n": n, "values": [mean] * n}


def row(key, flatness, diff, p, p_holm, n=3):
    return {
        "key": key,
        "label": key,
        "unit": "",
        "flatness": flatness,
        "better": "lower" if flatness else "higher",
        "methods": {"erm": cell(10.0, n), "amp": cell(10.0 + (diff or 0.0), n)},
        "versus": {"amp": {"diff": diff, "p": p, "p_holm": p_holm, "note": ""}},
    }


def summary(rows):
    return {"baseline": "erm", "methods": ["erm", "amp"], "others": ["amp"], "rows": rows}


def test_verdict_counts_flatter_and_sharper_measures_and_only_holm_significance():
    comp = summary(
        [
            row("lambda_1", True, -2.0, 0.001, 0.01),  # flatter, significant after adjustment
            row("trace", True, -1.0, 0.02, 0.2),  # flatter; raw p < 0.05 but adjusted not: not counted
            row("sharp:wc", True, 0.5, 0.01, 0.03),  # sharper, significant
            row("sharp:none", True, None, None, None),  # no difference computed: not a measure
            row("test_acc", False, 1.0, 0.4, 0.4),
        ]
    )
    out = verdict(comp, "amp")
    assert out["available"] and out["held"]  # 2 of 3 measures flatter
    assert (out["flatter"], out["sharper"], out["measures"]) == (["lambda_1", "trace"], ["sharp:wc"], 3)
    assert (out["significant_flatter"], out["significant_sharper"]) == (["lambda_1"], ["sharp:wc"])
    assert out["test_acc_better"] is True
    text = " ".join(out["sentences"])
    assert "claim held" in text and "flatter on 2 of 3 measures and sharper on 1" in text
    assert "1 in AMP's favour (lambda_1), 1 against (sharp:wc)" in text
    assert "AMP was better" in text and "not significant at 0.05 after adjustment" in text
    assert "With 3 seeds per method" in text


@pytest.mark.parametrize(
    "diffs, held", [([-1.0, 1.0], False), ([-1.0, -1.0, 1.0], True), ([-1.0, 1.0, 1.0], False), ([], False)]
)
def test_verdict_rule_needs_more_than_half_of_the_measures_flatter(diffs, held):
    rows = [row(f"m{i}", True, d, 0.5, 1.0) for i, d in enumerate(diffs)] + [row("test_acc", False, -1.0, 0.5, 0.5)]
    out = verdict(summary(rows), "amp")
    assert out["held"] is held and out["measures"] == len(diffs) and out["test_acc_better"] is False
    if not diffs:
        assert "could not be tested" in out["sentences"][0]


def test_verdict_without_the_method_or_with_one_seed():
    assert verdict(summary([row("trace", True, -1.0, None, None)]), "sam") == {
        "method": "sam",
        "available": False,
        "sentences": ["No SAM runs to compare."],
    }
    out = verdict(summary([row("trace", True, -1.0, None, None, n=1)]), "amp")
    assert out["held"] and out["significant_flatter"] == [] and out["test_acc_better"] is None
    assert "single seed per method" in out["sentences"][-1]
