"""Side-by-side comparison of training methods: ``compare_inputs(...)`` behind ``flatness compare``.

Inputs are run folders (``config.json``, ``metrics.jsonl`` and the probe JSONs found inside, e.g.
``DIR/probe.json``; surface files inside are used for the figures), probe JSON files, or surface .h5
files. Runs are grouped by method (ERM, AMP, SAM); every quantity is summarised as mean ± sample
standard deviation (ddof = 1) over seeds, and each method is compared with the baseline (ERM) by the
difference of means and Welch's unequal-variance t-test (``scipy.stats.ttest_ind(equal_var=False)``).

Definitions used in the table (see also ``QUANTITIES``):

* test accuracy: the last epoch's ``test_acc`` in ``metrics.jsonl`` (the full test split, as training
  evaluated it); without a metrics file, the probe's accuracy when the probe was made on the test split;
* generalisation gap (accuracy): train accuracy − test accuracy, both from the last epoch of
  ``metrics.jsonl``, in percentage points; (loss): test loss − train loss, in nats;
* λ1..λ5: the top Hessian eigenvalues of the probe's loss; trace: Hutchinson's estimate;
* sharpness: each metric of the probe's ``sharpness`` list, one quantity per metric and radius.

For every flatness quantity, lower means flatter.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flatness.core.errors import FlatnessError
from flatness.core.fileio import atomic_write_json, atomic_write_text
from flatness.core.paths import check_paths
from flatness.formats.checkpoint import CONFIG, METRICS, read_metrics, read_run_config

BASELINE = "erm"
METHOD_ORDER = ("erm", "amp", "sam")
PROBE_NAMES = ("probe.json", "probe-train.json")


@dataclass
class RunRecord:
    """One trained run (one method, one seed) and what was measured on it."""

    source: str
    method: str
    seed: int | None = None
    run_dir: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    probe: dict[str, Any] | None = None
    probe_path: str | None = None
    surfaces: list[str] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The run as tables and legends name it, e.g. ``AMP seed 1`` (just ``AMP`` without a seed)."""
        return f"{self.method.upper()}" + (f" seed {self.seed}" if self.seed is not None else "")


# --------------------------------------------------------------------------- quantities


@dataclass
class Quantity:
    """One row of the comparison table: what is measured, in which unit, how, and which way is better.

    ``better`` says which direction of a difference counts as an improvement; ``flatness`` marks the
    flatness/sharpness measures, whose improvements are reported as "flatter" and adjusted together.
    """

    key: str
    label: str
    unit: str
    how: str
    better: str  # "lower" or "higher"
    flatness: bool = False  # a flatness/sharpness measure (lower = flatter)


BASE_QUANTITIES = [
    Quantity("test_acc", "test accuracy", "%", "last epoch of training, full test split", "higher"),
    Quantity(
        "train_acc",
        "train accuracy (logged)",
        "%",
        "last epoch's running mean during training (train mode, weights changing)",
        "higher",
    ),
    Quantity(
        "probe_acc", "train accuracy (probe)", "%", "final weights, eval mode, on the training probe data", "higher"
    ),
    Quantity(
        "gap_acc",
        "generalisation gap (accuracy)",
        "pp",
        "train accuracy (probe, eval mode; else the logged one) − test accuracy",
        "lower",
    ),
    Quantity(
        "gap_loss",
        "generalisation gap (loss)",
        "nats",
        "test loss − train loss (probe, eval mode; else the logged one)",
        "lower",
    ),
    Quantity("probe_loss", "train loss (probe)", "nats", "mean cross-entropy on the probe data, eval mode", "lower"),
]


def _num(value) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _fmt_radius(v) -> str:
    return f"{float(v):g}" if _num(v) is not None else str(v)


