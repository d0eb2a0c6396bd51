"""flatness.study.verdict: the verdict on the primary measures, from a hand-made comparison summary.

Each summary is built here with known paired differences and Holm p-values, so the counts (flatter,
sharper, significant), the rule (more than half of the primaries flatter), the "follows" sentence and
the underfit list are checked against values worked out by hand.
"""

from types import SimpleNamespace

from flatness.study.verdict import (
    ALPHA,
    UNDERFIT_ACCURACY,
    describe_paired,
    follows_sentence,
    primary_verdict,
    study_verdicts,
    underfit_runs,
)


def _paired(diff, p_holm=None, n=3, wins=2, ci=(None, None), p_t=0.2, p_w=0.25):
    return {
        "diff": diff,
        "ci_low": ci[0],
        "ci_high": ci[1],
        "wins": wins,
        "n": n,
        "p_t": p_t,
        "p_t_holm": p_holm,
        "p_wilcoxon": p_w,
    }


def _row(key, diff, p_holm=None, primary=True, invariant=False, flatness=True, method="amp", **paired):
    return {
        "key": key,
        "label": key.replace("_", " "),
        "primary": primary,
        "invariant": invariant,
        "flatness": flatness,
        "versus": {method: {"paired": _paired(diff, p_holm, **paired)}},
    }


def _comp(rows, others=("amp",)):
    return {"baseline": "erm", "others": list(others), "rows": rows}


ROWS = [
    _row("lambda_1", -2.0, p_holm=0.01),  # flatter, significant
    _row("trace", -1.0, p_holm=0.2, invariant=True),  # flatter, not significant
    _row("worst_case", 0.5, p_holm=0.001),  # sharper, significant
    _row("pac_bayes", None),  # no paired difference: not counted
    _row("keskar", -3.0, p_holm=0.0, primary=False),  # exploratory: never in the verdict
    _row("test_acc", 1.25, flatness=False, primary=False, ci=(0.5, 2.0), wins=3),
]


def test_the_verdict_counts_the_primaries_with_a_difference_and_holm_significance_only():
    v = primary_verdict(_comp(ROWS), "amp", "fixed budget")
    assert v["available"] and v["primaries"] == 3 and v["seeds"] == 3
    assert v["flatter"] == ["lambda_1", "trace"] and v["sharper"] == ["worst_case"]
    assert v["significant_flatter"] == ["lambda_1"] and v["significant_sharper"] == ["worst_case"]
    assert (v["invariant"], v["invariant_flatter"]) == (1, 1)
    assert v["held"] is True  # 2 of 3 > half
    assert v["test_acc_diff"] == 1.25 and v["test_acc_better"] is True
    assert v["sentences"][0] == (
        "**fixed budget: AMP was flatter than ERM on 2 of 3 primary measures** (paired over 3 seeds; claim held: "
        "rule > half), 1 of 1 scale-invariant ones; significant after Holm (paired t): 1 for, 1 against."
    )
    assert v["sentences"][1] == (
        "fixed budget: test accuracy AMP − ERM = 1.25 pp [0.5, 2], better in 3/3 seeds, paired t p = 0.2, "
        "Wilcoxon p = 0.25."
    )
    assert len(v["details"]) == 3 + 1  # the primaries with a difference, then test accuracy


def test_exactly_half_flatter_does_not_hold_and_a_p_at_alpha_is_not_significant():
    rows = [_row("lambda_1", -1.0, p_holm=ALPHA), _row("trace", 1.0, p_holm=None)]
    v = primary_verdict(_comp(rows), "amp", "p")
    assert v["held"] is False and v["significant_flatter"] == [] and v["significant_sharper"] == []
    assert "claim did not hold" in v["sentences"][0]
    assert v["test_acc_diff"] is None and v["test_acc_better"] is None and len(v["sentences"]) == 1


def test_a_method_not_compared_or_a_summary_without_baseline_is_unavailable():
    for comp, method in [(_comp(ROWS), "sam"), ({"others": ["amp"], "rows": ROWS}, "amp")]:
        assert primary_verdict(comp, method, "p") == {
            "method": method,
            "protocol": "p",
            "available": False,
            "sentences": [],
            "details": [],
        }


def test_describe_paired_words_a_row_with_its_interval_and_p_values():
    row = _row("lambda_1", -0.00012, p_holm=0.00004, ci=(-0.5, 0.25), p_t=0.0123, p_w=None)
    assert describe_paired(row, "amp") == (
        "lambda 1: -1.200e-04 [-0.5, 0.25], flatter in 2/3 seeds, paired t p = 0.012 (Holm 4.0e-05), Wilcoxon p = n/a"
    )
    acc = _row("test_acc", 2.0, flatness=False)
    assert describe_paired(acc, "amp").startswith("test acc: 2, better in 2/3 seeds")


def _verdict(method, held, better, flatter=2, primaries=3, diff=1.0):
    return {
        "method": method,
        "available": True,
        "held": held,
        "test_acc_better": better,
        "test_acc_diff": diff if better else -diff,
        "flatter": ["m"] * flatter,
        "primaries": primaries,
    }


def test_generalisation_follows_flatness_only_when_every_judged_method_agrees():
    agree = [_verdict("amp", True, True), _verdict("sam", False, False, flatter=1)]
    assert follows_sentence(agree, "matched loss") == (
        "**matched loss: across ERM, AMP, SAM, generalisation followed flatness**: AMP flatter (2/3 primaries) "
        "and more accurate (1 pp); SAM not flatter (1/3 primaries) and less accurate (-1 pp)."
    )
    disagree = [_verdict("amp", True, False)]
    assert "generalisation did not follow flatness" in follows_sentence(disagree, "p")
    unjudged = [{"available": False}, {**_verdict("amp", True, None)}, _verdict("sam", True, True, primaries=0)]
    assert follows_sentence(unjudged, "p") is None


def test_study_verdicts_list_each_method_then_one_follows_sentence_per_protocol():
    protocols = [{"name": "fixed budget", "comp": _comp(ROWS)}, {"name": "matched loss", "comp": None}]
    out = study_verdicts(protocols)
    assert [v.get("method") for v in out] == ["amp", None, None]
    assert out[1]["follows"] is True and "generalisation followed flatness" in out[1]["sentences"][0]
    assert out[2] == {"protocol": "matched loss", "available": False, "sentences": ["matched loss: no run to compare."]}


def test_underfit_runs_use_the_probe_accuracy_else_the_logged_one():
    records = [
        SimpleNamespace(label="erm s0", values={"probe_acc": 98.94, "train_acc": 100.0}),
        SimpleNamespace(label="amp s0", values={"train_acc": 97.0}),
        SimpleNamespace(label="sam s0", values={"probe_acc": UNDERFIT_ACCURACY}),
        SimpleNamespace(label="erm s1", values={}),
    ]
    assert underfit_runs(records) == ["erm s0 (98.9 %)", "amp s0 (97.0 %)"]
