"""The checkpoint format, and the layout of a run folder. This module alone reads and writes them.

A run folder (``flatness train --out DIR``) holds::

    DIR/config.json      the run's full configuration (JSON)
    DIR/init.pt          the initial weights (epoch 0)
    DIR/epoch-NNN.pt     trajectory snapshots (``--save-every``)
    DIR/last.pt          the newest state: weights, optimizer, scheduler, RNG, metrics -> ``--resume``
    DIR/metrics.jsonl    one JSON object per finished epoch: epoch, lr, train_loss, train_acc, test_loss,
                         test_acc, full_train_loss/full_train_acc (runs with a stop loss),
                         perturbation_norm (AMP/SAM: mean ‖δ‖ over the epoch's steps), seconds

A ``.pt`` file is a dict of tensors and plain Python data only, so ``torch.load(path,
weights_only=True)`` reads it and no code in it can ever run. It is written atomically (temporary
file, fsync, rename): a crash leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import random
import re
import warnings
import zipfile
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.core.fileio import atomic_write
from flatness.formats.integrity import check_zip_crc
from flatness.models.registry import build_from_spec
from flatness.version import __version__

FORMAT = "flatness-checkpoint"
FORMAT_VERSION = 1

LAST = "last.pt"
INIT = "init.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
# The first epoch's weights whose whole-training-set loss is <= TrainConfig.match_loss (training/stopping.py)
MATCHED = "matched.pt"
SNAPSHOT_RE = re.compile(r"^epoch-(\d{3,})\.pt$")


class ForeignCheckpointError(FlatnessError):
    """A file that torch reads safely but that holds no flatness checkpoint (a plain state_dict, say).

    The loaders catch it to try the foreign weight formats instead.
    """


def user_model_reference(spec: dict[str, Any]) -> str | None:
    """The ``--model`` reference a checkpoint's model was built from (None for a built-in model)."""
    ref = spec.get("reference") if isinstance(spec, dict) else None
    return ref if isinstance(ref, str) else None


def snapshot_name(epoch: int) -> str:
    """The file name of an epoch's snapshot, ``epoch-NNN.pt`` (zero-padded so names sort by epoch)."""
    return f"epoch-{epoch:03d}.pt"


def list_snapshots(run_dir: str) -> list[tuple[int, str]]:
    """(epoch, path) of every ``epoch-NNN.pt`` in ``run_dir``, sorted by epoch."""
    found = []
    for name in os.listdir(run_dir):
        match = SNAPSHOT_RE.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(run_dir, name)))
    return sorted(found)


# --------------------------------------------------------------------------- RNG state as plain data


