"""The whole ERM-versus-AMP study in one call: ``run_experiment(ExperimentConfig(...))``.

The settings and their checks are ``flatness.study.experiment_config``'s, the steps (train, probe,
profile, surfaces, figures) ``flatness.study.experiment_steps``'s; this module runs them: in this
process in order, or with ``workers`` > 1 (or the Ray engine) as one job in one pool of workers
(``flatness.core.engines``): every run (train, then probe) is ready at once, the costliest first, and
each surface starts as soon as the runs it reads are done; the numbers are those of one process. Then
the comparisons (``OUT/comparison.{md,json,csv}`` at a fixed budget, ``OUT/matched-loss/comparison.{md,
json,csv}`` at matched training loss) and the report (``OUT/REPORT.md``, ``OUT/report.html``), rebuilt
every time from what is on disk.

``OUT/experiment.json`` records the settings and the steps done; a rerun with settings that would change
finished results (dataset, model, epochs, samples, grid, ...) is refused rather than mixing two studies
in one folder.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import torch

from flatness.core import engines
from flatness.core.errors import FlatnessError
from flatness.core.fileio import atomic_write_json
from flatness.core.locking import exclusive
from flatness.core.paths import check_paths
from flatness.core.progress import plan_line
from flatness.study.compare import compare
from flatness.study.experiment_config import FROZEN, ExperimentConfig
from flatness.study.experiment_steps import (
    RUNS,
    SurfaceJob,
    prepare_data,
    profile_figures,
    run_dir,
    run_steps,
    step_figures,
    step_surface,
    step_surfaces,
    step_train,
    surface_jobs,
    train_config_for,
)
from flatness.study.protocols import MATCHED_DIR, matched_records, write_comparison
from flatness.study.quantities import record_values
from flatness.study.report import write_report
from flatness.study.runs import load_run_dir
from flatness.training.cost import training_cost

STATE = "experiment.json"


def _check_state(cfg: ExperimentConfig) -> None:
    path = os.path.join(cfg.out, STATE)
    if not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as handle:
            stored = json.load(handle).get("config", {})
    except (OSError, ValueError):
        return
    now = json.loads(json.dumps(cfg.to_dict()))
    for key in FROZEN:
        if key in stored and stored[key] != now.get(key):
            raise FlatnessError(
                f"{cfg.out} holds a study made with {key}={stored[key]!r} (now {now.get(key)!r}); "
                "rerun with the same settings to resume it, or choose another --out"
            )


def _write_state(cfg: ExperimentConfig, steps: list[dict[str, Any]], started: float) -> None:
    atomic_write_json(
        os.path.join(cfg.out, STATE),
        {
            "config": cfg.to_dict(),
            "steps": steps,
            "seconds_this_run": time.time() - started,
        },
    )


@dataclass(frozen=True)
class StudyTask:
    """One independent piece of the study for a worker: a run (train, then probe) or one surface."""

    cfg: ExperimentConfig
    kind: str  # "run" or "surface"
    method: str = ""
    seed: int = 0
    job: SurfaceJob | None = None  # the surface, for kind "surface"
    verbose: bool = True
    # The engine starts the costliest ready task first. Every run comes before any surface (tier 1 > 0):
    # in the studies measured a run is the longer task (MNIST-1D: runs 11-16 s, the 2D surface 2 s;
    # digits: 35-55 s and 22 s), and the surfaces, ready only once their runs are done, fill the end.
    cost: tuple[int, float] = (0, 0.0)


def run_study_task(task: StudyTask) -> tuple[StudyTask, list[dict[str, Any]]]:
    """Do one ``StudyTask`` (in a worker process or in this one).

    Args:
        task: the run or surface.

    Returns:
        The task itself (so the parent knows what is done) and its step records.
    """
    if task.cfg.threads:
        torch.set_num_threads(task.cfg.threads)
    echo = (lambda line: print(line, flush=True)) if task.verbose else None
    if task.kind == "run":
        trained = step_train(task.cfg, task.method, task.seed, False, echo)
        return task, [trained, *run_steps(task.cfg, task.method, task.seed, False, echo)]
    return task, [step_surface(task.cfg, task.job, False, echo)]


def _run_steps_on_engine(cfg: ExperimentConfig, record, echo) -> None:
    """Every run (train, then probe) and every surface as one job on the engine, in one pool.

    The runs are ready at once, the costliest first (AMP and SAM before ERM); each surface becomes ready
    as soon as the runs it reads are done.
    """
    prepare_data(cfg)  # generated or unpacked once here, not by every worker at the same time
    verbose = echo is not None
    runs = [
        StudyTask(cfg, "run", m, s, verbose=verbose, cost=(1, training_cost(train_config_for(cfg, m, s))))
        for m in cfg.methods
        for s in cfg.seeds
    ]
    waiting = [StudyTask(cfg, "surface", job=job, verbose=verbose, cost=(0, job.points)) for job in surface_jobs(cfg)]
    finished_runs: set[tuple[str, int]] = set()
    os.makedirs(os.path.join(cfg.out, RUNS), exist_ok=True)

    def done(outcome: tuple[StudyTask, list[dict[str, Any]]]) -> list[StudyTask]:
        task, steps = outcome
        for entry in steps:
            record(entry)
        if task.kind == "run":
            finished_runs.add((task.method, task.seed))
        now_ready = [t for t in waiting if set(t.job.runs) <= finished_runs]
        for t in now_ready:
            waiting.remove(t)
        return now_ready

    if cfg.engine == "ray":
        gpu = str(cfg.device).startswith("cuda")
        engines.run_ray(runs, cfg.workers, done, run_study_task, gpu=gpu, cost=attrgetter("cost"))
    else:
        engines.run_local(runs, cfg.workers, done, fn=run_study_task, cost=attrgetter("cost"))


def run_experiment(
    config: ExperimentConfig, progress: bool = False, echo: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Run (or resume) the whole study; returns {out, report, html, steps, verdict, seconds, figures}.

    This process uses ``threads`` torch threads while it runs (as every worker does), then its own again.
    """
    cfg = config.checked()
    started = time.time()
    check_paths({}, {"--out": cfg.out}, folders=["--out"])
    if os.path.isfile(cfg.out):
        raise FlatnessError(f"--out {cfg.out} is a file; name a folder")
    for m in cfg.methods:  # a bad option fails before the study folder is even created
        train_config_for(cfg, m, cfg.seeds[0])
    before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        with exclusive(cfg.out, "study folder"):  # a second study in this folder refuses at once
            os.makedirs(cfg.out, exist_ok=True)
            return _run_locked(cfg, started, progress, echo)
    finally:
        torch.set_num_threads(before)


