"""The study's two protocols from the same runs, and the sharpness-against-radius profile.

* **fixed budget**: every run's final checkpoint (``last.pt``), after the same number of epochs;
* **matched loss**: every run's ``matched.pt``, the weights after the first epoch whose loss over the
  whole training set (eval mode, as ``--stop-loss`` measures it) is <= the study's ``match_loss``
  (``flatness.training.stopping.matched_now``). At a fixed budget a method that fits more slowly (AMP,
  SAM) is compared at a higher training loss than ERM; at matched loss it is not. A run that never
  reaches the loss has no matched checkpoint: it is listed and left out of that protocol.

Both protocols are probed the same way (``probe.json`` beside ``last.pt``; ``matched/probe.json`` for
``matched.pt``) and compared in the same schema: ``OUT/comparison.json`` and
``OUT/matched-loss/comparison.json``.

The radius profile (``profile.json``, ``matched/profile.json``) is worst-case and average-case sharpness
over the log grid ``RADIUS_GRID``: it shows at which scales a method is flatter, which a single radius
hides.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from flatness.core.fileio import atomic_write_json, atomic_write_text
from flatness.plot.loading import load_probe
from flatness.plot.style import new_figure, save_figure
from flatness.study.probe import QUICK_SHARPNESS
from flatness.study.quantities import finite_float, record_values
from flatness.study.run_record import RunRecord
from flatness.study.runs import sorted_methods
from flatness.study.significance import bootstrap_interval
from flatness.study.tables import csv_text, markdown_table

MATCHED_DIR = "matched-loss"  # the matched-loss comparison, under the study folder
MATCHED_RUN_DIR = "matched"  # the matched checkpoint's probe and profile, inside a run folder
PROFILE = "profile.json"
PROFILE_FORMAT = "flatness-radius-profile"
# A 1-2-5 log grid over two decades: from well inside every ball a method trains on (SAM's 0.05,
# digits' AMP 0.02) to twice MNIST-1D's AMP ε (0.5).
RADIUS_GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
QUICK_RADIUS_GRID = (0.01, 0.1, 1.0)
PROFILE_METRICS = ("worst_case", "average_case")
PROTOCOLS = (
    ("fixed", "fixed budget (final checkpoint, same epochs)"),
    ("matched", "matched training loss (first checkpoint at or below the loss)"),
)


def matched_records(records: Sequence[RunRecord]) -> tuple[list[RunRecord], list[RunRecord]]:
    """The runs of the matched-loss protocol, and those that never reached the loss.

    A matched record is the run's record with the matched checkpoint's probe and the training log cut at
    that checkpoint's epoch (so its test accuracy is the one of those weights).

    Args:
        records: the fixed-budget records (run folders read by ``load_run_dir``).

    Returns:
        ``(matched, unreached)``.
    """
    matched, unreached = [], []
    for rec in records:
        path = os.path.join(rec.run_dir or "", MATCHED_RUN_DIR, "probe.json")
        if not rec.run_dir or not os.path.isfile(path):
            unreached.append(rec)
            continue
        probe = load_probe(path)
        epoch = int((probe.get("checkpoint") or {}).get("epoch") or 0)
        twin = copy.copy(rec)
        twin.probe, twin.probe_path, twin.surfaces = probe, path, []
        twin.epochs = [e for e in rec.epochs if (finite_float(e.get("epoch")) or 0) <= epoch]
        twin.values = record_values(twin)
        matched.append(twin)
    return matched, unreached


def matched_epoch(rec: RunRecord) -> int | None:
    """The epoch of a matched record's checkpoint (None for a fixed-budget record without one)."""
    return (rec.probe or {}).get("checkpoint", {}).get("epoch")


def write_comparison(folder: str, comp: dict[str, Any]) -> dict[str, str]:
    """``comparison.{md,json,csv}`` of one protocol into ``folder``.

    Args:
        folder: the study folder (fixed budget) or its ``matched-loss`` folder.
        comp: the comparison summary.

    Returns:
        ``{"markdown", "json", "csv"}`` paths.
    """
    os.makedirs(folder, exist_ok=True)
    paths = {k: os.path.join(folder, f"comparison.{ext}") for k, ext in (("markdown", "md"), ("json", "json"))}
    paths["csv"] = os.path.join(folder, "comparison.csv")
    atomic_write_text(paths["markdown"], "# Comparison\n\n" + markdown_table(comp))
    atomic_write_json(paths["json"], comp)
    atomic_write_text(paths["csv"], csv_text(comp))
    return paths


# --------------------------------------------------------------------------- the radius profile


