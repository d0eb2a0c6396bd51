"""One cell of a sweep, done in its own run folder, and the ``cells.csv`` table (its one owner).

A cell's folder ``DIR/cells/<cell name>/`` is a normal run folder (``flatness train`` wrote it, so
``probe``, ``surface``, ``compare`` and ``plot`` work on it) plus:

* ``probe.json``: ``flatness probe``'s measurements of ``last.pt`` on the training probe data;
* ``measures.json``: written last, it marks the cell finished: the accuracies on the full training and
  test splits (final weights, eval mode), the gap, the test error and every measure (the probe's and
  the baselines of ``flatness.generalization.baselines``);
* ``failed.json`` instead when the cell failed (its one-line error), so the sweep goes on without it;
  a rerun tries the cell again.

Each cell runs under a lock (``DIR/cells/.<name>.cell.lock``): two processes (shards, or a rerun while
an orphaned worker finishes) never run one cell; the second waits and then reads its result. A killed
cell is resumed: training from its last finished epoch (bitwise the same weights on the CPU), the
probe and the measures from the start (both seeded), so the rerun's numbers equal an uninterrupted run's.

``cells.csv`` has one row per finished cell: ``cell``, one column per varied hyperparameter, ``seed``,
``train_acc``, ``test_acc``, ``gap`` (train − test accuracy, in points; without accuracy, e.g. a
regression loss: test − train loss, with the accuracies and ``test_error`` blank), ``test_error`` (in %),
``stopped_epoch`` (the epochs the cell trained), ``reached_stop_loss`` (true/false when the sweep trains
to a stop loss, blank otherwise), ``train_loss`` and ``test_loss`` (the run's loss on the full splits),
one column per measure, then ``status`` (done or failed) and ``error``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from flatness.core.errors import FlatnessError
from flatness.core.evaluation import evaluate
from flatness.core.fileio import atomic_write_json, atomic_write_text
from flatness.core.locking import LockBusy, exclusive
from flatness.data.probe_data import DEFAULT_BATCH_SIZE, DEFAULT_SAMPLES
from flatness.formats.checkpoint import INIT, LAST, read_checkpoint
from flatness.formats.probe_file import write_probe
from flatness.generalization.baselines import baseline_measures
from flatness.sources.loading import config_source, load_target
from flatness.study.probe import ProbeSettings, run_probe
from flatness.study.quantities import record_values
from flatness.study.runs import load_run_dir
from flatness.training.config import build_config
from flatness.training.cost import training_cost
from flatness.training.loop import train
from flatness.training.tensorboard_log import epoch_logger

CELLS = "cells"
TABLE = "cells.csv"
PROBE = "probe.json"
MEASURES = "measures.json"
FAILED = "failed.json"
LEADING = ("cell",)
OUTCOMES = (
    "seed",
    "train_acc",
    "test_acc",
    "gap",
    "test_error",
    "stopped_epoch",
    "reached_stop_loss",
    "train_loss",
    "test_loss",
)
TRAILING = ("status", "error")
LOCK_POLL_SECONDS = 0.5


@dataclass
class CellTask:
    """Everything a worker needs to do one cell (plain data: it crosses process and Ray boundaries)."""

    out: str
    name: str
    train: dict[str, Any]
    probe: dict[str, Any]
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> str:
        """The cell's run folder."""
        return os.path.join(self.out, CELLS, self.name)


def cell_cost(task: CellTask) -> float:
    """The cell's expected training cost, so that the engine starts the longest cells first.

    Args:
        task: the cell.

    Returns:
        ``flatness.training.cost.training_cost`` of its training config.
    """
    return training_cost(build_config(task.train))


def cell_lock_path(out: str, name: str) -> str:
    """The file whose lock guards cell ``name`` of the sweep in ``out``."""
    return os.path.join(out, CELLS, name + ".cell")


@contextlib.contextmanager
def waiting_lock(path: str, what: str, timeout: float | None = None):
    """``flatness.core.locking.exclusive`` on ``path``, waiting while another process holds it.

    Args:
        path: the file the lock guards.
        what: words for the lock's error message.
        timeout: give up after this many seconds (None: wait as long as it takes).

    Returns:
        A context manager holding the lock.
    """
    began = time.monotonic()
    while True:
        lock = exclusive(path, what)
        try:
            lock.__enter__()
        except LockBusy:  # only a lock someone holds is waited on; one that cannot be made is an error
            if timeout is not None and time.monotonic() - began > timeout:
                raise
            time.sleep(LOCK_POLL_SECONDS)
            continue
        break
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def finished(record: dict[str, Any] | None) -> bool:
    """Whether a cell's record (``read_outcome``) is a finished cell's; a failed cell is retried by a rerun."""
    return record is not None and record.get("status") != "failed"


