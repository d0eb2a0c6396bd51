"""The comparison as text: the Markdown table (``comparison.md``) and the per-run CSV.

How numbers, mean ± std cells and p-values are written is defined here once (the report uses it too).
"""

from __future__ import annotations

import csv
import io
from typing import Any

from flatness.core.markup import csv_cell, md_text


def format_number(v: float | None, digits: int = 4) -> str:
    """A number as the tables write it: ``digits`` significant digits, scientific when very large or small.

    Args:
        v: the number, or None.
        digits: significant digits.

    Returns:
        The text ("–" for None).
    """
    if v is None:
        return "–"
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.{digits - 1}e}"
    return f"{v:.{digits}g}"


def format_mean_std(cell: dict[str, Any]) -> str:
    """One table cell: ``mean ± std`` (a std at rounding level shows as 0), or why there is no std.

    Args:
        cell: a method's entry of a comparison row (``mean``, ``std``, ``n``).

    Returns:
        The cell's text ("–" when the method has no value for the row).
    """
    if cell["n"] == 0:
        return "–"
    if cell["std"] is None:
        return f"{format_number(cell['mean'])} (n=1, std undefined)"
    std = cell["std"] if cell["std"] > 1e-12 * max(1.0, abs(cell["mean"])) else 0.0
    return f"{format_number(cell['mean'])} ± {format_number(std, 2)}"


def format_p_holm(v: dict[str, Any]) -> str:
    """The Holm-adjusted p-value as the table shows it ("–" where there is no raw one)."""
    p = v.get("p_holm")
    if p is None:
        return "–"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def format_p(v: dict[str, Any]) -> str:
    """The raw Welch p-value as the table shows it, or ``n/a`` with the reason it is undefined.

    Args:
        v: a method-versus-baseline entry of a comparison row (``p``, ``note``).

    Returns:
        The cell's text.
    """
    if v.get("p") is None:
        return f"n/a ({v.get('note') or 'undefined'})"
    p = v["p"]
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def markdown_table(comp: dict[str, Any]) -> str:
    """The summary as Markdown: one row per quantity, methods as columns, each method vs the baseline."""
    methods, others, base = comp["methods"], comp["others"], comp["baseline"]
    head = ["quantity", "unit"] + [
        f"{md_text(m.upper())} (n={max((r['methods'][m]['n'] for r in comp['rows']), default=0)})" for m in methods
    ]
    for m in others:
        M, B = md_text(m.upper()), md_text(base.upper())
        head += [f"{M} − {B}", f"p (Welch, {M} vs {B})", "p (Holm)", f"{M} is"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in comp["rows"]:
        # labels name measures read from probe files: data, never markup
        cells = [md_text(row["label"]) + (" ↓" if row["better"] == "lower" else " ↑"), md_text(row["unit"] or "–")]
        cells += [format_mean_std(row["methods"][m]) for m in methods]
        for m in others:
            v = row["versus"][m]
            cells += [format_number(v["diff"]), format_p(v), format_p_holm(v), v["direction"] or "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + _table_notes(comp)) + "\n"


def _table_notes(comp: dict[str, Any]) -> list[str]:
    """The lines under the table: what ± and the arrows mean, the test, and what the seed count allows."""
    notes = [
        "",
        f"Mean ± {comp['std']}. ↓: lower is better (for every flatness measure, lower = flatter); ↑: higher is better.",
    ]
    if comp["others"]:
        n = min((r["methods"][m]["n"] for r in comp["rows"] for m in comp["methods"]), default=0)
        notes.append(
            f"Significance: {comp['test']}, one test per row; p (Holm): the p-values adjusted for the "
            "number of rows tested (Holm's step-down method). "
            + (
                f"With {n} seeds per method a p-value is weak evidence either way."
                if 2 <= n <= 5
                else "A p-value needs at least 2 seeds per method."
                if n < 2
                else ""
            )
        )
    return notes


def per_run_columns(comp: dict[str, Any]) -> list[tuple[str, str]]:
    """The CSV's quantity columns: ``(key, header)`` per table row, the header carrying the unit.

    Args:
        comp: the summary from ``compare``.

    Returns:
        One ``(quantity key, column header)`` pair per row, in the table's order.
    """
    return [(row["key"], row["label"] + (f" ({row['unit']})" if row["unit"] else "")) for row in comp["rows"]]


def csv_text(comp: dict[str, Any]) -> str:
    """One row per run, then mean and std per method; one column per quantity (metric + radius)."""
    cols = per_run_columns(comp)
    buf = io.StringIO()
    writer = csv.writer(buf)
    # names come from other people's files: a cell never starts a spreadsheet formula
    writer.writerow(["row", "method", "seed", "source"] + [csv_cell(label) for _, label in cols])
    for run in comp["runs"]:
        names = [csv_cell(run[key]) for key in ("method", "seed", "source")]
        writer.writerow(["run", *names] + [_csv(run["values"].get(k)) for k, _ in cols])
    for m in comp["methods"]:
        for stat in ("mean", "std", "n"):
            writer.writerow([stat, csv_cell(m), "", ""] + [_csv(row["methods"][m][stat]) for row in comp["rows"]])
    for m in comp["others"]:
        writer.writerow(
            [f"diff {m}-{comp['baseline']}", m, "", ""] + [_csv(row["versus"][m]["diff"]) for row in comp["rows"]]
        )
        writer.writerow(
            [f"welch_p {m}-{comp['baseline']}", m, "", ""] + [_csv(row["versus"][m]["p"]) for row in comp["rows"]]
        )
        writer.writerow(
            [f"holm_p {m}-{comp['baseline']}", m, "", ""]
            + [_csv(row["versus"][m].get("p_holm")) for row in comp["rows"]]
        )
        for key in PAIRED_CSV_ROWS:  # the seed-by-seed comparison (flatness.study.significance.paired)
            writer.writerow(
                [f"paired_{key} {m}-{comp['baseline']}", m, "", ""]
                + [_csv((row["versus"][m].get("paired") or {}).get(key)) for row in comp["rows"]]
            )
    return buf.getvalue()


PAIRED_CSV_ROWS = ("diff", "ci_low", "ci_high", "p_t", "p_t_holm", "p_wilcoxon", "p_wilcoxon_holm", "wins", "n")


def _csv(v) -> str:
    return "" if v is None else (repr(v) if isinstance(v, float) else str(v))
