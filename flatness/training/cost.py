"""The expected cost of a training run, so that engines start the longest runs first.

Only the order of runs on the same training set matters (a study's runs, a sweep's cells), so the
figures are relative. Forward-backward passes per step: ERM 1, SAM 2, AMP 1 + inner_iter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # loop imports this module
    from flatness.training.config import TrainConfig

PASSES_PER_STEP = {"erm": 1, "sam": 2}  # AMP: 1 + inner_iter


def passes_per_step(config: TrainConfig) -> int:
    """Forward-backward passes of one optimiser step of ``config.method``."""
    return PASSES_PER_STEP.get(config.method, 1 + config.inner_iter)


def training_cost(config: TrainConfig) -> float:
    """The expected cost of a training run, relative to other runs on the same training set.

    A fixed-length run: passes per step x epochs x steps per epoch (taken as 1 / batch_size). A run to a
    stop loss (``config.stop_loss``) ends long before its cap as a rule, after a number of steps that
    scales as 1 / lr at a constant learning rate (measured on MNIST-1D: about 82 / lr steps to a
    cross-entropy of 0.01, whatever the batch size), so its cost is passes per step / lr.

    Args:
        config: the run's ``TrainConfig``.

    Returns:
        The relative cost (larger: longer). Compare runs that all have a stop loss or all have none.
    """
    if config.stop_loss is not None:
        return passes_per_step(config) / config.lr
    return passes_per_step(config) * config.epochs / config.batch_size
