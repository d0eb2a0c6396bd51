"""Side-by-side comparison of training methods: ``compare_inputs(...)`` behind ``flatness compare``.

Runs are grouped by method (ERM, AMP, SAM); every quantity is summarised as mean ± sample standard
deviation (ddof = 1) over seeds, and each method is compared with the baseline (ERM) by the
difference of means and Welch's unequal-variance t-test (``scipy.stats.ttest_ind(equal_var=False)``).

This module builds the summary (``compare``) and drives the command (``compare_inputs``); the parts
live in their own modules:

* ``flatness.study.runs``: reading run folders and probe JSONs, the checks before pooling seeds;
* ``flatness.study.quantities``: the table's rows and every number of one run (their definitions);
* ``flatness.study.significance``: mean ± std, Welch's test, Holm's adjustment in its families;
* ``flatness.study.tables``: ``comparison.md`` and the CSV;
* ``flatness.study.comparison_figures``: the comparison figures.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from flatness.core.errors import FlatnessError
from flatness.core.fileio import atomic_write_json, atomic_write_text
from flatness.core.paths import check_paths
from flatness.study.comparison_figures import compare_figures
from flatness.study.quantities import Quantity, quantities_for
from flatness.study.run_record import RunRecord
from flatness.study.runs import BASELINE, collect_runs, sorted_methods
from flatness.study.significance import (
    HOLM_FAMILIES,
    PAIRED_FAMILIES,
    add_holm,
    add_paired_holm,
    mean_std,
    paired,
    versus_baseline,
)
from flatness.study.tables import csv_text, markdown_table


def compare(records: Sequence[RunRecord], baseline: str = BASELINE) -> dict[str, Any]:
    """The summary of the runs, as ``comparison.json`` holds it.

    Args:
        records: the runs, their ``values`` filled (``collect_runs`` does that).
        baseline: the method every other is compared with.

    Returns:
        ``{"baseline", "methods", "others", "rows", "runs", ...}``: per quantity (row), per method
        mean/std/n/values, and each other method minus the baseline with Welch's and Holm's p-values.
    """
    if not records:
        raise FlatnessError("nothing to compare: no runs or probes found in the inputs")
    methods = sorted_methods(r.method for r in records)
    others = [m for m in methods if m != baseline] if baseline in methods else []
    rows = [_row(q, records, methods, others, baseline) for q in quantities_for(records)]
    add_holm(rows, others)
    add_paired_holm(rows, others)
    runs = [
        {
            "label": r.label,
            "method": r.method,
            "seed": r.seed,
            "source": r.source,
            "probe": r.probe_path,
            "values": r.values,
        }
        for r in records
    ]
    return {
        "baseline": baseline if others else None,
        "methods": methods,
        "others": others,
        "rows": rows,
        "runs": runs,
        "test": "Welch's t-test (scipy.stats.ttest_ind, equal_var=False), two-sided",
        "std": "sample standard deviation over seeds (ddof = 1)",
        "adjustment": HOLM_FAMILIES,
        "paired_test": "per-seed differences (method − baseline, the seeds both have): mean with a 95 % percentile "
        "bootstrap interval, paired t-test (scipy.stats.ttest_rel), Wilcoxon signed-rank (scipy.stats.wilcoxon, "
        "zeros dropped), two-sided",
        "paired_adjustment": PAIRED_FAMILIES,
    }


def _row(
    q: Quantity, records: Sequence[RunRecord], methods: Sequence[str], others: Sequence[str], baseline: str
) -> dict[str, Any]:
    """One row of the summary: the quantity, each method's mean ± std, each other method vs the baseline."""
    row: dict[str, Any] = {
        "key": q.key,
        "label": q.label,
        "unit": q.unit,
        "how": q.how,
        "better": q.better,
        "flatness": q.flatness,
        "invariant": q.invariant,
        "primary": q.primary,
        "methods": {},
        "versus": {},
    }
    for m in methods:
        vals = [r.values.get(q.key) for r in records if r.method == m]
        vals = [v for v in vals if v is not None]
        mean, std, n = mean_std(vals)
        row["methods"][m] = {"mean": mean, "std": std, "n": n, "values": vals}
    by_seed = {m: {r.seed: r.values[q.key] for r in records if r.method == m and q.key in r.values} for m in methods}
    for m in others:
        row["versus"][m] = versus_baseline(q, row["methods"][baseline], row["methods"][m])
        row["versus"][m]["paired"] = paired(q, by_seed[baseline], by_seed[m])
    return row


def compare_inputs(
    inputs: Sequence[str],
    out_dir: str | None = None,
    json_path: str | None = None,
    csv_path: str | None = None,
    figures: bool = True,
    fmt: str = "png",
    force: bool = False,
    baseline: str = BASELINE,
) -> dict[str, Any]:
    """Collect, summarise, and write what was asked (behind ``flatness compare``).

    Args:
        inputs: run folders, probe JSON files and surface .h5 files.
        out_dir: folder for ``comparison.md`` and the figures; None writes neither.
        json_path: where to write the summary as JSON, or None.
        csv_path: where to write the per-run CSV, or None.
        figures: draw the figures (with ``out_dir``).
        fmt: the figures' image format.
        force: replace output files that exist.
        baseline: the method every other is compared with.

    Returns:
        The summary of ``compare`` with ``markdown`` (the table), ``files`` (what was written) and
        ``records`` (the runs).
    """
    outputs = {
        "--out": out_dir,
        "--json": json_path,
        "--csv": csv_path,
        "--out's comparison.md": os.path.join(out_dir, "comparison.md") if out_dir and os.path.isdir(out_dir) else None,
    }
    check_paths({"input": list(inputs)}, outputs, folders=["--out"])
    records, _extra = collect_runs(inputs)
    comp = compare(records, baseline=baseline)
    md = markdown_table(comp)
    targets = []
    if out_dir:
        targets.append(os.path.join(out_dir, "comparison.md"))
    targets += [p for p in (json_path, csv_path) if p]
    if not force:
        for p in targets:
            if os.path.exists(p):
                raise FlatnessError(f"{p} exists; pass --force to replace it")
    files: dict[str, str] = {}
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        atomic_write_text(targets[0], "# Comparison\n\n" + md)
        files["markdown"] = targets[0]
        if figures:
            files.update(compare_figures(records, out_dir, fmt=fmt, force=force))
    if json_path:
        atomic_write_json(json_path, comp)
        files["json"] = json_path
    if csv_path:
        atomic_write_text(csv_path, csv_text(comp))
        files["csv"] = csv_path
    comp["markdown"] = md
    comp["files"] = files
    comp["records"] = records
    return comp