def capture_rng() -> dict[str, Any]:
    """Every RNG a training run draws from, as tensors and plain data (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back every RNG state that ``capture_rng`` took, so a resumed run draws what it would have.

    CUDA states are restored only when as many devices are visible as when they were captured.

    Args:
        state: the dict from ``capture_rng`` (as stored in a checkpoint).
    """
    torch.set_rng_state(state["torch"])
    nps = state["numpy"]
    np.random.set_state(
        ("MT19937", nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"], nps["cached_gaussian"])
    )
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(obj):
    return tuple(_as_tuple(o) for o in obj) if isinstance(obj, (list, tuple)) else obj


# --------------------------------------------------------------------------- writing


def save_checkpoint(
    path: str,
    model: nn.Module,
    *,
    model_spec: dict[str, Any],
    config: dict[str, Any],
    epoch: int,
    step: int = 0,
    metrics: list[dict[str, Any]] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    scheduler_state: dict[str, Any] | None = None,
    rng: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    sources: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically. Tensors are moved to the CPU so any machine can read it.

    ``sources`` (plain data) records where a user's model and data came from: ``{"model": {"reference",
    "args", "sha256"}, "dataset": {"reference", "sha256", "normalize", ...}}``; it names code, it never
    holds any, and nothing reading the checkpoint runs what it names (``flatness.sources.loading``).
    """
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "flatness_version": __version__,
        "model_spec": model_spec,
        "model_state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": config,
        "epoch": int(epoch),
        "step": int(step),
        "metrics": list(metrics or []),
        "optimizer_state": optimizer_state,
        "scheduler_state": scheduler_state,
        "rng": rng,
        "extra": extra or {},
        "sources": sources or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write(path, lambda handle: handle.write(buffer.getbuffer()))


# --------------------------------------------------------------------------- reading


def read_checkpoint(path: str, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint's dict, read with ``weights_only=True``; any problem is a one-line FlatnessError."""
    if not os.path.exists(path):
        raise FlatnessError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        last = os.path.join(path, LAST)
        if os.path.isfile(last):
            path = last
        else:
            raise FlatnessError(f"{path} is a folder without {LAST}; name a .pt file")
    if os.path.getsize(path) == 0:
        raise FlatnessError(f"{path} is empty, not a checkpoint")
    check_zip_crc(path)  # torch reads members without their CRCs: a flipped byte would load as other weights
    try:
        with warnings.catch_warnings():  # torch warns (several lines) about foreign pickle protocols
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise FlatnessError(_unsafe_message(path, str(err))) from None
    except (
        RuntimeError,
        EOFError,
        ValueError,
        zipfile.BadZipFile,
        OSError,
        AttributeError,
        KeyError,
        IndexError,
        TypeError,
    ) as err:
        raise FlatnessError(
            f"{path} is not a readable checkpoint (truncated or corrupt?): {type(err).__name__}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ForeignCheckpointError(
            f"{path} is not a flatness checkpoint (no '{FORMAT}' marker); a plain "
            "state_dict or .safetensors file needs --model, a .pt2 program nothing"
        )
    version = payload.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise FlatnessError(f"{path} is a damaged flatness checkpoint: 'format_version' is not a number")
    if version > FORMAT_VERSION:
        raise FlatnessError(f"{path} was written by a newer flatness (format {version}); upgrade")
    for key, kind in (("model_spec", dict), ("model_state", dict), ("config", dict), ("epoch", int)):
        if key not in payload:
            raise FlatnessError(f"{path} is a damaged flatness checkpoint: '{key}' is missing")
        if not isinstance(payload[key], kind) or isinstance(payload[key], bool):
            raise FlatnessError(f"{path} is a damaged flatness checkpoint: '{key}' is not a {kind.__name__}")
    if not isinstance(payload.get("step", 0), int) or not isinstance(payload.get("metrics", []), list):
        raise FlatnessError(f"{path} is a damaged flatness checkpoint: 'step' or 'metrics' has the wrong type")
    payload["path"] = path
    return payload


_GLOBAL_RE = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")


def _unsafe_message(path: str, text: str) -> str:
    """One line for a file torch's weights_only unpickler refused.

    It names the object the file wanted and never suggests loading it unsafely (torch's own message does).
    """
    found = _GLOBAL_RE.search(text)
    if found:
        return (
            f"refusing to load {path}: it asks to run or build '{found.group(1)}' when unpickled, and a "
            "checkpoint may hold only tensors and plain data (it may be malicious or from another tool); "
            "nothing in it was run"
        )
    return (
        f"{path} is not a readable checkpoint: the safe unpickler (weights_only) rejected it as corrupt "
        "or not a checkpoint; nothing in it was run"
    )


def check_state_finite(state: dict[str, Any], path: str) -> None:
    """FlatnessError when a stored ``model_state`` holds NaN or Inf (for states used without a model)."""
    for name, tensor in state.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FlatnessError(
                f"{path}: weights are not finite (NaN or Inf in '{name}'); "
                "the run diverged before this checkpoint was written"
            )


def check_finite(model: nn.Module, path: str) -> None:
    """Refuse a model whose weights hold NaN or Inf (a diverged run), naming the checkpoint.

    Args:
        model: the rebuilt model.
        path: the checkpoint it came from, for the message.
    """
    check_state_finite(model.state_dict(), path)


