"""PAC-Bayes flatness (Jiang et al. 2020).

σ* = the largest σ with E_u err(θ+u) ≤ err(θ) + 0.1, u ~ N(0, σ² I) or the magnitude-aware
u_i ~ N(0, σ'² θ_i² + 1e-6), by bracketing and bisection with common random numbers (draw k uses the same standard
normal vector at every σ); flatness = 1/σ*².

err is the classification error where accuracy is defined (a classification loss on class scores, or
a user's ``error_fn``); on any other loss (regression) the same definition is applied to the loss L
itself (``LossOracle.criterion``; the record's ``criterion`` says which), never to an argmax of
regression outputs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.core.evaluation import eval_mode
from flatness.core.losses import LossFn
from flatness.core.progress import progress_bar
from flatness.data.batches import OutputFn
from flatness.sharpness.oracle import (
    DEFAULTS,
    ErrorFn,
    LossOracle,
    counts_record,
    draw_seed,
    oracle_for,
    standard_normal,
)


def bisect_sigma(
    passes: Callable[[float], bool], sigma_start: float, tolerance: float, max_steps: int
) -> tuple[float, float, int]:
    """The bracket [lo, hi] of the largest passing σ: lo passes (or is 0), hi fails (or is inf).

    From ``sigma_start`` the bracket is found by doubling (while σ passes) or halving (while it
    fails), then bisected until hi − lo ≤ tolerance · hi. Gives up doubling past 1e6 and halving
    below 1e-12; at most ``max_steps`` calls of ``passes``.

    Args:
        passes: whether σ meets the target (nearly monotone: true for small σ).
        sigma_start: the first σ tried.
        tolerance: relative width at which bisection stops.
        max_steps: the most σ values tried.

    Returns:
        ``(lo, hi, steps)``, ``steps`` the number of σ values tried.
    """
    lo, hi, sigma = 0.0, math.inf, float(sigma_start)
    steps = 0
    while steps < max_steps:
        steps += 1
        if passes(sigma):
            lo = sigma
            if sigma > 1e6 or hi < math.inf:
                break
            sigma *= 2.0
        else:
            hi = sigma
            if lo > 0 or sigma < 1e-12:
                break
            sigma *= 0.5
    while steps < max_steps and hi < math.inf and hi - lo > tolerance * hi:
        steps += 1
        mid = 0.5 * (lo + hi)
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi, steps


def _mean_error_fn(oracle: LossOracle, magnitude: bool, draws: int, seed: int, bar) -> Callable[[float], float]:
    """σ -> mean over the draws of err(θ + u_σ), with the same standard normal z_k at every σ."""
    theta2 = oracle.theta.double() ** 2
    eps = float(DEFAULTS["magnitude_eps"])

    def mean_error(sigma: float) -> float:
        if magnitude:
            scale = torch.sqrt(sigma**2 * theta2 + eps).to(oracle.dtype)
        else:
            scale = torch.full_like(oracle.theta, sigma)
        total = 0.0
        for k in range(draws):
            total += oracle.error(scale * standard_normal(oracle, draw_seed(seed, k)))
        bar.update(1)
        return total / draws

    return mean_error


# Reason for 14 parameters: this is the documented public API: the quantity (magnitude, target
# deviation), the bisection's budget (draws, tolerance, max_steps, sigma_start), the seed and the
# shared-oracle hooks; measure_sharpness passes them from one SharpnessSettings. The body is split:
# _options checks, _mean_error_fn and bisect_sigma search, _sigma_fields reads the bracket.
def pac_bayes_flatness(
    model: nn.Module,
    data: Any,
    draws: int | None = None,
    magnitude: bool = False,
    target_deviation: float | None = None,
    tolerance: float | None = None,
    max_steps: int | None = None,
    sigma_start: float | None = None,
    seed: int = 0,
    progress: bool = False,
    oracle: LossOracle | None = None,
    error_fn: ErrorFn | None = None,
    loss_fn: LossFn | str | None = None,
    output_fn: OutputFn | None = None,
) -> dict[str, object]:
    """σ* = the largest σ with mean over draws of err(θ+u_σ) ≤ err(θ) + target_deviation; flatness 1/σ*².

    u_σ = σ z (or, magnitude-aware, sqrt(σ² θ² + 1e-6) ⊙ z) with the same seeded standard normal z_k
    for draw k at every σ (common random numbers: the estimate is a deterministic, nearly monotone
    function of σ). A bracket [lo, hi] is found and bisected (``bisect_sigma``); σ* is the midpoint
    of the final bracket. ``iterations`` counts the σ values tried. If even σ = 1e-12 breaks the
    target, σ* = 0 and flatness is None (infinitely sharp; JSON-safe); if σ = 1e6 still passes,
    σ* = the last σ that passed and ``converged`` is False.

    Args:
        model: any ``nn.Module``; measured in eval mode, its modes and weights restored after.
        data: any form ``as_probe_data`` accepts (unused with ``oracle``).
        draws: Monte-Carlo draws per σ (default ``DEFAULTS['pac_bayes_draws']``).
        magnitude: the magnitude-aware perturbation.
        target_deviation: the allowed error increase, in (0, 1) (default 0.1).
        tolerance: the bisection stops at relative width ``hi − lo ≤ tolerance · hi``.
        max_steps: the most σ values tried.
        sigma_start: the first σ (default 0.05 magnitude-aware, else 0.01).
        seed: seed of the draws.
        progress: show a progress bar.
        oracle: a ``LossOracle`` shared with other metrics (else one is made).
        error_fn: ``error_fn(outputs, targets)`` -> batch mean error, for a new oracle.
        loss_fn: the loss, for a new oracle (it decides whether err is the error or the loss).
        output_fn: what of the model's output the loss sees, for a new oracle.

    Returns:
        The record: ``metric``, ``value`` (= ``flatness``), ``sigma``, ``sigma_low``, ``sigma_high``,
        ``base_error`` (the error, or the loss where ``criterion`` is ``"loss"``), ``criterion``,
        ``converged``, evaluation counts and ``seconds``.
    """
    draws, target_deviation, tolerance, max_steps = _options(draws, target_deviation, tolerance, max_steps)
    if sigma_start is None:
        sigma_start = 0.05 if magnitude else 0.01
    start = time.perf_counter()
    with eval_mode(model):
        oracle = oracle_for(model, data, oracle, loss_fn, error_fn, output_fn)
        before = oracle.counts()
        base_err = oracle.error(None)
        limit = base_err + target_deviation
        bar = progress_bar(progress, max_steps, f"pac_bayes{'_magnitude' if magnitude else ''}")
        try:
            mean_error = _mean_error_fn(oracle, magnitude, draws, seed, bar)
            lo, hi, steps = bisect_sigma(lambda s: mean_error(s) <= limit, sigma_start, tolerance, max_steps)
        finally:
            bar.close()
    sigma = _sigma_fields(lo, hi, tolerance)
    record = {
        "metric": "pac_bayes_magnitude" if magnitude else "pac_bayes",
        "value": sigma["flatness"],
        "sigma": sigma["sigma"],
        "flatness": sigma["flatness"],
        "p": None,
        "ball": None,
        "c": "sqrt(sigma^2 theta^2 + 1e-6)" if magnitude else "1",
        "base_error": base_err,
        "criterion": oracle.criterion(),
        "target_deviation": target_deviation,
        "draws": draws,
        "sigma_low": lo,
        "sigma_high": hi if hi < math.inf else None,
        "converged": sigma["converged"],
        "solver": "bisection",
        "iterations": steps,
    }
    record.update(counts_record(oracle, before))
    record["seconds"] = time.perf_counter() - start
    return record


def _options(
    draws: int | None, target_deviation: float | None, tolerance: float | None, max_steps: int | None
) -> tuple[int, float, float, int]:
    """The checked (draws, target_deviation, tolerance, max_steps), defaults filled in."""
    draws = int(DEFAULTS["pac_bayes_draws"] if draws is None else draws)
    if draws < 1:
        raise FlatnessError(f"draws must be >= 1, got {draws}")
    target_deviation = float(DEFAULTS["target_deviation"] if target_deviation is None else target_deviation)
    if not 0 < target_deviation < 1:
        raise FlatnessError(f"target deviation must be in (0, 1), got {target_deviation}")
    tolerance = float(DEFAULTS["bisection_tolerance"] if tolerance is None else tolerance)
    max_steps = int(DEFAULTS["bisection_max_steps"] if max_steps is None else max_steps)
    return draws, target_deviation, tolerance, max_steps


def _sigma_fields(lo: float, hi: float, tolerance: float) -> dict[str, object]:
    """``sigma`` (σ*), ``flatness`` (1/σ*², None at σ* = 0) and ``converged`` of the final bracket [lo, hi]."""
    converged = hi < math.inf and lo > 0 and hi - lo <= tolerance * hi
    sigma_star = 0.5 * (lo + hi) if hi < math.inf else lo
    flatness = (1.0 / sigma_star**2) if sigma_star > 0 else None
    return {"sigma": sigma_star, "flatness": flatness, "converged": bool(converged)}
