"""Average-case and adaptive average-case sharpness.

E over δ ~ N(0, ρ² diag(c²)) of L(θ+δ) − L(θ), c = 1 or |θ|, with its standard error. ρ is a
per-coordinate standard deviation here, so the perturbation's norm is about ρ·sqrt(d).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.core.evaluation import LossFn, eval_mode
from flatness.core.progress import progress_bar
from flatness.data.batches import OutputFn
from flatness.sharpness.oracle import DEFAULTS, LossOracle, counts_record, draw_seed, oracle_for, standard_normal


# Reason for 9 parameters: the quantity (rho, adaptive), its Monte-Carlo budget and seed, and the
# shared-oracle hooks of measure_sharpness.
def average_case_sharpness(
    model: nn.Module,
    data: Any,
    rho: float,
    draws: int | None = None,
    adaptive: bool = False,
    seed: int = 0,
    progress: bool = False,
    oracle: LossOracle | None = None,
    loss_fn: LossFn | str | None = None,
    output_fn: OutputFn | None = None,
) -> dict[str, object]:
    """E over δ ~ N(0, ρ² diag(c²)) of L(θ+δ) − L(θ), c = |θ| if adaptive else 1.

    The mean over ``draws`` seeded draws and its standard error (None for one draw). Draw k uses
    seed·1000003 + k.

    Args:
        model: any ``nn.Module``; measured in eval mode, its modes and weights restored after.
        data: any form ``as_probe_data`` accepts (unused with ``oracle``).
        rho: the per-coordinate standard deviation ρ > 0.
        draws: Monte-Carlo draws (default ``DEFAULTS['draws']``).
        adaptive: c = |θ| instead of 1.
        seed: seed of the draws.
        progress: show a progress bar.
        oracle: a ``LossOracle`` shared with other metrics (else one is made).
        loss_fn: ``loss_fn(outputs, targets)`` -> batch mean loss, for a new oracle.
        output_fn: what of the model's output the loss sees, for a new oracle.

    Returns:
        The record: ``metric``, ``value`` (mean increase), ``stderr``, ``rho``, ``c``, ``base_loss``,
        ``draws``, evaluation counts and ``seconds``.
    """
    if not (math.isfinite(rho) and rho > 0):
        raise FlatnessError(f"rho must be > 0 and finite, got {rho}")
    draws = int(DEFAULTS["draws"] if draws is None else draws)
    if draws < 1:
        raise FlatnessError(f"draws must be >= 1, got {draws}")
    start = time.perf_counter()
    with eval_mode(model):
        oracle = oracle_for(model, data, oracle, loss_fn, output_fn=output_fn)
        before = oracle.counts()
        c = oracle.theta.abs() if adaptive else torch.ones_like(oracle.theta)
        base = oracle.loss(None)
        bar = progress_bar(progress, draws, f"{'adaptive_' if adaptive else ''}average_case rho={rho:g}")
        mean, stderr = _increase_stats(oracle, rho * c, base, draws, seed, bar)
    name = "adaptive_average_case" if adaptive else "average_case"
    record = {
        "metric": name,
        "value": mean,
        "stderr": stderr,
        "rho": float(rho),
        "p": None,
        "ball": None,
        "c": "|theta|" if adaptive else "1",
        "base_loss": base,
        "draws": draws,
        "solver": "monte-carlo",
        "iterations": draws,
    }
    record.update(counts_record(oracle, before))
    record["seconds"] = time.perf_counter() - start
    return record


def _increase_stats(
    oracle: LossOracle, scale: torch.Tensor, base: float, draws: int, seed: int, bar
) -> tuple[float, float | None]:
    """(mean, standard error) of L(θ + scale ⊙ z_k) − base over the seeded draws; ``bar`` closed here.

    The standard error is None for one draw (no spread to estimate).
    """
    increases = []
    try:
        for k in range(draws):
            delta = scale * standard_normal(oracle, draw_seed(seed, k))
            increases.append(oracle.loss(delta) - base)
            bar.update(1)
    finally:
        bar.close()
    values = np.asarray(increases, dtype=np.float64)
    stderr = float(values.std(ddof=1) / math.sqrt(draws)) if draws > 1 else None
    return float(values.mean()), stderr
