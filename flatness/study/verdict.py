"""The study's verdict, per protocol, on the primary measures declared before the data.

For each method against the baseline (ERM), from the paired statistics of the comparison
(``flatness.study.significance.paired``):

* the flat-minima claim *held* under a protocol when the method's mean paired difference is below 0
  (flatter) on more than half of the primary measures (``flatness.study.quantities.PRIMARY_RULE``);
  a difference counts as significant when its Holm-adjusted paired t-test p (within the primaries)
  is below ``ALPHA``;
* generalisation: the paired difference in test accuracy, with its interval and p-values;
* across the methods: generalisation *follows* flatness under a protocol when every method that was
  flatter (by the rule above) generalised better than ERM and every method that was not, did not.

Every other flatness measure is exploratory: shown in the tables, not part of the verdict.
"""

from __future__ import annotations

from typing import Any

from flatness.study.tables import format_number

ALPHA = 0.05
UNDERFIT_ACCURACY = 99.0  # % train accuracy (probe) below which a run is called underfit


def _p(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2g}" if value >= 1e-3 else f"{value:.1e}"


def _interval(t: dict[str, Any]) -> str:
    if t.get("ci_low") is None:
        return ""
    return f" [{format_number(t['ci_low'])}, {format_number(t['ci_high'])}]"


def describe_paired(row: dict[str, Any], method: str) -> str:
    """One row's paired result in words: difference, interval, seeds won, p-values."""
    t = row["versus"][method]["paired"]
    word = "flatter" if row["flatness"] else "better"
    return (
        f"{row['label']}: {format_number(t['diff'])}{_interval(t)}, {word} in {t['wins']}/{t['n']} seeds, "
        f"paired t p = {_p(t['p_t'])} (Holm {_p(t.get('p_t_holm'))}), Wilcoxon p = {_p(t['p_wilcoxon'])}"
    )


def primary_verdict(comp: dict[str, Any], method: str, protocol: str) -> dict[str, Any]:
    """The verdict on ``method`` versus the baseline under one protocol, as data and sentences.

    Args:
        comp: the protocol's comparison summary (``flatness.study.compare.compare``).
        method: the method judged.
        protocol: the protocol's name in the sentences (e.g. "fixed budget").

    Returns:
        ``{"method", "protocol", "available", "held", "flatter", "sharper", "significant_flatter",
        "significant_sharper", "primaries", "invariant_flatter", "invariant", "test_acc_diff",
        "test_acc_better", "seeds", "sentences", "details"}``.
    """
    M = method.upper()
    base = comp.get("baseline")
    if not base or method not in comp.get("others", []):
        return {"method": method, "protocol": protocol, "available": False, "sentences": [], "details": []}
    rows = [r for r in comp["rows"] if r.get("primary") and r["versus"][method]["paired"]["diff"] is not None]
    flatter = [r for r in rows if r["versus"][method]["paired"]["diff"] < 0]
    sharper = [r for r in rows if r["versus"][method]["paired"]["diff"] > 0]

    def significant(items):
        return [r for r in items if (r["versus"][method]["paired"].get("p_t_holm") or 1.0) < ALPHA]

    invariant = [r for r in rows if r.get("invariant")]
    held = bool(rows) and len(flatter) > len(rows) / 2
    acc = next((r for r in comp["rows"] if r["key"] == "test_acc"), None)
    acc_t = acc["versus"][method]["paired"] if acc else {}
    n = max((r["versus"][method]["paired"]["n"] for r in rows), default=0)
    sentences = [
        f"**{protocol}: {M} was flatter than {base.upper()} on {len(flatter)} of {len(rows)} primary measures** "
        f"(paired over {n} seeds; claim {'held' if held else 'did not hold'}: rule > half), "
        f"{len([r for r in flatter if r.get('invariant')])} of {len(invariant)} scale-invariant ones; "
        f"significant after Holm (paired t): {len(significant(flatter))} for, {len(significant(sharper))} against."
    ]
    if acc_t.get("diff") is not None:
        sentences.append(
            f"{protocol}: test accuracy {M} − {base.upper()} = {format_number(acc_t['diff'])} pp"
            f"{_interval(acc_t)}, better in {acc_t['wins']}/{acc_t['n']} seeds, paired t p = {_p(acc_t['p_t'])}, "
            f"Wilcoxon p = {_p(acc_t['p_wilcoxon'])}."
        )
    return {
        "method": method,
        "protocol": protocol,
        "available": True,
        "held": held,
        "flatter": [r["key"] for r in flatter],
        "sharper": [r["key"] for r in sharper],
        "significant_flatter": [r["key"] for r in significant(flatter)],
        "significant_sharper": [r["key"] for r in significant(sharper)],
        "primaries": len(rows),
        "invariant": len(invariant),
        "invariant_flatter": len([r for r in flatter if r.get("invariant")]),
        "test_acc_diff": acc_t.get("diff"),
        "test_acc_better": None if acc_t.get("diff") is None else acc_t["diff"] > 0,
        "seeds": n,
        "sentences": sentences,
        "details": [describe_paired(r, method) for r in rows] + ([describe_paired(acc, method)] if acc else []),
    }


def follows_sentence(verdicts: list[dict[str, Any]], protocol: str) -> str | None:
    """Whether generalisation followed flatness across the methods under one protocol, in one sentence.

    Args:
        verdicts: ``primary_verdict`` of every compared method under the protocol.
        protocol: the protocol's name.

    Returns:
        The sentence, or None when no method could be judged on both.
    """
    judged = [v for v in verdicts if v.get("available") and v.get("test_acc_better") is not None and v["primaries"]]
    if not judged:
        return None
    agree = all(v["held"] == v["test_acc_better"] for v in judged)
    parts = [
        f"{v['method'].upper()} {'flatter' if v['held'] else 'not flatter'} ({len(v['flatter'])}/{v['primaries']} "
        f"primaries) and {'more' if v['test_acc_better'] else 'less'} accurate ({format_number(v['test_acc_diff'])} pp)"
        for v in judged
    ]
    names = ", ".join(["ERM"] + [v["method"].upper() for v in judged])
    return (
        f"**{protocol}: across {names}, generalisation {'followed' if agree else 'did not follow'} flatness**: "
        + "; ".join(parts)
        + "."
    )


def underfit_runs(records) -> list[str]:
    """Labels of the runs whose final train accuracy (probe, else logged) is below ``UNDERFIT_ACCURACY``."""
    out = []
    for r in records:
        acc = r.values.get("probe_acc", r.values.get("train_acc"))
        if acc is not None and acc < UNDERFIT_ACCURACY:
            out.append(f"{r.label} ({acc:.1f} %)")
    return out


def study_verdicts(protocols: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every method's verdict under every protocol, then one "follows" sentence per protocol.

    Args:
        protocols: ``{"name", "comp"}`` per protocol (``comp`` None when it has no runs).

    Returns:
        Verdict dicts (each with ``sentences``), as the command prints and the report lists them.
    """
    out = []
    for p in protocols:
        comp = p["comp"]
        if comp is None:
            out.append({"protocol": p["name"], "available": False, "sentences": [f"{p['name']}: no run to compare."]})
            continue
        verdicts = [primary_verdict(comp, m, p["name"]) for m in comp.get("others", [])]
        out += verdicts
        sentence = follows_sentence(verdicts, p["name"])
        if sentence:
            out.append({"protocol": p["name"], "available": True, "follows": True, "sentences": [sentence]})
    return out
