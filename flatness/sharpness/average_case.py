"""Average-case and adaptive average-case sharpness.

E over δ ~ N(0, ρ² diag(c²)) of L(θ+δ) − L(θ), c = 1 or |θ|, with its standard error. ρ is a
per-coordinate standard deviation here, so the perturbation's norm is about ρ·sqrt(d).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from flatness.core.errors import FlatnessError
from flatness.core.evaluation import eval_mode
from flatness.core.progress import progress_bar
from flatness.sharpness.oracle import DEFAULTS, LossOracle, SharpnessRecord, counts_record, draw_seed, standard_normal


@dataclass(frozen=True, kw_only=True)
class AverageCaseResult(SharpnessRecord):
    """Average-case (or adaptive average-case) sharpness at one ρ: the mean increase and its error.

    ``stderr`` is None for one draw; ``iterations`` = ``draws``; ``*_evals`` count full-data
    evaluations.
    """

    metric: str
    value: float
    stderr: float | None
    rho: float
    p: None = field(default=None, init=False)
    ball: None = field(default=None, init=False)
    c: str
    base_loss: float
    draws: int
    solver: str = field(default="monte-carlo", init=False)
    iterations: int
    loss_evals: int
    gradient_evals: int
    error_evals: int
    seconds: float


def average_case_sharpness(
    oracle: LossOracle,
    rho: float,
    draws: int | None = None,
    adaptive: bool = False,
    seed: int = 0,
    progress: bool = False,
) -> AverageCaseResult:
    """E over δ ~ N(0, ρ² diag(c²)) of L(θ+δ) − L(θ), c = |θ| if adaptive else 1.

    The mean over ``draws`` seeded draws and its standard error (None for one draw). Draw k uses
    seed·1000003 + k.

    Args:
        oracle: the ``LossOracle`` of the model, data and loss (shared with other metrics); its model
            is measured in eval mode, its modes and weights restored after.
        rho: the per-coordinate standard deviation ρ > 0.
        draws: Monte-Carlo draws (default ``DEFAULTS['draws']``).
        adaptive: c = |θ| instead of 1.
        seed: seed of the draws.
        progress: show a progress bar.

    Returns:
        The mean increase (``value``), its ``stderr``, ``base_loss``, ``draws``, evaluation counts and
        ``seconds``.
    """
    if not (math.isfinite(rho) and rho > 0):
        raise FlatnessError(f"rho must be > 0 and finite, got {rho}")
    draws = int(DEFAULTS["draws"] if draws is None else draws)
    if draws < 1:
        raise FlatnessError(f"draws must be >= 1, got {draws}")
    start = time.perf_counter()
    with eval_mode(oracle.model):
        before = oracle.counts()
        c = oracle.theta.abs() if adaptive else torch.ones_like(oracle.theta)
        base = oracle.loss(None)
        bar = progress_bar(progress, draws, f"{'adaptive_' if adaptive else ''}average_case rho={rho:g}")
        mean, stderr = _increase_stats(oracle, rho * c, base, draws, seed, bar)
    return AverageCaseResult(
        metric="adaptive_average_case" if adaptive else "average_case",
        value=mean,
        stderr=stderr,
        rho=float(rho),
        c="|theta|" if adaptive else "1",
        base_loss=base,
        draws=draws,
        iterations=draws,
        **counts_record(oracle, before),
        seconds=time.perf_counter() - start,
    )


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
