"""The evidence page: `flatness experiment` on three settings, written to docs/validation.md.

1. the default study (`flatness experiment`, what `bash scripts/run.sh` runs): MNIST-1D, mlp1d
   40-100-100-10, ERM/AMP/SAM, 8 paired seeds;
2. MNIST-1D with a width-256 MLP (`--width 256`: 40-256-256-10), otherwise the default;
3. scikit-learn's digits (1000 train / 797 test after a seeded shuffle, inputs /16 in [0, 1]) with an
   MLP 64-128-128-10, as a user's own data and model (`--dataset FILE.npz --model FILE.py:mlp`), at a
   constant learning rate (`--schedule constant --lr 0.05`).

Each setting runs once, as a user would type it (its exact command is on the page), into
``--keep``/<name>; the page gets its wall time, the machine, the verdict sentences of both protocols and
the primary-measures table. Nothing is downloaded.

    python benchmarks/validation.py --keep /tmp/validation            # all three (minutes each)
    python benchmarks/validation.py --keep /tmp/validation --only digits-mlp   # one setting, no page
    python benchmarks/validation.py --keep /tmp/validation --page-only         # the page from kept studies
    python benchmarks/validation.py --keep /tmp/v --quick --page /tmp/v.md   # a smoke test of this script

The time on the page is each study's own (``seconds_this_run`` in its experiment.json: from the start of
`flatness experiment`'s work to its report), so settings run one after another or side by side (with
--only) are timed alike.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = os.path.join(ROOT, "docs", "validation.md")

DIGITS_MODEL = '''"""An MLP 64-128-128-10 for scikit-learn's 8x8 digits (benchmarks/validation.py)."""

import torch.nn as nn