def load_checkpoint(path: str, device: Any = "cpu", require_finite: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in ``path`` and return ``(model, info)``; the model is in eval mode.

    ``info`` has ``dataset``, ``model``, ``method``, ``epoch``, ``step``, ``config``, ``metrics``,
    ``model_spec`` and ``path``; a run folder may be given for its ``last.pt``.
    """
    payload = read_checkpoint(path)
    reference = user_model_reference(payload["model_spec"])
    if reference is not None:
        raise FlatnessError(
            f"{payload['path']} holds a model built by {reference}: a checkpoint never makes "
            f"flatness run code, so pass --model {reference} (in Python: "
            "flatness.sources.loading.load_target)"
        )
    try:
        model = build_from_spec(payload["model_spec"])
        model.load_state_dict(payload["model_state"])
    except (KeyError, TypeError, RuntimeError, ValueError, AttributeError, OverflowError, MemoryError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise FlatnessError(f"{path}: the stored weights do not fit the stored model spec ({first})") from None
    if require_finite:
        check_finite(model, payload["path"])
    model.to(device).eval()
    config = payload["config"]
    info = {
        "path": payload["path"],
        "dataset": config.get("dataset"),
        "model": payload["model_spec"]["name"],
        "method": config.get("method"),
        "epoch": payload["epoch"],
        "step": payload.get("step", 0),
        "config": config,
        "metrics": payload.get("metrics", []),
        "model_spec": payload["model_spec"],
        "flatness_version": payload.get("flatness_version"),
        # how a run with a stop loss ended ({"stop_loss", "epoch", "reached"}; flatness.training.stopping)
        "stop": (payload.get("extra") or {}).get("stop"),
    }
    return model, info


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """A run folder's ``metrics.jsonl``: one record per finished epoch, in epoch order.

    A line cut short by a crash is skipped, as is a record without a whole-number ``epoch``, and an
    epoch logged twice (a resumed run) keeps its last record. A folder without the file has no finished epoch.

    Args:
        run_dir: the run folder.

    Returns:
        The epoch records (empty when there are none).
    """
    path = os.path.join(run_dir, METRICS)
    if not os.path.isfile(path):
        return []
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue  # a line cut by a crash
    except OSError as err:
        raise FlatnessError(f"cannot read {path}: {err.strerror or err}") from None
    by_epoch: dict[int, dict[str, Any]] = {}
    for row in rows:
        epoch = row.get("epoch") if isinstance(row, dict) else None
        # a record without a whole-number epoch (hand-edited, foreign) is no finished epoch: skipped, so it
        # can neither take a real epoch's place nor make the sort compare text with numbers
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            by_epoch[epoch] = row
    return [by_epoch[k] for k in sorted(by_epoch)]


def metric_tag(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl field: losses and accuracies in their own sections.

    Args:
        key: a field of an epoch's record (``train_loss``, ``test_acc``, ``lr``, ...).

    Returns:
        e.g. ``loss/train_loss``, ``accuracy/test_acc``, ``lr``.
    """
    if key.endswith("_loss"):
        return f"loss/{key}"
    if key.endswith("_acc"):
        return f"accuracy/{key}"
    return key


def metric_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The curves of one epoch's record: every finite number but the epoch, by tag.

    What ``flatness train --log tensorboard`` writes as scalars and ``flatness plot RUN`` draws.

    Args:
        record: one line of metrics.jsonl.

    Returns:
        ``{tag: value}``.
    """
    out = {}
    for key, value in record.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[metric_tag(key)] = float(value)
    return out


def finished_epochs(run_dir: str) -> int:
    """The last epoch a run folder's ``metrics.jsonl`` records as finished (0 when none).

    Args:
        run_dir: the run folder.

    Returns:
        The epoch number.
    """
    epochs = [row.get("epoch") for row in read_metrics(run_dir)]
    return max((int(e) for e in epochs if isinstance(e, (int, float)) and not isinstance(e, bool)), default=0)


def read_run_config(run_dir: str) -> dict[str, Any]:
    """A run folder's ``config.json`` (the run's full configuration); ``{}`` when the file is missing.

    Args:
        run_dir: the run folder.

    Returns:
        The configuration as plain data.
    """
    path = os.path.join(run_dir, CONFIG)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError) as err:
        raise FlatnessError(f"{path} is not readable JSON ({type(err).__name__})") from None
    if not isinstance(config, dict):
        raise FlatnessError(f"{path} is not a run configuration (not a JSON object)")
    return config
