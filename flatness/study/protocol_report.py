"""The report's verdict section: the primary measures under both protocols, side by side.

Lists the verdict sentences (``flatness.study.verdict``), a table with one row per primary measure
(and test accuracy) and one column group per protocol and method (mean paired difference with its 95 %
bootstrap interval, seeds won, Holm-adjusted paired t p), the runs that never reached the match loss
(left out of that protocol), the matched checkpoints' epochs, and a warning on underfit runs.
"""

from __future__ import annotations

from typing import Any

from flatness.study.quantities import PRIMARY_RULE
from flatness.study.tables import format_number
from flatness.study.verdict import UNDERFIT_ACCURACY, underfit_runs


def _cell(row: dict[str, Any] | None, method: str) -> str:
    if row is None or method not in row["versus"]:
        return "–"
    t = row["versus"][method]["paired"]
    if t["diff"] is None:
        return "–"
    interval = ""
    if t["ci_low"] is not None:
        interval = f" [{format_number(t['ci_low'], 3)}, {format_number(t['ci_high'], 3)}]"
    p = t.get("p_t_holm")
    p_text = "n/a" if p is None else (f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}")
    return f"{format_number(t['diff'], 3)}{interval}; {t['wins']}/{t['n']}; p {p_text}"


def primary_table(comp: dict[str, Any], comp_matched: dict[str, Any] | None) -> list[str]:
    """The primaries (and test accuracy) under both protocols, one column per protocol and method."""
    others = comp.get("others", [])
    keys = [r["key"] for r in comp["rows"] if r.get("primary")] + ["test_acc"]
    by_key = {r["key"]: r for r in comp["rows"]}
    matched_by_key = {r["key"]: r for r in (comp_matched or {}).get("rows", [])}
    head = ["measure", "invariant"] + [f"{m.upper()} − ERM, fixed budget" for m in others]
    head += [f"{m.upper()} − ERM, matched loss" for m in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        row = by_key.get(key) or matched_by_key.get(key)
        if row is None:
            continue
        invariant = {True: "yes", False: "no"}.get(row.get("invariant"), "–")
        cells = [row["label"].replace("|", "\\|") + (" ↓" if row["better"] == "lower" else " ↑"), invariant]
        cells += [_cell(by_key.get(key), m) for m in others]
        cells += [_cell(matched_by_key.get(key), m) for m in others]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def primary_section(
    verdicts: list[dict[str, Any]], comp: dict[str, Any], records, protocols: dict[str, Any]
) -> list[str]:
    """The verdict section's Markdown lines (before the exploratory all-measures verdict)."""
    L = [f"Primary measures, declared before the data: {PRIMARY_RULE}. Every other flatness row is exploratory.", ""]
    for v in verdicts:
        L += [f"- {s}" for s in v["sentences"]]
    L += [
        "",
        "Each cell: mean paired difference (method − ERM, seed by seed) [95 % bootstrap interval]; seeds in which "
        "the method is flatter (or, for test accuracy, better) out of the paired seeds; paired t-test p, "
        "Holm-adjusted within the primaries. Lower = flatter. invariant: unchanged by a function-preserving "
        "rescaling of the layers.",
        "",
    ]
    L += primary_table(comp, protocols.get("comp_matched")) + [""]
    matched, unreached = protocols.get("matched") or [], protocols.get("unreached") or []
    if matched:
        epochs = ", ".join(f"{r.label}: {(r.probe or {}).get('checkpoint', {}).get('epoch')}" for r in matched)
        L += [f"Matched-loss checkpoints (epoch of each): {epochs}.", ""]
    if unreached:
        L += [
            f"**Never reached the match loss, left out of the matched-loss protocol:** "
            f"{', '.join(r.label for r in unreached)}.",
            "",
        ]
    underfit = underfit_runs(records)
    if underfit:
        L += [
            f"**Warning: underfit runs** (train accuracy below {UNDERFIT_ACCURACY:g} % at the end): "
            f"{', '.join(underfit)}. Flatness of an underfit model says little about the flat-minima claim.",
            "",
        ]
    for v in verdicts:
        if v.get("details"):
            L += [f"Details, {v['protocol'].lower()}, {v['method'].upper()}:", ""] + [f"- {d}" for d in v["details"]]
            L.append("")
    return L