def read_outcome(folder: str) -> dict[str, Any] | None:
    """A finished cell's record (``measures.json`` or ``failed.json``), None while it is not finished."""
    for name in (MEASURES, FAILED):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as handle:
                    return json.load(handle)
            except (OSError, ValueError):
                return None  # atomic writes make this a foreign file; the cell counts as unfinished
    return None


def run_cell(task: CellTask) -> dict[str, Any]:
    """Do one cell (train, probe, measures) unless it is finished; never raises for the cell's own failure.

    Args:
        task: the cell.

    Returns:
        Its record: ``cell``, ``params``, ``seed``, ``status`` ("done" or "failed"), and either
        ``train_acc``/``test_acc``/``gap``/``test_error``/``measures`` or ``error``.
    """
    os.makedirs(os.path.join(task.out, CELLS), exist_ok=True)
    with waiting_lock(cell_lock_path(task.out, task.name), "sweep cell"):
        done = read_outcome(task.folder)
        if finished(done):
            return done
        if done is not None:  # a failed cell: tried again (its run folder resumes where it stopped)
            os.unlink(os.path.join(task.folder, FAILED))
        before = torch.get_num_threads()
        # One thread per cell: workers share the cores, and the sums inside the measurements then
        # run in one fixed order whatever the number of workers (the same numbers in every engine).
        torch.set_num_threads(task.threads)
        began = time.perf_counter()
        try:
            record = _measure_cell(task)
        except Exception as err:  # a cell's failure is its row's, never the sweep's
            text = " ".join(str(err).split()) or type(err).__name__
            record = {
                "cell": task.name,
                "params": task.extra.get("params", {}),
                "seed": task.train.get("seed"),
                "status": "failed",
                "error": f"{type(err).__name__}: {text}"[:500],
                "traceback": traceback.format_exc()[-4000:],
            }
            os.makedirs(task.folder, exist_ok=True)
            atomic_write_json(os.path.join(task.folder, FAILED), record)
            return record
        finally:
            torch.set_num_threads(before)
        record["seconds"] = round(time.perf_counter() - began, 3)
        atomic_write_json(os.path.join(task.folder, MEASURES), record)
        return record


def _measure_cell(task: CellTask) -> dict[str, Any]:
    folder = task.folder
    config = build_config(task.train)
    # The sweep's own command line named the user's model, data and loss: its cells are measured with them.
    source = config_source(config)
    probe_path = os.path.join(folder, PROBE)
    if not os.path.isfile(probe_path):
        resume = os.path.isfile(os.path.join(folder, LAST))
        with epoch_logger(task.extra.get("log"), folder) as on_epoch:  # OUT/cells/NAME/tensorboard
            train(config, out_dir=folder, resume=resume, progress=False, verbose=False, on_epoch=on_epoch)
        result = run_probe(os.path.join(folder, LAST), ProbeSettings.from_dict(task.probe), source)
        write_probe(probe_path, result, force=True)
    target = load_target(os.path.join(folder, LAST), source, root=config.data_dir)
    init_model = load_target(os.path.join(folder, INIT), source, root=config.data_dir).model
    outcome = _accuracies(target, config)
    outcome["stopped_epoch"] = target.info["epoch"]
    stop = _stop_record(os.path.join(folder, LAST))
    outcome["reached_stop_loss"] = None if config.stop_loss is None else bool(stop.get("reached"))
    measures = _probe_measures(folder)
    measures.update(_baselines(target, init_model, task.probe))
    return {
        "cell": task.name,
        "params": task.extra.get("params", {}),
        "seed": config.seed,
        "status": "done",
        **outcome,
        "measures": measures,
    }


def _stop_record(path: str) -> dict[str, Any]:
    return (read_checkpoint(path).get("extra") or {}).get("stop") or {}


