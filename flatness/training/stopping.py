"""Training to a fixed training loss (``TrainConfig.stop_loss``, ``flatness train --stop-loss X``).

Jiang et al. (2020, "Fantastic generalization measures and where to find them") compare models trained
to the same training cross-entropy (0.01), so that no measure can look predictive merely because some
models underfit. After every epoch the loop measures the loss over the whole training set (eval mode,
no augmentation, the exact mean of ``flatness.core.evaluation.evaluate``); the run ends after the first
epoch where it is <= X, and ``epochs`` is only the cap.

The run records its end in every full checkpoint's ``extra["stop"]`` (``STOP_KEY``) once it has ended:
``{"stop_loss": X, "epoch": the last epoch trained, "reached": whether the loss got to X}``; each
epoch's metrics record carries the measured ``full_train_loss`` and ``full_train_acc``. The measurement
draws no random numbers, so a run killed before its stop resumes to bitwise the same result.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from flatness.core import distributed
from flatness.core.errors import FlatnessError
from flatness.core.evaluation import evaluate
from flatness.data.datasets import get_dataset
from flatness.data.probe_data import ProbeData

STOP_KEY = "stop"


def check_stop_loss(value: Any, name: str = "stop_loss") -> None:
    """Refuse a stop (or match) loss that is not a finite number > 0 (one-line FlatnessError).

    Args:
        value: the ``stop_loss`` option (None: no stop criterion, accepted).
        name: the option's name in the message.
    """
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise FlatnessError(f"{name} must be a finite number > 0 (a training cross-entropy), got {value!r}")


def whole_train_data(config, train_set, device: torch.device, batch_size: int) -> ProbeData | None:
    """The whole training split without augmentation, as exact-mean evaluation batches (None: no stop_loss).

    Args:
        config: the run's ``TrainConfig`` (``stop_loss``, ``augment``, ``dataset``, ``data_dir``).
        train_set: the split the run trains on (used as it is when it is not augmented).
        device: where the batches are kept.
        batch_size: examples per evaluation batch.

    Returns:
        The evaluation data, or None when the run has neither a stop loss nor a match loss.
    """
    if config.stop_loss is None and getattr(config, "match_loss", None) is None:
        return None
    if config.augment:  # augmentation exists for the built-in datasets only (sources.loading refuses others)
        train_set = get_dataset(config.dataset, "train", root=config.data_dir, augment=False)
    return ProbeData.from_dataset(train_set, None, batch_size, device)


def measure(model: torch.nn.Module, data: ProbeData | None, loss_fn=None, output_fn=None) -> dict[str, float]:
    """The metrics-record fields of the whole-training-set measurement ({} when there is none).

    Args:
        model: the model after the epoch.
        data: from ``whole_train_data``.
        loss_fn: the run's loss (None: cross-entropy).
        output_fn: what of the model's output the loss sees.

    Returns:
        ``{"full_train_loss", "full_train_acc"}`` (the exact means over every training example).
    """
    if data is None:
        return {}
    loss, acc = evaluate(model, data, loss_fn, output_fn)
    if distributed.is_distributed():  # every rank must take the same stop decision: rank 0's numbers
        loss, acc = distributed.broadcast_object((loss, acc))
    return {"full_train_loss": loss, "full_train_acc": acc}


def end_record(stop_loss: float | None, epoch: int, cap: int, full_train_loss: float | None) -> dict[str, Any] | None:
    """The run's stop record after ``epoch``, or None while it goes on.

    Args:
        stop_loss: the target X (None: no criterion, never a record).
        epoch: the epoch just finished.
        cap: ``config.epochs``.
        full_train_loss: the whole-training-set loss after ``epoch``.

    Returns:
        ``{"stop_loss", "epoch", "reached"}`` when the loss is <= X or the cap is reached, else None.
    """
    if stop_loss is None:
        return None
    reached = full_train_loss is not None and full_train_loss <= stop_loss
    if not reached and epoch < cap:
        return None
    return {"stop_loss": float(stop_loss), "epoch": int(epoch), "reached": bool(reached)}


def stored_record(state: dict[str, Any]) -> dict[str, Any] | None:
    """The stop record a checkpoint payload holds (None: the run has not stopped, or has no criterion)."""
    record = (state.get("extra") or {}).get(STOP_KEY)
    return record if isinstance(record, dict) else None


def describe(record: dict[str, Any]) -> str:
    """One line saying how a run with a stop loss ended (for ``flatness train``'s output)."""
    if record["reached"]:
        return f"reached the stop loss {record['stop_loss']:g} at epoch {record['epoch']}: stopped"
    return f"the cap of {record['epoch']} epochs came first: the training loss is still above {record['stop_loss']:g}"


def matched_now(match_loss: float | None, already: bool, full_train_loss: float | None) -> bool:
    """Whether the epoch just finished is the run's matched-loss checkpoint (``MATCHED``).

    It is the first epoch whose whole-training-set loss is <= ``match_loss``; later epochs never
    replace it, even when the loss rises above the threshold and falls again.

    Args:
        match_loss: the threshold (None: no matched checkpoint is kept).
        already: the run already holds its matched checkpoint.
        full_train_loss: the whole-training-set loss after the epoch.

    Returns:
        True when the epoch's weights are to be kept as the matched checkpoint.
    """
    if match_loss is None or already or full_train_loss is None:
        return False
    return full_train_loss <= match_loss
