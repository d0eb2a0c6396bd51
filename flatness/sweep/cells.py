"""One cell of a sweep, done in its own run folder, and the ``cells.csv`` table (its one owner).

A cell's folder ``DIR/cells/<cell name>/`` is a normal run folder (``flatness train`` wrote it, so
``probe``, ``surface``, ``compare`` and ``plot`` work on it) plus:

* ``probe.json``: ``flatness probe``'s measurements of ``last.pt`` on the training probe data;
* ``measures.json``: written last, it marks the cell finished: the accuracies on the full training and
  test splits (final weights, eval mode), the gap, the test error and every measure (the probe's and
  the baselines of ``flatness.generalization.baselines``);
* ``failed.json`` instead when the cell failed (its one-line error), so the sweep goes on without it.

Each cell runs under a lock (``DIR/cells/.<name>.cell.lock``): two processes (shards, or a rerun while
an orphaned worker finishes) never run one cell; the second waits and then reads its result. A killed
cell is resumed: training from its last finished epoch (bitwise the same weights on the CPU), the
probe and the measures from the start (both seeded), so the rerun's numbers equal an uninterrupted run's.

``cells.csv`` has one row per finished cell: ``cell``, one column per varied hyperparameter, ``seed``,
``train_acc``, ``test_acc``, ``gap`` (train − test accuracy, in points), ``test_error`` (in %),
``stopped_epoch`` (the epochs the cell trained) and ``reached_stop_loss`` (true/false when the sweep trains
to a stop loss, blank otherwise), one column per measure, then ``status`` (done or failed) and ``error``.
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

from flatness.core.errors import FlatnessError
from flatness.core.fileio import atomic_write_json, atomic_write_text

CELLS = "cells"
TABLE = "cells.csv"
PROBE = "probe.json"
MEASURES = "measures.json"
FAILED = "failed.json"
LEADING = ("cell",)
OUTCOMES = ("seed", "train_acc", "test_acc", "gap", "test_error", "stopped_epoch", "reached_stop_loss")
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
    from flatness.training.config import build_config
    from flatness.training.cost import training_cost

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
    from flatness.core.locking import LockBusy, exclusive

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
    import torch

    os.makedirs(os.path.join(task.out, CELLS), exist_ok=True)
    with waiting_lock(cell_lock_path(task.out, task.name), "sweep cell"):
        done = read_outcome(task.folder)
        if done is not None:
            return done
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
    from flatness.formats.checkpoint import INIT, LAST, load_checkpoint
    from flatness.formats.probe_file import write_probe
    from flatness.study.probe import ProbeSettings, run_probe
    from flatness.training.config import build_config
    from flatness.training.loop import train
    from flatness.training.tensorboard_log import epoch_logger

    folder = task.folder
    config = build_config(task.train)
    probe_path = os.path.join(folder, PROBE)
    if not os.path.isfile(probe_path):
        resume = os.path.isfile(os.path.join(folder, LAST))
        with epoch_logger(task.extra.get("log"), folder) as on_epoch:  # OUT/cells/NAME/tensorboard
            train(config, out_dir=folder, resume=resume, progress=False, verbose=False, on_epoch=on_epoch)
        result = run_probe(os.path.join(folder, LAST), ProbeSettings.from_dict(task.probe))
        write_probe(probe_path, result, force=True)
    model, info = load_checkpoint(os.path.join(folder, LAST))
    init_model, _ = load_checkpoint(os.path.join(folder, INIT))
    outcome = _accuracies(model, config)
    outcome["stopped_epoch"] = info["epoch"]
    outcome["reached_stop_loss"] = None if config.stop_loss is None else bool((info.get("stop") or {}).get("reached"))
    measures = _probe_measures(folder)
    measures.update(_baselines(model, init_model, info["dataset"], task.probe))
    return {
        "cell": task.name,
        "params": task.extra.get("params", {}),
        "seed": config.seed,
        "status": "done",
        **outcome,
        "measures": measures,
    }


def _accuracies(model, config) -> dict[str, float]:
    """Train and test accuracy of the final weights on the full splits (eval mode), in %."""
    from flatness.core.evaluation import evaluate
    from flatness.data.datasets import get_dataset
    from flatness.data.probe_data import DEFAULT_BATCH_SIZE, ProbeData

    accs = {}
    for split in ("train", "test"):
        dataset = get_dataset(config.dataset, split, root=config.data_dir)
        data = ProbeData.from_dataset(dataset, None, DEFAULT_BATCH_SIZE)
        accs[split] = 100.0 * evaluate(model, data)[1]
    return {
        "train_acc": accs["train"],
        "test_acc": accs["test"],
        "gap": accs["train"] - accs["test"],
        "test_error": 100.0 - accs["test"],
    }


def _probe_measures(folder: str) -> dict[str, float]:
    """The probe's flatness measures under ``flatness compare``'s names (λ's, trace, sharpness)."""
    from flatness.study.compare import load_run_dir, record_values

    values = record_values(load_run_dir(folder))
    return {k: v for k, v in values.items() if k.startswith(("lambda_", "sharp:")) or k == "trace"}


def _baselines(model, init_model, dataset: str, probe: dict[str, Any]) -> dict[str, float | None]:
    from flatness.data.probe_data import DEFAULT_BATCH_SIZE, DEFAULT_SAMPLES, load_probe_data
    from flatness.generalization.baselines import baseline_measures

    data = load_probe_data(
        dataset,
        "train",
        probe.get("samples", DEFAULT_SAMPLES),
        probe.get("batch_size", DEFAULT_BATCH_SIZE),
        root=probe.get("data_dir"),
    )
    return baseline_measures(model, init_model, data)


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
