"""Training curves in TensorBoard (``flatness train --log tensorboard``, extra ``flatness[tensorboard]``).

Each finished epoch's record of ``metrics.jsonl`` (``flatness.training.loop``: loss and accuracy on the
training batches and the test split, the learning rate, the whole-training-set loss of ``--stop-loss``, AMP's
and SAM's mean perturbation norm, the epoch's seconds, and whatever else the record holds) becomes one
TensorBoard scalar per numeric field, at step = the epoch. The events go to ``RUN/tensorboard/``, so
``tensorboard --logdir DIR`` shows every run under DIR side by side: a sweep's cells (``SWEEP/cells/*/``), an
experiment's runs, or a folder of ``flatness train`` runs. ``flatness plot RUN`` draws the same curves from
``metrics.jsonl`` without TensorBoard.

TensorBoard stores scalars as float32: an event's value is the metrics.jsonl number rounded to float32.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

from flatness.core.errors import FlatnessError
from flatness.formats.checkpoint import metric_scalars

LOG_FOLDER = "tensorboard"  # inside the run folder
LOGGERS = ("none", "tensorboard")


def check_logger(name: str | None) -> str:
    """The ``--log`` choice, checked; ``tensorboard`` also needs the package (one-line error when missing).

    Args:
        name: ``"none"``, ``"tensorboard"`` or None (none).

    Returns:
        The choice.
    """
    name = (name or "none").strip().lower()
    if name not in LOGGERS:
        raise FlatnessError(f"unknown logger {name!r}: use {' or '.join(LOGGERS)}")
    if name == "tensorboard":
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401, PLC0415 - optional; the check imports it
        except ImportError:
            raise FlatnessError(
                "--log tensorboard needs the tensorboard package: pip install 'flatness[tensorboard]'"
            ) from None
    return name


@contextlib.contextmanager
def epoch_logger(logger: str | None, run_dir: str) -> Iterator[Callable[[dict[str, Any]], None] | None]:
    """The training loop's ``on_epoch`` hook for ``logger`` (None for ``none``), closed on exit.

    The event file is opened at the first finished epoch (a run that fails before writes none).

    Args:
        logger: ``"none"`` or ``"tensorboard"`` (checked by ``check_logger``).
        run_dir: the run folder; the events go to ``run_dir/tensorboard``.

    Yields:
        ``on_epoch(record)``, or None.
    """
    if check_logger(logger) == "none":
        yield None
        return
    from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - optional; only --log tensorboard

    writers: list[Any] = []

    def on_epoch(record: dict[str, Any]) -> None:
        if not writers:
            writers.append(SummaryWriter(log_dir=os.path.join(run_dir, LOG_FOLDER)))
        for name, value in metric_scalars(record).items():
            writers[0].add_scalar(name, value, global_step=int(record["epoch"]))
        writers[0].flush()  # the curve is there while the run goes on, and after a crash

    try:
        yield on_epoch
    finally:
        for writer in writers:
            writer.close()
