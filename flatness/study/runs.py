"""The runs a comparison pools: reading the inputs into ``RunRecord``s, and the checks before pooling.

Only seeds of one setting are pooled as one method (``check_poolable``).

Inputs are run folders (``config.json``, ``metrics.jsonl`` and the probe JSONs found inside, e.g.
``DIR/probe.json``; surface files inside are used for the figures), probe JSON files, or surface .h5
files. Tables and figures list the methods in ``flatness.training.config.METHODS`` order, then any others.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from typing import Any

from flatness.core.errors import FlatnessError
from flatness.formats.checkpoint import CONFIG, METRICS, read_metrics, read_run_config
from flatness.formats.probe_file import is_probe_file
from flatness.formats.surface_file import is_surface_file
from flatness.plot.loading import load_probe
from flatness.study.quantities import record_values
from flatness.study.run_record import RunRecord
from flatness.training.config import METHODS

BASELINE = "erm"
PROBE_NAMES = ("probe.json", "probe-train.json")

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


# --------------------------------------------------------------------------- method order


def sorted_methods(methods: Iterable[str]) -> list[str]:
    """Distinct method names in the tables' order: ERM, AMP, SAM, then any others alphabetically.

    Args:
        methods: method names, repeats allowed (e.g. one per run).

    Returns:
        Each name once, in that order.
    """
    return sorted(set(methods), key=lambda m: (METHODS.index(m) if m in METHODS else len(METHODS), m))


def in_method_order(methods) -> list[str]:
    """Method names in the report's order (ERM, AMP, SAM, then any others as given)."""
    return [m for m in METHODS if m in methods] + [m for m in methods if m not in METHODS]


# --------------------------------------------------------------------------- reading one input


def _find_probe(run_dir: str) -> str | None:
    for name in PROBE_NAMES:
        path = os.path.join(run_dir, name)
        if os.path.isfile(path):
            return path
    for path in sorted(glob.glob(os.path.join(run_dir, "*.json"))):
        if os.path.basename(path) != CONFIG and is_probe_file(path):
            return path
    return None


def _find_surfaces(run_dir: str) -> list[str]:
    return [path for path in sorted(glob.glob(os.path.join(run_dir, "*.h5"))) if is_surface_file(path)]


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
    probe = load_probe(probe_path) if probe_path else None
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
    probe = load_probe(path)
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


# --------------------------------------------------------------------------- pooling the inputs


def collect_runs(inputs: Sequence[str]) -> tuple[list[RunRecord], list[str]]:
    """Read every input, fill each run's values, and check that the runs may be pooled.

    Args:
        inputs: run folders, probe JSON files and surface .h5 files.

    Returns:
        ``(records, extra surface files)``.
    """
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