def mlp():
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
'''


def write_digits(folder: str) -> tuple[str, str]:
    """digits.npz (1000 train / 797 test, seeded shuffle, inputs in [0, 1]) and the model file."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    x = (digits.images[order] / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8)
    y = digits.target[order].astype(np.int64)
    data, model = os.path.join(folder, "digits.npz"), os.path.join(folder, "digits_mlp.py")
    if not os.path.isfile(data):  # kept as written: a study may be reading it (its sha256 is recorded)
        np.savez(data, x_train=x[:1000], y_train=y[:1000], x_test=x[1000:], y_test=y[1000:])
    if not os.path.isfile(model):
        with open(model, "w", encoding="utf-8") as handle:
            handle.write(DIGITS_MODEL)
    return data, model


def settings(folder: str, quick: bool, seeds: str | None = None) -> list[tuple[str, str, list[str]]]:
    """(name, description, experiment arguments) of the three settings.

    ``seeds`` (e.g. "0,1,2,3,4") replaces the default 8 seeds of the two settings other than the default
    one, when the machine cannot afford three full studies.
    """
    data, model = write_digits(folder)
    tail = ["--quick", "--seeds", "0,1"] if quick else []
    other = tail if quick or not seeds else ["--seeds", seeds]
    return [
        ("default", "the default study (`bash scripts/run.sh`): MNIST-1D, mlp1d 40-100-100-10", tail),
        ("mnist1d-width256", "MNIST-1D, MLP 40-256-256-10 (`--width 256`)", ["--width", "256", *other]),
        (
            "digits-mlp",
            "scikit-learn digits (1000 train / 797 test, inputs in [0, 1]), MLP 64-128-128-10 as the user's own "
            "model and data, constant learning rate 0.05",
            ["--dataset", data, "--model", f"{model}:mlp", "--schedule", "constant", "--lr", "0.05", *other],
        ),
    ]


def shown_command(out: str, args: list[str]) -> str:
    """The setting's command line as a user types it, with the seeds the kept study was run with."""
    args = list(args)
    try:
        with open(os.path.join(out, "experiment.json"), encoding="utf-8") as handle:
            seeds = ",".join(str(s) for s in json.load(handle)["config"]["seeds"])
    except (OSError, ValueError, KeyError):
        seeds = None
    if seeds is not None and seeds != "0,1,2,3,4,5,6,7":
        if "--seeds" in args:
            args[args.index("--seeds") + 1] = seeds
        else:
            args += ["--seeds", seeds]
    return "flatness experiment " + " ".join(shlex.quote(a) for a in args + ["--out", out])


def run_setting(out: str, args: list[str]) -> float:
    """Run `flatness experiment` into ``out``; returns its wall seconds (start-up included)."""
    command = [sys.executable, "-m", "flatness.cli", "experiment", *args, "--out", out, "--no-progress"]
    began = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def study_seconds(out: str) -> float:
    """The study's own time, as its experiment.json records it."""
    with open(os.path.join(out, "experiment.json"), encoding="utf-8") as handle:
        return float(json.load(handle)["seconds_this_run"])


def section(name: str, description: str, command: str, seconds: float, out: str) -> list[str]:
    """One setting's part of the page: command, time, verdict sentences and the primaries table."""
    from flatness.study.protocol_report import primary_table
    from flatness.study.verdict import study_verdicts

    with open(os.path.join(out, "comparison.json"), encoding="utf-8") as handle:
        comp = json.load(handle)
    matched_path = os.path.join(out, "matched-loss", "comparison.json")
    comp_matched = None
    if os.path.isfile(matched_path):
        with open(matched_path, encoding="utf-8") as handle:
            comp_matched = json.load(handle)
    verdicts = study_verdicts([{"name": "Fixed budget", "comp": comp}, {"name": "Matched loss", "comp": comp_matched}])
    n_matched = len((comp_matched or {}).get("runs", []))
    L = [f"## {name}: {description}", "", f"    {command}", "", f"Time: {seconds:.0f} s ({seconds / 60:.1f} min). "]
    L[-1] += f"Runs reaching the match loss: {n_matched} of {len(comp['runs'])}."
    L += [""] + [f"- {s}" for v in verdicts for s in v["sentences"]] + [""]
    L += primary_table(comp, comp_matched) + [""]
    acc = next(r for r in comp["rows"] if r["key"] == "test_acc")
    L.append(
        "Test accuracy (fixed budget, mean ± sd): "
        + ", ".join(f"{m.upper()} {c['mean']:.2f} ± {c['std'] or 0:.2f} %" for m, c in acc["methods"].items())
        + "."
    )
    return L + [""]


def machine() -> str:
    """The machine in words."""
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, CPU only"
    )


def main(argv=None) -> None:
    """Run the settings and write the page."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", required=True, help="folder for the three study folders")
    parser.add_argument("--quick", action="store_true", help="--quick studies (a smoke test)")
    parser.add_argument("--page", default=PAGE, help="where to write the page (default docs/validation.md)")
    parser.add_argument("--note", default="", help="a sentence on the machine's load during the runs")
    parser.add_argument("--only", default=None, help="run this one setting and write no page")
    parser.add_argument("--seeds", default=None, help="seeds of the two non-default settings (default: 8)")
    parser.add_argument("--page-only", action="store_true", help="run nothing: the page from the kept studies")
    args = parser.parse_args(argv)
    os.makedirs(args.keep, exist_ok=True)
    chosen = settings(args.keep, args.quick, args.seeds)
    if args.only and args.only not in [name for name, _, _ in chosen]:
        sys.exit(f"Error: --only takes one of {', '.join(name for name, _, _ in chosen)}")
    for name, _, extra in chosen:
        if not args.page_only and args.only in (None, name):
            print(f"{name}: {run_setting(os.path.join(args.keep, name), extra):.0f} s", flush=True)
    if args.only:
        return
    parts = []
    for name, description, extra in chosen:
        out = os.path.join(args.keep, name)
        if os.path.isfile(os.path.join(out, "REPORT.md")):
            parts += section(name, description, shown_command(out, extra), study_seconds(out), out)
        else:  # said, never silently dropped
            parts += [f"## {name}: {description}", "", f"    {shown_command(out, extra)}", "", "Not finished.", ""]
    head = [
        "# Validation: the study on three settings",
        "",
        f"Produced by `python benchmarks/validation.py --keep DIR` on {dt.date.today()}: {machine()}."
        + (f" {args.note}" if args.note else ""),
        "",
        "Each setting is one run of `flatness experiment` (ERM, AMP, SAM; paired seeds, 8 unless its command "
        "says fewer; both protocols: "
        "a fixed budget of epochs, and each run's first checkpoint whose whole-training-set loss is <= 0.01). "
        "The verdict is on the primary measures declared before the data (λmax, trace, worst-case sharpness at "
        "AMP's ε and ε/5, adaptive worst-case sharpness at ε, magnitude-aware PAC-Bayes); every other measure "
        "is exploratory (in each study's REPORT.md). Table cells: mean paired difference (method − ERM) "
        "[95 % bootstrap interval]; seeds in which the method is flatter (test accuracy: better); paired t-test "
        "p, Holm-adjusted within the primaries.",
        "",
    ]
    with open(args.page, "w", encoding="utf-8") as handle:
        handle.write("\n".join(head + parts))
    print(f"wrote {args.page}")


if __name__ == "__main__":
    main()
