"""A run folder before training starts: whether ``--out`` may be started or resumed.

It owns the config a stored run had (``stored_config``, ``resume_config``; ``prepare_folder`` refuses
changes beyond ``RESUMABLE_CHANGES``), the temporaries a killed run left, and ``metrics.jsonl``. The
checkpoint files themselves are ``flatness.formats.checkpoint``'s.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from flatness.core.errors import FlatnessError
from flatness.core.fileio import atomic_write_text
from flatness.formats import checkpoint as ckpt
from flatness.sources.loading import is_code_reference
from flatness.training import stopping
from flatness.training.config import RESUMABLE_CHANGES, TrainConfig

_FIRST_FILES = (ckpt.CONFIG, ckpt.INIT, ckpt.snapshot_name(0), ckpt.METRICS)


def stored_config(out_dir: str) -> TrainConfig:
    """The configuration of the run in ``out_dir``, for resuming it.

    It comes from last.pt; a run stopped before its first last.pt gives its config.json (resuming it
    starts it over).
    """
    last = _resumable(out_dir)
    if last is None:
        try:  # a missing or unreadable config.json: nothing to resume either
            values = ckpt.read_run_config(out_dir) if os.path.isfile(os.path.join(out_dir, ckpt.CONFIG)) else None
        except FlatnessError:
            values = None
        if values is None:
            raise FlatnessError(
                f"nothing to resume in {out_dir} (it was stopped before its first checkpoint); "
                "run the same command without --resume to start it over"
            )
        return TrainConfig.from_dict(values, strict=False)
    return TrainConfig.from_dict(_own_checkpoint(out_dir, last)["config"], strict=False)


def resume_config(out_dir: str, explicit: dict[str, Any]) -> TrainConfig:
    """The stored config of ``out_dir`` with the explicitly given values applied.

    ``train`` then refuses any value that may not change on resume.

    Args:
        out_dir: the run folder to resume.
        explicit: the options the user typed.

    Returns:
        The validated config.
    """
    values = stored_config(out_dir).to_dict()
    values["download"] = False  # a stored file never decides where to download (write) to: only the user
    # A run folder never makes flatness run the code it names: the command line must name it again.
    for key in ("model", "dataset", "loss", "output"):
        if is_code_reference(values.get(key)) and key not in explicit:
            raise FlatnessError(
                f"{out_dir} was trained with --{key} {values[key]}: pass --{key} {values[key]} "
                "again to resume it (a run folder never makes flatness run the code it names)"
            )
    values.update({k: v for k, v in explicit.items() if k != "recipe" or v is not None})
    return TrainConfig.from_dict(values).checked()


def prepare_folder(
    config: TrainConfig, out_dir: str, resume: bool, main_rank: bool
) -> tuple[dict[str, Any] | None, TrainConfig]:
    """Check ``out_dir`` for a new run or a resume, and clear a killed run's temporaries.

    A folder stopped before its first last.pt is started over, even when asked to resume it.

    Args:
        config: the validated config asked for.
        out_dir: the run folder.
        resume: continue the run stored in ``out_dir``.
        main_rank: this process writes the run folder (only it removes temporaries).

    Returns:
        ``(the last.pt payload or None for a new run, the config to train with)``.
    """
    _check_out(out_dir, resume)
    if resume and _resumable(out_dir) is None:
        resume = False  # stopped before its first checkpoint: start it over
    if main_rank:
        _remove_own_temps(out_dir)
        if not resume and _unstarted(out_dir):
            _remove_first_files(out_dir)  # a run that never finished an epoch: started over from nothing
    if not resume:
        return None, config
    return _resumed(out_dir, config)


def _check_out(out_dir: str, resume: bool) -> None:
    if os.path.isfile(out_dir):
        raise FlatnessError(f"--out {out_dir} is a file, not a run folder; choose another --out")
    if resume:
        _resumable(out_dir)
    elif os.path.isdir(out_dir) and os.listdir(out_dir) and not _unstarted(out_dir):
        raise FlatnessError(
            f"{out_dir} already exists and is not empty; pass --resume to continue that run, or choose another --out"
        )


def _resumable(out_dir: str) -> str | None:
    """``out_dir``'s last.pt; None for a run stopped before its first last.pt (it starts over)."""
    if os.path.isfile(out_dir):
        raise FlatnessError(f"--out {out_dir} is a file, not a run folder")
    last = os.path.join(out_dir, ckpt.LAST)
    if not os.path.isfile(last):
        if _unstarted(out_dir) and os.listdir(out_dir):
            return None
        raise FlatnessError(f"nothing to resume in {out_dir} (no {ckpt.LAST}); run without --resume to start it")
    return last