def _accuracies(target, config) -> dict[str, float | None]:
    """Train and test accuracy (in %) and loss of the final weights on the full splits (eval mode).

    Without accuracy (a regression loss) the gap is the loss gap, test − train loss, and the test
    error is absent: ``flatness correlate`` says which gap it ranks against.
    """
    losses, accs = {}, {}
    for split in ("train", "test"):
        data = target.probe_data(split, None, DEFAULT_BATCH_SIZE, _cpu(), root=config.data_dir)
        losses[split], acc = evaluate(target.model, data, target.loss_fn, output_fn=target.output_fn)
        accs[split] = None if acc is None else 100.0 * acc
    if accs["train"] is None or accs["test"] is None:
        gap, error = losses["test"] - losses["train"], None
    else:
        gap, error = accs["train"] - accs["test"], 100.0 - accs["test"]
    return {
        "train_acc": accs["train"],
        "test_acc": accs["test"],
        "train_loss": losses["train"],
        "test_loss": losses["test"],
        "gap": gap,
        "test_error": error,
    }


def _cpu():
    """The CPU: a cell's evaluations run there, as its probe data is read."""
    return torch.device("cpu")


def _probe_measures(folder: str) -> dict[str, float]:
    """The probe's flatness measures under ``flatness compare``'s names (λ's, trace, sharpness)."""
    values = record_values(load_run_dir(folder))
    return {k: v for k, v in values.items() if k.startswith(("lambda_", "sharp:")) or k == "trace"}


def _baselines(target, init_model, probe: dict[str, Any]) -> dict[str, float | None]:
    data = target.probe_data(
        "train",
        probe.get("samples", DEFAULT_SAMPLES),
        probe.get("batch_size", DEFAULT_BATCH_SIZE),
        _cpu(),
        root=probe.get("data_dir"),
    )
    return baseline_measures(target.model, init_model, data, target.loss_fn, target.output_fn)


# --------------------------------------------------------------------------- the table


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


def table_text(records: Sequence[dict[str, Any]], axes: Sequence[str]) -> str:
    """``cells.csv`` for the given cell records (in their order).

    Args:
        records: cell records from ``run_cell`` / ``read_outcome``.
        axes: the varied hyperparameters (their columns, in this order).

    Returns:
        The CSV text; measures as columns in order of first appearance.
    """
    measures: list[str] = []
    for r in records:
        measures.extend(k for k in (r.get("measures") or {}) if k not in measures)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(LEADING) + list(axes) + list(OUTCOMES) + measures + list(TRAILING))
    for r in records:
        params, values = r.get("params") or {}, r.get("measures") or {}
        row = [r.get("cell")] + [params.get(a) for a in axes] + [r.get(k) for k in OUTCOMES]
        row += [values.get(m) for m in measures] + [r.get("status"), r.get("error")]
        writer.writerow([_cell_text(v) for v in row])
    return buf.getvalue()


def write_table(out: str, records: Sequence[dict[str, Any]], axes: Sequence[str]) -> str:
    """Write ``DIR/cells.csv`` atomically under its lock (shards share it); returns its path."""
    path = os.path.join(out, TABLE)
    with waiting_lock(path, "cells table", timeout=600):
        atomic_write_text(path, table_text(records, axes))
    return path


def _parse(text: str) -> Any:
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def read_table(path: str) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Read a ``cells.csv``.

    Args:
        path: the file, or the sweep folder holding it.

    Returns:
        (rows as dicts with numbers as floats, ``reached_stop_loss`` as a bool and blanks as None, the
        hyperparameter columns, the
        measure columns); raises FlatnessError when it is missing or not a cells table.
    """
    if os.path.isdir(path):
        path = os.path.join(path, TABLE)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
    except OSError as err:
        raise FlatnessError(f"cannot read {path}: {err.strerror or err} (is it a sweep folder?)") from None
    if not rows or rows[0][:1] != list(LEADING) or "seed" not in rows[0] or rows[0][-2:] != list(TRAILING):
        raise FlatnessError(f"{path} is not a flatness cells table (no cell/seed/status columns)")
    head = rows[0]
    # a table written before stopped_epoch/reached_stop_loss existed ends its outcomes at test_error
    seed_at, last_outcome = head.index("seed"), max(head.index(k) for k in OUTCOMES if k in head)
    axes, measures = head[1:seed_at], head[last_outcome + 1 : -2]
    out = []
    for raw in rows[1:]:
        row = {k: _parse(v) for k, v in zip(head, raw)}
        for key in ("cell", "status", "error") + tuple(axes):
            row[key] = raw[head.index(key)] or None
        if "reached_stop_loss" in row:
            row["reached_stop_loss"] = {"true": True, "false": False}.get(raw[head.index("reached_stop_loss")])
        out.append(row)
    return out, axes, measures