def _plan(cfg: ExperimentConfig) -> str:
    """The study's planned size, printed before its first step: runs, epochs, surfaces and their points."""
    runs = len(cfg.methods) * len(cfg.seeds)
    epochs = max(train_config_for(cfg, m, cfg.seeds[0]).epochs for m in cfg.methods)
    jobs = surface_jobs(cfg)
    points = sum(math.prod(axis[2] for axis in (j.options.get("x"), j.options.get("y")) if axis) for j in jobs)
    runs_text = f"{runs} run(s) of up to {epochs} epochs, each probed"
    return plan_line("experiment", runs_text, f"{len(jobs)} surfaces of {points} points in all")


def _run_locked(cfg: ExperimentConfig, started: float, progress: bool, echo) -> dict[str, Any]:
    _check_state(cfg)
    # check every training config before the first step, so a bad option fails at once
    for m in cfg.methods:
        train_config_for(cfg, m, cfg.seeds[0])
    steps: list[dict[str, Any]] = _previous_steps(cfg)
    _write_state(cfg, steps, started)
    if echo and progress:  # the planned size, shown with the progress display
        echo(_plan(cfg))

    def record(entry):
        steps.append(dict(entry, at=time.time()))
        _write_state(cfg, steps, started)

    if cfg.workers > 1 or cfg.engine == "ray":
        _run_steps_on_engine(cfg, record, echo)
    else:
        for method in cfg.methods:
            for seed in cfg.seeds:
                record(step_train(cfg, method, seed, progress, echo))
        for method in cfg.methods:
            for seed in cfg.seeds:
                for entry in run_steps(cfg, method, seed, progress, echo):
                    record(entry)
        for entry in step_surfaces(cfg, progress, echo):
            record(entry)

    records = [load_run_dir(run_dir(cfg, m, s)) for m in cfg.methods for s in cfg.seeds]
    for r in records:
        r.values = record_values(r)
    comp = compare(records)
    matched, unreached = matched_records(records)
    comp_matched = compare(matched) if matched else None
    began = time.perf_counter()
    figures = step_figures(cfg, records, comp)
    figures.update(profile_figures(cfg, records, matched))
    write_comparison(cfg.out, comp)
    if comp_matched is not None:
        write_comparison(os.path.join(cfg.out, MATCHED_DIR), comp_matched)
    record({"step": "figures and comparison", "skipped": False, "seconds": time.perf_counter() - began})
    protocols = {"matched": matched, "unreached": unreached, "comp_matched": comp_matched}
    report = write_report(cfg, records, comp, figures, steps, protocols)
    _write_state(cfg, steps, started)
    return {
        "out": cfg.out,
        "report": report["markdown"],
        "html": report["html"],
        "steps": steps,
        "verdict": report["verdict"],
        "seconds": time.time() - started,
        "figures": figures,
    }


def _previous_steps(cfg: ExperimentConfig) -> list[dict[str, Any]]:
    """Steps done by earlier invocations (kept, so the report can tell what each step cost)."""
    path = os.path.join(cfg.out, STATE)
    try:
        with open(path, encoding="utf-8") as handle:
            old = json.load(handle).get("steps", [])
    except (OSError, ValueError):
        return []
    return [dict(s, earlier=True) for s in old if not s.get("skipped") and s.get("step") != "figures and comparison"]