def sharpness_key(entry: dict[str, Any]) -> str:
    """One name per metric and radius, e.g. ``worst_l2 ρ=0.05`` or ``adaptive_worst ρ=0.5 p=inf``."""
    name = str(entry.get("metric", "sharpness"))
    parts = [name]
    if entry.get("rho") is not None:
        parts.append(f"ρ={_fmt_radius(entry['rho'])}")
    if entry.get("epsilon") is not None:
        parts.append(f"ε={_fmt_radius(entry['epsilon'])}")
    if entry.get("p") is not None and "worst" in name:  # c (1 or |θ|) is in the metric's name already
        parts.append(f"p={entry['p']}")
    return " ".join(parts)


def sharpness_unit(metric: str) -> tuple[str, str]:
    """The unit and a one-line definition of a sharpness metric, for the table's rows and notes.

    Args:
        metric: the metric's name as the probe JSON stores it (matched by substrings, any case).

    Returns:
        ``(unit, how)``: e.g. ``("nats", "max of L(θ+δ) − L(θ) over the ball, ...")``.
    """
    m = metric.lower()
    if "pac" in m:
        return "1/σ²", "PAC-Bayes flatness 1/σ*² (bisection on σ with Monte-Carlo draws)"
    if m.startswith("eps") or "keskar" in m:
        return "%", "ε-sharpness: 100·(max over the box of L(θ+y) − L(θ))/(1+L(θ))"
    if "avg" in m or "average" in m:
        return "nats", "mean of L(θ+δ) − L(θ) over Gaussian draws"
    if "adaptive" in m:
        return "nats", "max of L(θ+δ) − L(θ) over ‖δ/|θ|‖_p ≤ ρ, projected gradient ascent"
    return "nats", "max of L(θ+δ) − L(θ) over the ball, projected gradient ascent"


def record_values(rec: RunRecord) -> dict[str, float]:
    """Every number of one run, by quantity key (missing quantities are left out)."""
    out: dict[str, float] = {}
    last = rec.epochs[-1] if rec.epochs else {}
    p = rec.probe or {}
    for key in ("test_acc", "train_acc"):
        v = _num(last.get(key))
        if v is not None:
            out[key] = 100.0 * v
    if "test_acc" not in out and (p.get("data") or {}).get("split") == "test" and _num(p.get("accuracy")) is not None:
        out["test_acc"] = 100.0 * float(p["accuracy"])
    on_train = (p.get("data") or {}).get("split") == "train"
    if on_train and _num(p.get("accuracy")) is not None:
        out["probe_acc"] = 100.0 * float(p["accuracy"])
    if _num(p.get("loss")) is not None:
        out["probe_loss"] = float(p["loss"])
    # the gap uses the final weights in eval mode on the training probe data when there is such a probe,
    # else the training log's running mean over the last epoch
    train_acc = out.get("probe_acc", out.get("train_acc"))
    if train_acc is not None and "test_acc" in out:
        out["gap_acc"] = train_acc - out["test_acc"]
    tl = _num(last.get("test_loss"))
    trl = float(p["loss"]) if on_train and _num(p.get("loss")) is not None else _num(last.get("train_loss"))
    if tl is not None and trl is not None:
        out["gap_loss"] = tl - trl
    if p:
        eig = (p.get("hessian") or {}).get("eigenvalues") or []
        for i, lam in enumerate(eig[:5]):
            if _num(lam) is not None:
                out[f"lambda_{i + 1}"] = float(lam)
        trace = (p.get("trace") or {}).get("estimate")
        if _num(trace) is not None:
            out["trace"] = float(trace)
        for entry in p.get("sharpness") or []:
            v = _num(entry.get("value"))
            if v is not None:
                out["sharp:" + sharpness_key(entry)] = v
    return out


def quantities_for(records: Sequence[RunRecord]) -> list[Quantity]:
    """The table's rows, in a fixed order, for the quantities any record has."""
    present = set()
    for r in records:
        present.update(r.values)
    out = [q for q in BASE_QUANTITIES if q.key in present]
    for i in range(1, 6):
        if f"lambda_{i}" in present:
            out.append(
                Quantity(
                    f"lambda_{i}",
                    "λmax" if i == 1 else f"λ{i}",
                    "",
                    f"Hessian eigenvalue #{i} of the probe loss",
                    "lower",
                    True,
                )
            )
    if "trace" in present:
        out.append(Quantity("trace", "Hessian trace", "", "Hutchinson estimate over Rademacher vectors", "lower", True))
    sharp = []
    for r in records:
        for entry in (r.probe or {}).get("sharpness") or []:
            key = "sharp:" + sharpness_key(entry)
            if key in present and key not in [s.key for s in sharp]:
                unit, how = sharpness_unit(str(entry.get("metric", "")))
                sharp.append(Quantity(key, sharpness_key(entry), unit, how, "lower", True))
    return out + sharp