def _resumed(out_dir: str, config: TrainConfig) -> tuple[dict[str, Any], TrainConfig]:
    """The stored state of the run in ``out_dir`` and the config to go on with.

    Args:
        out_dir: the run folder.
        config: the config asked for.

    Returns:
        (the last.pt payload, the stored config with the resumable changes applied); raises
        FlatnessError for any other change, and for fewer epochs than the run has done.
    """
    state = _own_checkpoint(out_dir, os.path.join(out_dir, ckpt.LAST))
    stored = TrainConfig.from_dict(state["config"], strict=False).checked().to_dict()
    given = config.to_dict()
    changed = [k for k in stored if k not in RESUMABLE_CHANGES and k != "recipe" and stored[k] != given[k]]
    if changed:
        k = changed[0]
        raise FlatnessError(
            f"cannot change {k} when resuming {out_dir} (the run has {k}={stored[k]!r}, "
            f"given {given[k]!r}); drop the option or start a new run with another --out"
        )
    stored.update({k: given[k] for k in RESUMABLE_CHANGES})
    config = TrainConfig.from_dict(stored).checked()
    finished = int(state["epoch"])
    if config.epochs < finished:  # fewer epochs than done: neither shrink the record nor its config
        raise FlatnessError(
            f"{out_dir} has already trained {finished} epochs; --epochs {config.epochs} "
            f"would not undo them: give --epochs {finished} or more to continue, or choose "
            "another --out for a shorter run"
        )
    return state, config


def _own_checkpoint(out_dir: str, last: str) -> dict[str, Any]:
    """``last``'s payload, refused unless it is the checkpoint of the run that ``out_dir``'s config.json records.

    A last.pt copied in from another run would otherwise be resumed as that run, and its config would
    replace this folder's config.json. The two configs must agree on everything but what a resume may
    change (``RESUMABLE_CHANGES``: config.json is rewritten with those before the next last.pt).
    A folder without config.json has no record to compare with.
    """
    state = ckpt.read_checkpoint(last)
    recorded = ckpt.read_run_config(out_dir)
    if not recorded:
        return state
    mine = TrainConfig.from_dict(recorded, strict=False).to_dict()
    theirs = TrainConfig.from_dict(state["config"], strict=False).to_dict()
    differ = [k for k in mine if k not in RESUMABLE_CHANGES and k != "recipe" and mine[k] != theirs.get(k)]
    if differ:
        k = differ[0]
        raise FlatnessError(
            f"{last} is not this run's checkpoint: it was trained with {k}={theirs.get(k)!r}, and "
            f"{os.path.join(out_dir, ckpt.CONFIG)} records {k}={mine[k]!r} (a file copied in from another "
            "run?); put back the run's own last.pt, or choose another --out"
        )
    return state


def _own_temp(name: str) -> bool:
    """A temporary file of flatness.core.fileio's atomic writes (``.NAME.XXXX.tmp``) left by a killed run."""
    return (
        name.startswith(".")
        and name.endswith(".tmp")
        and any(name.startswith(f".{f}.") for f in _FIRST_FILES + (ckpt.LAST,))
        or bool(name.startswith(".epoch-") and name.endswith(".tmp"))
    )


def _unstarted(out_dir: str) -> bool:
    """Whether ``out_dir`` is a run whose first ``train`` stopped before it finished an epoch.

    Only the files train writes first (config.json, init.pt, epoch-000.pt, metrics.jsonl, their
    temporaries) are there, and last.pt, if there, is still at epoch 0 (a run that failed in its first
    epoch: a plain rerun starts it over instead of being refused as "not empty").
    """
    if not os.path.isdir(out_dir):
        return False
    if not all(n in _FIRST_FILES or n == ckpt.LAST or _own_temp(n) for n in os.listdir(out_dir)):
        return False
    last = os.path.join(out_dir, ckpt.LAST)
    if not os.path.exists(last):
        return True
    if ckpt.finished_epochs(out_dir) > 0:
        return False
    try:
        state = ckpt.read_checkpoint(last)
    except FlatnessError:
        return False  # a damaged last.pt is not ours to replace
    return state["epoch"] == 0 and stopping.stored_record(state) is None  # a run ended at epoch 0 is done


def _remove_first_files(out_dir: str) -> None:
    """The first files of a run that never finished an epoch (``_unstarted``), before it starts over."""
    for name in (*_FIRST_FILES, ckpt.LAST):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(out_dir, name))


def _remove_own_temps(out_dir: str) -> None:
    """Temporaries of atomic writes that a SIGKILL cut short (never read; removed under the lock)."""
    if os.path.isdir(out_dir):
        for name in os.listdir(out_dir):
            if _own_temp(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(out_dir, name))


def write_metrics(out_dir: str, metrics: list[dict[str, Any]]) -> None:
    """Rewrite ``out_dir``'s metrics.jsonl atomically, one JSON line per finished epoch.

    Args:
        out_dir: the run folder.
        metrics: the run's epoch records so far.
    """
    atomic_write_text(os.path.join(out_dir, ckpt.METRICS), "".join(json.dumps(m) + "\n" for m in metrics))