def profile_settings(quick: bool) -> dict[str, Any]:
    """The probe settings of a radius profile: only the two sharpness metrics, over the grid."""
    options: dict[str, Any] = {"rhos": list(QUICK_RADIUS_GRID if quick else RADIUS_GRID)}
    if quick:
        options.update({k: QUICK_SHARPNESS[k] for k in ("draws", "ascent_steps")})
    return {
        "top_k": 0,
        "trace": False,
        "density": False,
        "sharpness": list(PROFILE_METRICS),
        "sharpness_options": options,
    }


def profile_document(probe: dict[str, Any]) -> dict[str, Any]:
    """The profile file's content from a probe result: the checkpoint and one entry per metric and radius."""
    entries = [
        {"metric": e.get("metric"), "rho": e.get("rho"), "value": e.get("value"), "stderr": e.get("stderr")}
        for e in probe.get("sharpness") or []
    ]
    return {
        "format": PROFILE_FORMAT,
        "checkpoint": probe.get("checkpoint"),
        "data": probe.get("data"),
        "entries": entries,
    }


def read_profile(path: str) -> dict[tuple[str, float], float]:
    """``{(metric, rho): value}`` of a profile file ({} when it is missing or unreadable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            doc = json.load(handle)
    except (OSError, ValueError):
        return {}
    out = {}
    for e in doc.get("entries") or []:
        rho, value = finite_float(e.get("rho")), finite_float(e.get("value"))
        if rho is not None and value is not None:
            out[(str(e.get("metric")), rho)] = value
    return out


def profile_summary(records: Sequence[RunRecord], matched: bool) -> dict[str, Any]:
    """Per method, metric and radius: the mean over seeds and its 95 % bootstrap interval.

    Args:
        records: the runs of the protocol.
        matched: read the matched checkpoints' profiles instead of the final ones.

    Returns:
        ``{method: {metric: {"rho": [...], "mean": [...], "low": [...], "high": [...], "n": [...]}}}``.
    """
    out: dict[str, Any] = {}
    for m in sorted_methods(r.method for r in records):
        runs = [r for r in records if r.method == m and r.run_dir]
        profiles = [read_profile(_profile_path(r.run_dir, matched)) for r in runs]
        out[m] = {}
        for metric in PROFILE_METRICS:
            rhos = sorted({rho for p in profiles for (name, rho) in p if name == metric})
            series = {"rho": [], "mean": [], "low": [], "high": [], "n": []}
            for rho in rhos:
                vals = [p[(metric, rho)] for p in profiles if (metric, rho) in p]
                low, high = bootstrap_interval(vals)
                for key, v in (("rho", rho), ("mean", float(np.mean(vals))), ("low", low), ("high", high)):
                    series[key].append(v)
                series["n"].append(len(vals))
            out[m][metric] = series
    return out


def _profile_path(run_dir: str, matched: bool) -> str:
    return os.path.join(run_dir, MATCHED_RUN_DIR, PROFILE) if matched else os.path.join(run_dir, PROFILE)


def figure_profile(summary: dict[str, Any], path: str, title: str) -> str | None:
    """Worst-case and average-case sharpness against ρ (log-log), mean and 95 % interval band per method.

    Args:
        summary: from ``profile_summary``.
        path: the image file (replaced: a derived output of the study folder).
        title: the figure's title (the protocol).

    Returns:
        The path, or None when no run has a profile.
    """
    if not any(s["rho"] for per in summary.values() for s in per.values()):
        return None
    fig = new_figure((11, 4.2))
    axes = fig.subplots(1, len(PROFILE_METRICS))
    for ax, metric in zip(axes, PROFILE_METRICS):
        for i, (m, per) in enumerate(summary.items()):
            s = per.get(metric) or {}
            if not s.get("rho"):
                continue
            rho, mean = np.asarray(s["rho"]), np.asarray(s["mean"])
            ax.plot(rho, mean, "o-", color=f"C{i}", label=f"{m.upper()} (n={max(s['n'])})")
            if all(v is not None for v in s["low"]):
                ax.fill_between(rho, s["low"], s["high"], color=f"C{i}", alpha=0.2, linewidth=0)
        ax.set_xscale("log")
        if all(v > 0 for per in summary.values() for v in (per.get(metric) or {}).get("mean", [])):
            ax.set_yscale("log")
        ax.set_xlabel("radius ρ")
        ax.set_ylabel("loss increase (nats)")
        ax.set_title(metric.replace("_", "-"))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Sharpness against radius, {title} (mean over seeds, band: 95 % bootstrap interval)")
    return save_figure(fig, path, force=True)
