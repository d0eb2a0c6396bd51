"""Run a sweep: ``run_sweep(SweepSettings(...))`` behind ``flatness sweep``.

Every cell of the grid (``flatness.sweep.grid``) is trained and measured in its own run folder
(``flatness.sweep.cells``) by an engine (``flatness.core.engines``); ``DIR/cells.csv`` is rebuilt from
the cell folders after every cell. A rerun skips finished cells and resumes a killed one; ``--shard
I/N`` does cells I, I+N, I+2N, ... (0-based), so N jobs with one DIR do the whole grid between them.

``DIR/sweep.json`` records what decides the results (grid, seeds, dataset, model, quick, the probe
and training settings); a rerun or another shard with different ones is refused rather than mixing
two sweeps in one folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from flatness.core import engines
from flatness.core.errors import FlatnessError
from flatness.core.fileio import atomic_write_json
from flatness.core.paths import check_paths
from flatness.core.progress import plan_line, progress_bar
from flatness.core.validation import check_count
from flatness.data.datasets import dataset_info, dataset_names
from flatness.study.probe import QUICK_SHARPNESS, ProbeSettings
from flatness.sweep import cells as cellmod
from flatness.sweep.grid import Cell, expand, parse_grid, parse_seeds, varied_keys
from flatness.training.config import TrainConfig, build_config
from flatness.training.stopping import check_stop_loss
from flatness.training.tensorboard_log import check_logger

STATE = "sweep.json"
FROZEN = ("grid", "seeds", "dataset", "model", "quick", "train", "probe")

# The default study (no --grid): every cell trained to the same training loss, as Jiang et al. (2020) do.
# The first default sweep (60 cosine epochs over lr 0.01-0.2 x batch 32-512) left 79 of 108 cells
# under-fitted, and under-fitting then drove the correlations. Now each cell trains until its
# whole-training-set cross-entropy is <= DEFAULT_STOP_LOSS (0.01, the literature's value), with
# DEFAULT_STOP_CAP epochs as a cap, at the CONSTANT learning rate of the cell (STOP_SCHEDULE): cosine over
# the cap would anneal the slow cells before they stop and make every trajectory depend on the cap; with a
# constant rate the grid's lr is the rate from the first step to the stop, and a larger cap changes
# nothing for a cell that already stopped. Measured on MNIST-1D / mlp1d (momentum 0.9, `flatness train
# --stop-loss 0.01`, seed 0), a cell reaches 0.01 after about 82 / lr SGD steps (ERM: lr 0.01 b32 at epoch
# 67, 0.005 b32 at 129, 0.02 b128 at 128, 0.04 b64 at 37; SAM ~1.3x and AMP eps 0.2 ~2x as many), as long
# as lr / batch stays <= ~6e-4: lr 0.05 and 0.2 at batch 32 hover at a loss of ~1 at a constant rate,
# which is why the old lr x batch corners are gone. Two more limits shaped the grid: weight decay 5e-4
# holds the loss at ~0.02 (lr 0.01 b64: 0.0208 after 400 epochs), 1e-4 does not (lr 0.04 b64: epoch 39);
# AMP's MNIST-1D eps 0.5 keeps it far above 0.01 (lr 0.01 b32: 0.038 after 200 epochs; lr 0.04 b64: 0.77
# at epoch 19), eps 0.2 gets there (lr 0.04 b64: epoch 74, eps 0.1: 68). So: 3 methods x lr 0.01/0.02/0.04
# x batch 64/128 x weight decay 0/1e-4 x 2 seeds = 72 cells. The slowest corners, lr 0.01 b128 wd 1e-4,
# stop at epoch 364 (AMP, seeds 0 and 1), 249 (SAM) and 294 (ERM, seed 1), so the cap of 800 leaves a
# 2x margin and only bounds a cell that would never get there. Cost, as one-cell sweeps (train + probe +
# baselines, CPU seconds on one thread): the fastest cell (ERM lr 0.04 b64) 6.5 s, the slowest (that AMP
# cell) 42 s; the whole default sweep took 8 min 10 s with 2 workers on 2 cores (every cell reached 0.01).
# `flatness correlate` leaves out (and counts) any cell that misses the stop loss.
DEFAULT_GRID = "method=erm,amp,sam lr=0.01,0.02,0.04 batch_size=64,128 weight_decay=0,0.0001 epsilon=0.2"
DEFAULT_SEEDS = "0,1"
DEFAULT_STOP_LOSS = 0.01
DEFAULT_STOP_CAP = 800
STOP_SCHEDULE = "constant"
# A sweep without a stop loss (--grid, or --quick, without --stop-loss): cosine over DEFAULT_EPOCHS, as
# before (train's default step schedule would cut the rate 100x after 9 epochs).
DEFAULT_EPOCHS = 60
DEFAULT_SCHEDULE = "cosine"
# --quick: 8 cells on 2 epochs with a cheap probe (the tests' size: well under 3 minutes).
QUICK_GRID = "method=erm,sam lr=0.02,0.1 weight_decay=0,0.0005"
QUICK_SEEDS = "0"
QUICK_EPOCHS = 2


def default_dataset() -> str:
    """MNIST-1D (a real generalisation gap) when this flatness has it, else the offline digits."""
    return "mnist1d" if "mnist1d" in dataset_names() else "digits"


def default_model(dataset: str) -> str:
    """The dataset's own default model where it names one, else ``flatness train``'s default."""
    return getattr(dataset_info(dataset), "default_model", None) or TrainConfig().model


def probe_options(quick: bool) -> dict[str, Any]:
    """What every cell's probe measures: top eigenvalues, the trace, every sharpness metric at one radius.

    ``quick``: the cheapest settings that still measure every one.
    """
    common = {"split": "train", "seed": 0, "progress": False, "sharpness": ["all"]}
    if quick:
        return {
            **common,
            "samples": 256,
            "batch_size": 256,
            "top_k": 2,
            "max_iter": 20,
            "tol": 1e-3,
            "trace": True,
            "trace_samples": 4,
            "sharpness_options": dict(QUICK_SHARPNESS),
        }
    return {
        **common,
        "samples": 1000,
        "batch_size": 500,
        "top_k": 3,
        "max_iter": 100,
        "tol": 1e-3,
        "trace": True,
        "trace_samples": 20,
        "sharpness_options": {"rhos": [0.05], "epsilons": [1e-3]},
    }


@dataclass(frozen=True)
class SweepSettings:
    """``flatness sweep``'s options (None: the default). ``shard`` is ``"I/N"``; ``workers`` None: the cores.

    ``checked()`` is the one check of every option; ``plan`` builds the work from the checked copy.
    """

    out: str
    grid: str | None = None
    seeds: str | None = None
    dataset: str | None = None
    model: str | None = None
    workers: int | None = None
    engine: str = "local"
    address: str | None = None
    shard: str | None = None
    quick: bool = False
    epochs: int | None = None
    stop_loss: float | None = None  # None: DEFAULT_STOP_LOSS for the default grid, no stop criterion otherwise
    device: str = "auto"
    data_dir: str | None = None
    progress: bool = False
    log: str = "none"  # "tensorboard": each cell's curves in its run folder; `tensorboard --logdir OUT`
    loss: str | None = None  # --loss / --output of every cell (flatness.sources.losses)
    output: str | None = None

    def checked(self) -> SweepSettings:
        """Every option checked, as a copy with the defaults resolved (seeds, dataset, model, workers).

        ``grid`` stays None for the default grid (whose cells train to ``DEFAULT_STOP_LOSS``; ``plan``).

        Raises:
            FlatnessError: one line naming the option.
        """
        engine = self.engine.lower()
        engines.check_engine(engine)
        check_logger(self.log)
        if engine == "ray":
            engines.check_ray_address(self.address)  # a cluster that does not answer: one line now, not a wait
        parse_shard(self.shard)
        if self.workers is not None:
            check_count(self.workers, "--workers", maximum=engines.MAX_WORKERS)
        if self.epochs is not None:
            check_count(self.epochs, "--epochs")
        check_stop_loss(self.stop_loss)
        if self.grid is not None and not self.grid.strip():
            raise FlatnessError("the grid is empty: give KEY=V1,V2 entries, or leave --grid out for the default grid")
        dataset = self.dataset or default_dataset()
        return dataclasses.replace(
            self,
            engine=engine,
            seeds=self.seeds if self.seeds is not None else (QUICK_SEEDS if self.quick else DEFAULT_SEEDS),
            dataset=dataset,
            model=self.model or default_model(dataset),
            workers=engines.default_workers(self.workers),  # the cores (one thread per cell) unless given
        )


@dataclass
class SweepPlan:
    """A checked sweep: the cells in their fixed order, this shard's share, and what is frozen."""

    settings: SweepSettings
    cells: list[Cell]
    mine: list[Cell]
    axes: list[str]
    train: dict[str, Any]
    probe: dict[str, Any]
    frozen: dict[str, Any]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` as (I, N) with 0 <= I < N; None is the whole sweep (0, 1)."""
    if text is None:
        return 0, 1
    index, sep, count = str(text).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise FlatnessError(f"--shard takes I/N (e.g. 0/4), got {text!r}") from None
    if not sep or n < 1 or not 0 <= i < n:
        raise FlatnessError(f"--shard I/N needs 0 <= I < N (shards are numbered from 0), got {text!r}")
    return i, n


def plan(settings: SweepSettings) -> SweepPlan:
    """Check every option and every cell's training config before anything starts.

    Args:
        settings: the options as given.

    Returns:
        The plan; raises FlatnessError (one line) for any bad input.
    """
    s = settings.checked()
    shard = parse_shard(s.shard)
    grid = parse_grid(s.grid if s.grid is not None else (QUICK_GRID if s.quick else DEFAULT_GRID))
    seeds = parse_seeds(s.seeds)
    cells = expand(grid, seeds)
    dataset, model = s.dataset, s.model
    train = {"dataset": dataset, "model": model, "device": s.device, **_schedule(s)}
    if s.data_dir:
        train["data_dir"] = s.data_dir
    train.update({k: v for k, v in (("loss", s.loss), ("output", s.output)) if v is not None})
    probe = {**probe_options(s.quick), "device": s.device}
    if s.data_dir:
        probe["data_dir"] = s.data_dir
    ProbeSettings.from_dict(probe).checked()
    for cell in cells:
        build_config(cell_train_options(train, cell))  # every cell's config checked now, not mid-sweep
    frozen = {
        "grid": {k: v for k, v in grid.items()},
        "seeds": seeds,
        "dataset": dataset,
        "model": model,
        "quick": s.quick,
        "train": train,
        "probe": {k: v for k, v in probe.items() if k != "device"},
    }
    mine = cells[shard[0] :: shard[1]]
    return SweepPlan(s, cells, mine, varied_keys(cells), train, probe, frozen)


def _schedule(s: SweepSettings) -> dict[str, Any]:
    """The training length and schedule of every cell: to a stop loss at a constant rate, or cosine over the epochs.

    A stop loss is the default of the default grid only (``DEFAULT_STOP_LOSS``); ``--stop-loss`` sets it
    for any grid. A grid's ``schedule`` or ``epochs`` key still overrides these per cell.
    """
    default_grid = s.grid is None and not s.quick
    stop_loss = s.stop_loss if s.stop_loss is not None else (DEFAULT_STOP_LOSS if default_grid else None)
    if stop_loss is None:
        epochs = s.epochs or (QUICK_EPOCHS if s.quick else DEFAULT_EPOCHS)
        return {"schedule": DEFAULT_SCHEDULE, "epochs": epochs}
    epochs = s.epochs or (QUICK_EPOCHS if s.quick else DEFAULT_STOP_CAP)
    return {"schedule": STOP_SCHEDULE, "epochs": epochs, "stop_loss": stop_loss}


def cell_train_options(train: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """The ``build_config`` values of one cell: the sweep's base options, its hyperparameters, its seed."""
    return {**train, **cell.values, "seed": cell.seed}


def _check_state(out: str, frozen: dict[str, Any]) -> None:
    """Write ``sweep.json`` on the first run; refuse a rerun or shard whose results would differ."""
    path = os.path.join(out, STATE)
    with cellmod.waiting_lock(path, "sweep state", timeout=600):
        now = json.loads(json.dumps(frozen))
        if os.path.isfile(path):
            stored = _stored_state(path)
            for key in FROZEN:
                if stored[key] != now.get(key):
                    raise FlatnessError(
                        f"{out} holds a sweep made with other {key} settings ({stored[key]!r}, now "
                        f"{now.get(key)!r}); rerun with the same options to resume it, or choose "
                        "another --out"
                    )
            return
        atomic_write_json(path, {"format": "flatness-sweep", "frozen": now})


def _stored_state(path: str) -> dict[str, Any]:
    """The settings ``sweep.json`` froze; a damaged or foreign file is refused, never read as "no settings".

    Reading it as empty would let any other grid (or model, or data) into the folder beside the cells
    already there.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError) as err:
        state = None
        reason = f"unreadable ({type(err).__name__})"
    else:
        reason = "not a flatness sweep record"
    frozen = state.get("frozen") if isinstance(state, dict) and state.get("format") == "flatness-sweep" else None
    missing = [k for k in FROZEN if k not in frozen] if isinstance(frozen, dict) else list(FROZEN)
    if missing:
        if isinstance(frozen, dict):
            reason = f"it lacks the {missing[0]} setting"
        raise FlatnessError(
            f"{path} is damaged ({reason}), so this folder's settings are unknown and other cells could be mixed "
            "in; restore the file, or choose another --out"
        )
    return frozen


def task_for(p: SweepPlan, cell: Cell) -> cellmod.CellTask:
    """What a worker needs to do ``cell`` of plan ``p``."""
    return cellmod.CellTask(
        out=p.settings.out,
        name=cell.name,
        train=cell_train_options(p.train, cell),
        probe=p.probe,
        extra={"params": {k: v for k, v in cell.params if k in p.axes}, "log": p.settings.log},
    )


def rebuild_table(p: SweepPlan) -> str:
    """``cells.csv`` from every finished cell folder, in the grid's order (all shards' cells)."""
    records = []
    for cell in p.cells:
        record = cellmod.read_outcome(os.path.join(p.settings.out, cellmod.CELLS, cell.name))
        if record is not None:
            records.append(record)
    return cellmod.write_table(p.settings.out, records, p.axes)


def run_sweep(settings: SweepSettings, echo=print) -> dict[str, Any]:
    """Run (or resume) a sweep's cells (this shard's share) and write ``DIR/cells.csv``.

    Args:
        settings: the options.
        echo: where one-line messages go (None: nowhere).

    Returns:
        {out, table, cells (all), ran (this call's cells), done, failed, failures (``(cell, error)`` of
        every failed cell of this shard, also earlier ones), seconds}.
    """
    p = plan(settings)
    out = p.settings.out
    check_paths({}, {"--out": out}, folders=["--out"])
    if os.path.isfile(out):
        raise FlatnessError(f"--out {out} is a file; name a folder")
    os.makedirs(os.path.join(out, cellmod.CELLS), exist_ok=True)
    _check_state(out, p.frozen)
    began = time.time()
    todo = [c for c in p.mine if not cellmod.finished(cellmod.read_outcome(os.path.join(out, cellmod.CELLS, c.name)))]
    if echo and len(todo) < len(p.mine):
        echo(f"{len(p.mine) - len(todo)} of {len(p.mine)} cells already finished; running the other {len(todo)}")
    workers = p.settings.workers
    if echo and todo:  # the planned size, before the first cell starts
        epochs = max(int(cell_train_options(p.train, c).get("epochs") or 0) for c in todo)
        echo(
            plan_line(
                "sweep", f"{len(todo)} cell(s) to run of {len(p.cells)} in the grid", f"up to {epochs} epochs each"
            )
        )
    counts = {"done": 0, "failed": 0}
    bar = progress_bar(p.settings.progress, len(todo), "sweep", unit="cell", leave=True)

    def on_done(record: dict[str, Any]) -> None:
        counts["failed" if record.get("status") == "failed" else "done"] += 1
        if record.get("status") == "failed" and echo:
            bar.write(f"cell {record.get('cell')} failed: {record.get('error')}")
        rebuild_table(p)
        bar.update(1)

    tasks = [task_for(p, c) for c in todo]
    try:
        if p.settings.engine == "ray":
            engines.run_ray(
                tasks,
                workers,
                on_done,
                cellmod.run_cell,
                p.settings.address,
                gpu=p.settings.device.startswith("cuda"),
                cost=cellmod.cell_cost,
            )
        else:
            engines.run_local(tasks, workers, on_done, fn=cellmod.run_cell, cost=cellmod.cell_cost)
    finally:
        bar.close()
    table = rebuild_table(p)
    return {
        "out": out,
        "table": table,
        "cells": len(p.cells),
        "ran": len(todo),
        "done": counts["done"],
        "failed": counts["failed"],
        "failures": failures(p),
        "seconds": time.time() - began,
    }


def failures(p: SweepPlan) -> list[tuple[str, str]]:
    """``(cell, one-line error)`` of every failed cell of this shard (a rerun retries them)."""
    out = []
    for cell in p.mine:
        record = cellmod.read_outcome(os.path.join(p.settings.out, cellmod.CELLS, cell.name))
        if record is not None and record.get("status") == "failed":
            out.append((cell.name, str(record.get("error"))))
    return out


def failure_message(failed: list[tuple[str, str]], total: int) -> str:
    """One line naming the failed cells and their errors (the first few in full)."""
    shown = "; ".join(f"{name}: {error}" for name, error in failed[:3])
    more = f"; and {len(failed) - 3} more (see their failed.json)" if len(failed) > 3 else ""
    return f"{len(failed)} of {total} cells failed (rerun to retry them): {shown}{more}"