# --------------------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    """(mean, sample std with ddof=1 or None when n < 2, n)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
    if arr.size == 0:
        return None, None, 0
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None), int(arr.size)


def welch(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Welch's t-test of mean(b) vs mean(a): {t, p, note}; p is None when it is undefined."""
    a = [v for v in a if v is not None and math.isfinite(v)]
    b = [v for v in b if v is not None and math.isfinite(v)]
    if len(a) < 2 or len(b) < 2:
        return {"t": None, "p": None, "note": "needs ≥ 2 seeds per method"}
    from scipy import stats

    scale = max(1.0, float(np.max(np.abs(a + b))))
    if np.ptp(a) <= 1e-12 * scale and np.ptp(b) <= 1e-12 * scale:  # equal up to rounding
        return {"t": None, "p": None, "note": "zero variance in both groups"}
    import warnings

    with warnings.catch_warnings():  # nearly equal values: scipy warns, the p-value is still reported
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(b, a, equal_var=False)
    t, p = float(res.statistic), float(res.pvalue)
    return {"t": t if math.isfinite(t) else None, "p": p if math.isfinite(p) else None, "note": ""}


def compare(records: Sequence[RunRecord], baseline: str = BASELINE) -> dict[str, Any]:
    """The summary: per quantity, per method mean/std/n/values, and each method minus the baseline."""
    if not records:
        raise FlatnessError("nothing to compare: no runs or probes found in the inputs")
    methods = sorted(
        {r.method for r in records},
        key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m),
    )
    others = [m for m in methods if m != baseline] if baseline in methods else []
    rows = []
    for q in quantities_for(records):
        row: dict[str, Any] = {
            "key": q.key,
            "label": q.label,
            "unit": q.unit,
            "how": q.how,
            "better": q.better,
            "flatness": q.flatness,
            "methods": {},
            "versus": {},
        }
        for m in methods:
            vals = [r.values.get(q.key) for r in records if r.method == m]
            vals = [v for v in vals if v is not None]
            mean, std, n = mean_std(vals)
            row["methods"][m] = {"mean": mean, "std": std, "n": n, "values": vals}
        for m in others:
            a, b = row["methods"][baseline], row["methods"][m]
            diff = b["mean"] - a["mean"] if a["mean"] is not None and b["mean"] is not None else None
            test = welch(a["values"], b["values"])
            if diff is None or diff == 0:
                direction = None
            elif q.better == "lower":
                direction = (
                    ("flatter" if q.flatness else "better") if diff < 0 else ("sharper" if q.flatness else "worse")
                )
            else:
                direction = "better" if diff > 0 else "worse"
            row["versus"][m] = {"diff": diff, **test, "direction": direction}
        rows.append(row)
    _add_holm(rows, others)
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
    }


HOLM_FAMILIES = (
    "Holm's step-down adjustment (p_holm), per compared method, within three families: the flatness "
    "measures (the question 'is it flatter?'); test accuracy alone (the one pre-specified endpoint of "
    "'does it generalise better?', so its adjusted p equals the raw one); every other row (descriptive)"
)


def holm_family(row: dict[str, Any]) -> str:
    """Which family of tests a comparison row belongs to (``HOLM_FAMILIES``)."""
    if row["flatness"]:
        return "flatness"
    return "generalisation" if row["key"] == "test_acc" else "descriptive"


