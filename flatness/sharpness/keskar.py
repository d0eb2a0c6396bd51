"""Keskar ε-sharpness (Keskar et al. 2017), in percent.

φ = 100 · (max over |y_i| ≤ ε(|θ_i|+1) of L(θ+y) − L(θ)) / (1+L(θ)); the max by scipy's L-BFGS-B under
the box bounds, from y = 0.
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
from flatness.sharpness.oracle import DEFAULTS, LossOracle, counts_record, generator, oracle_for


# Reason for 8 parameters: the documented public API: the quantity (epsilon), the solver budget and
# seed, progress, and the shared-oracle hooks of measure_sharpness (which passes SharpnessSettings').
def keskar_sharpness(
    model: nn.Module,
    data: Any,
    epsilon: float,
    iterations: int | None = None,
    seed: int = 0,
    progress: bool = False,
    oracle: LossOracle | None = None,
    loss_fn: LossFn | str | None = None,
    output_fn: OutputFn | None = None,
) -> dict[str, object]:
    """ε-sharpness in percent over the box |y_i| ≤ ε(|θ_i|+1), by L-BFGS-B (scipy) from y = 0.

    If the gradient at θ is exactly zero, the start is a seeded random corner-scaled point (y = 0 would
    be a stationary point). The maximum is the best value L-BFGS-B evaluated (all its points are in the
    box).

    Args:
        model: any ``nn.Module``; measured in eval mode, its modes and weights restored after.
        data: any form ``as_probe_data`` accepts (ignored when ``oracle`` is given).
        epsilon: the box size ε > 0.
        iterations: L-BFGS-B iterations (default ``DEFAULTS['lbfgs_iterations']``).
        seed: seed of the random start (used only when the gradient is zero).
        progress: show a progress bar.
        oracle: a ``LossOracle`` shared with other metrics (else one is made).
        loss_fn: ``loss_fn(outputs, targets)`` -> batch mean loss; cross-entropy by default.
        output_fn: what of the model's output the loss sees, for a new oracle.

    Returns:
        The record: ``metric``, ``value`` (φ in percent), ``epsilon``, ``base_loss``, ``max_loss``,
        solver information, evaluation counts and ``seconds``.
    """
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise FlatnessError(f"epsilon must be > 0 and finite, got {epsilon}")
    iterations = int(DEFAULTS["lbfgs_iterations"] if iterations is None else iterations)
    start = time.perf_counter()
    with eval_mode(model):
        oracle = oracle_for(model, data, oracle, loss_fn, output_fn=output_fn)
        before = oracle.counts()
        base, g0 = oracle.loss_and_grad(None)
        bar = progress_bar(progress, iterations, f"keskar eps={epsilon:g}")
        top, result = _maximise(oracle, base, g0, epsilon, iterations, seed, bar)
    record = {
        "metric": "keskar",
        "value": 100.0 * (top - base) / (1.0 + base),
        "epsilon": float(epsilon),
        "p": "inf",
        "ball": "box",
        "c": "|theta|+1",
        "base_loss": base,
        "max_loss": top,
        "solver": "L-BFGS-B",
        "iterations": int(result.nit),
        "solver_message": str(result.message),
    }
    record.update(counts_record(oracle, before))
    record["seconds"] = time.perf_counter() - start
    return record


def _maximise(oracle: LossOracle, base: float, g0: torch.Tensor, epsilon: float, iterations: int, seed: int, bar):
    """(the largest loss L-BFGS-B evaluated in the box, scipy's result); ``bar`` is closed here.

    The start is y = 0 unless the gradient there (``g0``) is exactly zero, then a seeded random point
    inside half the box, since y = 0 would be a stationary point.
    """
    from scipy.optimize import minimize

    theta = oracle.theta.detach().double().cpu().numpy()
    bound = epsilon * (np.abs(theta) + 1.0)
    x0 = np.zeros_like(theta)
    if not torch.any(g0 != 0):
        z = torch.rand(oracle.dim, generator=generator(seed), dtype=torch.float64).numpy()
        x0 = (2.0 * z - 1.0) * bound * 0.5
    # scipy may return a point other than the best it evaluated; the maximum is the best seen.
    best = {"value": base}

    def fun(y: np.ndarray):
        delta = torch.from_numpy(y).to(oracle.device, oracle.dtype)
        value, grad = oracle.loss_and_grad(delta)
        if value > best["value"]:
            best["value"] = value
        return -value, -grad.double().cpu().numpy()

    try:
        result = minimize(
            fun,
            x0,
            jac=True,
            method="L-BFGS-B",
            bounds=np.stack([-bound, bound], axis=1),
            options={"maxiter": iterations, "maxfun": 4 * iterations + 10},
            callback=lambda *_: bar.update(1),
        )
    finally:
        bar.close()
    return max(best["value"], -float(result.fun)), result