def _add_holm(rows: list[dict[str, Any]], others: Sequence[str]) -> None:
    """Each method's Holm-adjusted p-values as ``p_holm``, adjusted within each row's family."""
    from flatness.generalization.correlation import holm

    for family in ("flatness", "generalisation", "descriptive"):
        members = [row for row in rows if holm_family(row) == family]
        for m in others:
            for row, adjusted in zip(members, holm([row["versus"][m]["p"] for row in members])):
                row["versus"][m]["p_holm"] = adjusted


# --------------------------------------------------------------------------- collecting inputs


def _load_probe(path: str) -> dict[str, Any]:
    from flatness.plot.loading import load_probe

    return load_probe(path)


def _is_probe_json(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as handle:
            obj = json.load(handle)
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and "hessian" in obj and "checkpoint" in obj


def _find_probe(run_dir: str) -> str | None:
    for name in PROBE_NAMES:
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            return path
    for path in sorted(glob.glob(os.path.join(run_dir, "*.json"))):
        if os.path.basename(path) != CONFIG and _is_probe_json(path):
            return path
    return None


def _find_surfaces(run_dir: str) -> list[str]:
    out = []
    for path in sorted(glob.glob(os.path.join(run_dir, "*.h5"))):
        try:
            import h5py

            with h5py.File(path, "r") as f:
                if "xcoordinates" in f:
                    out.append(path)
        except OSError:
            continue
    return out


def _method(value) -> str:
    return str(value or "unknown").strip().lower()


def load_run_dir(path: str) -> RunRecord:
    """Read one run folder: its config, training log, probe JSON and surface files, whichever exist.

    Args:
        path: a folder with ``config.json`` (a training run) or at least one probe JSON.

    Returns:
        The run's record (``values`` not yet filled: ``record_values`` does that).
    """
    probe_path = _find_probe(path)
    if not os.path.isfile(os.path.join(path, CONFIG)) and probe_path is None:
        raise FlatnessError(f"{path} is not a run folder (no {CONFIG}) and holds no probe JSON")
    config = read_run_config(path)
    probe = _load_probe(probe_path) if probe_path else None
    ck = (probe or {}).get("checkpoint") or {}
    rec = RunRecord(
        source=path,
        method=_method(config.get("method") or ck.get("method")),
        seed=config.get("seed", ck.get("seed")),
        run_dir=path,
        config=config,
        epochs=read_metrics(path),
        probe=probe,
        probe_path=probe_path,
        surfaces=_find_surfaces(path),
    )
    return rec


def load_probe_file(path: str) -> RunRecord:
    """Read one probe JSON as a run, with its training log when the run folder can be found.

    The run folder is the checkpoint's folder as the probe recorded it, else the probe's own folder,
    whichever holds a ``metrics.jsonl``; without one the record has no epochs (no test accuracy).

    Args:
        path: the probe JSON file.

    Returns:
        The run's record (``values`` not yet filled).
    """
    probe = _load_probe(path)
    ck = probe.get("checkpoint") or {}
    run_dir = None
    ck_path = ck.get("path")
    for candidate in ([os.path.dirname(str(ck_path))] if ck_path else []) + [os.path.dirname(os.path.abspath(path))]:
        if candidate and os.path.isfile(os.path.join(candidate, METRICS)):
            run_dir = candidate
            break
    config = read_run_config(run_dir) if run_dir else {}
    epochs = read_metrics(run_dir) if run_dir else []
    return RunRecord(
        source=path,
        method=_method(ck.get("method") or config.get("method")),
        seed=ck.get("seed", config.get("seed")),
        run_dir=run_dir,
        config=config,
        epochs=epochs,
        probe=probe,
        probe_path=path,
    )


def collect_runs(inputs: Sequence[str]) -> tuple[list[RunRecord], list[str]]:
    """(records, extra surface files) from run folders, probe JSONs and surface .h5 files."""
    if not inputs:
        raise FlatnessError("no inputs: name run folders or probe JSON files")
    records: list[RunRecord] = []
    surfaces: list[str] = []
    for path in inputs:
        if not os.path.exists(path):
            raise FlatnessError(f"not found: {path}")
        if os.path.isdir(path):
            records.append(load_run_dir(path))
        else:
            ext = os.path.splitext(path)[1].lower()
            if ext == ".json":
                records.append(load_probe_file(path))
            elif ext in (".h5", ".hdf5"):
                surfaces.append(path)
            else:
                raise FlatnessError(
                    f"{path}: unknown input type '{ext or '(none)'}'; expected a run folder, "
                    "a probe .json or a surface .h5"
                )
    seen = set()
    for r in records:
        key = (r.method, r.seed, r.run_dir or r.source)
        if key in seen:
            raise FlatnessError(f"{r.source}: the same run ({r.label}) is given twice")
        seen.add(key)
        r.values = record_values(r)
    check_poolable(records)
    if not records and not surfaces:
        raise FlatnessError("nothing to compare in the inputs")
    return records, surfaces


# Training options that may differ between seeds of one method without changing what is measured
# (where the run was computed and stored, not how it was trained).
POOLABLE_DIFFERENCES = (
    "seed",
    "device",
    "data_dir",
    "download",
    "save_every",
    "compile",
    "data_on_device",
    "channels_last",
    "recipe",
)


def check_poolable(records: Sequence[RunRecord]) -> None:
    """Refuse inputs that would be pooled wrongly as seeds of one method.

    Two cases: runs trained with other settings (2 against 4 epochs are not two seeds of one method),
    and one seed given twice (a copied run folder would count as a second seed, with a std of 0).

    Args:
        records: the runs, as collected.

    Returns:
        None; raises FlatnessError naming the two inputs.
    """
    first: dict[str, RunRecord] = {}
    by_seed: dict[tuple[str, Any], RunRecord] = {}
    for r in records:
        if r.seed is not None:
            twin = by_seed.setdefault((r.method, r.seed), r)
            if twin is not r:
                raise FlatnessError(
                    f"{twin.source} and {r.source} are both {r.label}: one seed counts once "
                    "(a copied run is not a second seed); give each seed's run once"
                )
        if not r.config:
            continue
        ref = first.setdefault(r.method, r)
        keys = sorted((set(ref.config) | set(r.config)) - set(POOLABLE_DIFFERENCES))
        for k in keys:
            if ref.config.get(k) != r.config.get(k):
                raise FlatnessError(
                    f"{ref.source} and {r.source} are both {r.method.upper()} runs but differ in "
                    f"{k} ({ref.config.get(k)!r} vs {r.config.get(k)!r}); only seeds of one "
                    "setting can be pooled: compare them in separate calls"
                )


# --------------------------------------------------------------------------- tables


def _g(v: float | None, digits: int = 4) -> str:
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
        return f"{_g(cell['mean'])} (n=1, std undefined)"
    std = cell["std"] if cell["std"] > 1e-12 * max(1.0, abs(cell["mean"])) else 0.0
    return f"{_g(cell['mean'])} ± {_g(std, 2)}"


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
        f"{m.upper()} (n={max((r['methods'][m]['n'] for r in comp['rows']), default=0)})" for m in methods
    ]
    for m in others:
        head += [
            f"{m.upper()} − {base.upper()}",
            f"p (Welch, {m.upper()} vs {base.upper()})",
            "p (Holm)",
            f"{m.upper()} is",
        ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in comp["rows"]:
        cells = [row["label"] + (" ↓" if row["better"] == "lower" else " ↑"), row["unit"] or "–"]
        cells += [format_mean_std(row["methods"][m]) for m in methods]
        for m in others:
            v = row["versus"][m]
            cells += [_g(v["diff"]), format_p(v), format_p_holm(v), v["direction"] or "–"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [
        "",
        f"Mean ± {comp['std']}. ↓: lower is better (for every flatness measure, lower = flatter); ↑: higher is better.",
    ]
    if others:
        n = min((r["methods"][m]["n"] for r in comp["rows"] for m in methods), default=0)
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
    return "\n".join(lines + notes) + "\n"


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
    writer.writerow(["row", "method", "seed", "source"] + [label for _, label in cols])
    for run in comp["runs"]:
        writer.writerow(
            ["run", run["method"], run["seed"], run["source"]] + [_csv(run["values"].get(k)) for k, _ in cols]
        )
    for m in comp["methods"]:
        for stat in ("mean", "std", "n"):
            writer.writerow([stat, m, "", ""] + [_csv(row["methods"][m][stat]) for row in comp["rows"]])
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
    return buf.getvalue()


def _csv(v) -> str:
    return "" if v is None else (repr(v) if isinstance(v, float) else str(v))


# --------------------------------------------------------------------------- figures


def _mean_curves(records: Sequence[RunRecord], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    series = [[(_num(e.get("epoch")), _num(e.get(key))) for e in r.epochs] for r in records]
    series = [[(ep, v) for ep, v in s if ep is not None and v is not None] for s in series]
    series = [s for s in series if s]
    if not series:
        return np.array([]), np.array([]), np.array([])
    length = min(len(s) for s in series)
    epochs = np.array([ep for ep, _ in series[0][:length]])
    vals = np.array([[v for _, v in s[:length]] for s in series])
    std = vals.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(length)
    return epochs, vals.mean(axis=0), std


def in_method_order(methods) -> list[str]:
    """Method names in the report's order (ERM, AMP, SAM, then any others as given)."""
    return [m for m in METHOD_ORDER if m in methods] + [m for m in methods if m not in METHOD_ORDER]


def figure_training(records: Sequence[RunRecord], path: str, force: bool = False) -> str | None:
    """Loss and accuracy per epoch, mean ± 1 std over seeds, one colour per method.

    Args:
        records: the runs; those without a training log are left out.
        path: the image file to write.
        force: replace an existing file.

    Returns:
        The path written, or None when no run has a training log.
    """
    from flatness.plot.style import new_figure, save_figure

    methods = sorted(
        {r.method for r in records if r.epochs}, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 9
    )
    if not methods:
        return None
    fig = new_figure((11, 4.2))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, m in enumerate(methods):
        group = [r for r in records if r.method == m and r.epochs]
        color = f"C{i}"
        for key, ax, style, scale in (
            ("train_loss", ax_loss, "-", 1),
            ("test_loss", ax_loss, "--", 1),
            ("train_acc", ax_acc, "-", 100),
            ("test_acc", ax_acc, "--", 100),
        ):
            ep, mean, std = _mean_curves(group, key)
            if ep.size:
                ax.plot(ep, scale * mean, style, color=color, label=f"{m.upper()} {key.split('_')[0]} (n={len(group)})")
                ax.fill_between(ep, scale * (mean - std), scale * (mean + std), color=color, alpha=0.15)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("loss (mean cross-entropy, log scale)")
    ax_acc.set_ylabel("accuracy (%)")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        "Training curves: mean over seeds, band = ±1 std (train: as logged during the epoch; test: full test split)",
        fontsize=9,
    )
    return save_figure(fig, path, force)


def figure_spectra(records: Sequence[RunRecord], path: str, force: bool = False) -> str | None:
    """The Hessian spectra overlaid, one probe per method: its lowest seed with a density, else its lowest seed.

    Args:
        records: the runs; those without a probe are left out.
        path: the image file to write.
        force: replace an existing file.

    Returns:
        The path written, or None when no run has a probe.
    """
    from flatness.plot.spectra import plot_spectrum

    chosen = []
    for m in sorted({r.method for r in records}, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 9):
        group = sorted([r for r in records if r.method == m and r.probe], key=lambda r: (r.seed is None, r.seed))
        withd = [r for r in group if (r.probe.get("density") or {}).get("grid")] or group
        if withd:
            chosen.append(withd[0].probe)
    if not chosen:
        return None
    return plot_spectrum(chosen, path, force=force)


def _surface_groups(records: Sequence[RunRecord], extra: Sequence[str]):
    from flatness.plot.loading import load_surface

    one_d, two_d = {}, {}
    for r in sorted(records, key=lambda r: (r.seed is None, r.seed)):
        for path in r.surfaces:
            surf = load_surface(path)
            direction = str((surf.get("attrs") or {}).get("direction") or "random")
            if not direction.startswith("random"):
                continue
            target = two_d if surf.get("ycoordinates") is not None else one_d
            target.setdefault(r.method, (r, surf))
    return one_d, two_d


def figure_slices(records: Sequence[RunRecord], path: str, force: bool = False, log: bool = False) -> str | None:
    """The 1D random-direction slices of one run per method on common axes.

    Args:
        records: the runs; their 1D surface files along random directions are used.
        path: the image file to write.
        force: replace an existing file.
        log: draw the loss on a log scale.

    Returns:
        The path written, or None when no run has such a surface.
    """
    from flatness.plot.curves import plot_1d

    one_d, _ = _surface_groups(records, [])
    if not one_d:
        return None
    methods = in_method_order(one_d)
    surfs = [one_d[m][1] for m in methods]
    labels = [one_d[m][0].label for m in methods]
    title = (
        "1D loss along a random filter-normalised direction (same direction seed for every checkpoint); "
        "solid: train probe data, dashed: test split\n" + " vs ".join(labels)
    )
    return plot_1d(surfs, path, log=log, force=force, labels=labels, title=title)


def figure_contours(records: Sequence[RunRecord], path: str, force: bool = False) -> str | None:
    """The 2D random-direction surfaces of one run per method side by side, with shared colour limits.

    Args:
        records: the runs; their 2D surface files along random directions are used.
        path: the image file to write.
        force: replace an existing file.

    Returns:
        The path written, or None when no run has such a surface.
    """
    from flatness.plot.maps import draw_2d
    from flatness.plot.style import common_limits, new_figure, pick_value, save_figure, use_log

    _, two_d = _surface_groups(records, [])
    if not two_d:
        return None
    methods = in_method_order(two_d)
    surfs = [two_d[m][1] for m in methods]
    value = pick_value(surfs[0], None)
    lo, hi = common_limits(surfs, value)
    logscale = use_log(value, lo, hi, None)
    fig = new_figure((6 * len(surfs), 5))
    axes = fig.subplots(1, len(surfs), squeeze=False)[0]
    mappable = None
    for ax, m, surf in zip(axes, methods, surfs):
        mappable = draw_2d(ax, surf, "contourf", value, lo, hi, logscale, colorbar=False)
        ax.set_title(f"{two_d[m][0].label}", fontsize=10)
    for ax in axes[1:]:
        ax.set_ylabel("")
    from matplotlib.ticker import FormatStrFormatter

    from flatness.plot.style import contour_levels, value_name

    cb = fig.colorbar(
        mappable,
        ax=list(axes),
        ticks=contour_levels(lo, hi, logscale)[::3] if logscale else None,
        format=FormatStrFormatter("%.3g"),
    )
    cb.set_label(value_name(value) + (" — log scale" if logscale else "") + "; shared colour limits")
    fig.suptitle(
        f"2D {value_name(value)} around each trained checkpoint (random filter-normalised directions, "
        "train probe data); red star = trained weights",
        fontsize=10,
    )
    return save_figure(fig, path, force)


def compare_figures(
    records: Sequence[RunRecord], out_dir: str, fmt: str = "png", force: bool = False, prefix: str = "compare"
) -> dict[str, str]:
    """Write every comparison figure the inputs allow.

    The figures: training curves, spectra overlaid, 1D slices on common axes, 2D contours side by side.

    Args:
        records: the runs.
        out_dir: the folder the figures go to, as ``<prefix>-<name>.<fmt>``.
        fmt: the image format (file extension).
        force: replace existing files.
        prefix: the start of each file name.

    Returns:
        ``{name: path}`` of the figures written.
    """
    out = {}
    for name, fn in (
        ("training", figure_training),
        ("spectra", figure_spectra),
        ("slices-1d", figure_slices),
        ("contours-2d", figure_contours),
    ):
        path = os.path.join(out_dir, f"{prefix}-{name}.{fmt}")
        written = fn(records, path, force=force)
        if written:
            out[name] = written
    return out


# --------------------------------------------------------------------------- the command's driver


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
    """Collect, summarise, and write what was asked: returns the summary with ``markdown`` and ``files``."""
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
