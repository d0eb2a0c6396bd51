"""Keskar ε-sharpness (Keskar et al. 2017), in percent.

φ = 100 · (max over |y_i| ≤ ε(|θ_i|+1) of L(θ+y) − L(θ)) / (1+L(θ)); the max by scipy's L-BFGS-B under
the box bounds, from y = 0.
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
from flatness.sharpness.oracle import DEFAULTS, LossOracle, SharpnessRecord, counts_record, generator


@dataclass(frozen=True, kw_only=True)
class KeskarResult(SharpnessRecord):
    """Keskar's ε-sharpness φ (``value``, in percent) at one ε, and how it was found.

    ``max_loss`` is the largest loss L-BFGS-B evaluated in the box; ``iterations`` and
    ``solver_message`` are scipy's; ``*_evals`` count full-data evaluations.
    """

    metric: str = field(default="keskar", init=False)
    value: float
    epsilon: float
    p: str = field(default="inf", init=False)
    ball: str = field(default="box", init=False)
    c: str = field(default="|theta|+1", init=False)
    base_loss: float
    max_loss: float
    solver: str = field(default="L-BFGS-B", init=False)
    iterations: int
    solver_message: str
    loss_evals: int
    gradient_evals: int
    error_evals: int
    seconds: float


def keskar_sharpness(
    oracle: LossOracle, epsilon: float, iterations: int | None = None, seed: int = 0, progress: bool = False
) -> KeskarResult:
    """ε-sharpness in percent over the box |y_i| ≤ ε(|θ_i|+1), by L-BFGS-B (scipy) from y = 0.

    If the gradient at θ is exactly zero, the start is a seeded random corner-scaled point (y = 0 would
    be a stationary point). The maximum is the best value L-BFGS-B evaluated (all its points are in the
    box).

    Args:
        oracle: the ``LossOracle`` of the model, data and loss (shared with other metrics); its model
            is measured in eval mode, its modes and weights restored after.
        epsilon: the box size ε > 0.
        iterations: L-BFGS-B iterations (default ``DEFAULTS['lbfgs_iterations']``).
        seed: seed of the random start (used only when the gradient is zero).
        progress: show a progress bar.

    Returns:
        φ in percent (``value``), the losses, solver information, evaluation counts and ``seconds``.
    """
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise FlatnessError(f"epsilon must be > 0 and finite, got {epsilon}")
    iterations = int(DEFAULTS["lbfgs_iterations"] if iterations is None else iterations)
    start = time.perf_counter()
    with eval_mode(oracle.model):
        before = oracle.counts()
        base, g0 = oracle.loss_and_grad(None)
        bar = progress_bar(progress, iterations, f"keskar eps={epsilon:g}")
        top, result = _maximise(oracle, base, g0, epsilon, iterations, seed, bar)
    return KeskarResult(
        value=100.0 * (top - base) / (1.0 + base),
        epsilon=float(epsilon),
        base_loss=base,
        max_loss=top,
        iterations=int(result.nit),
        solver_message=str(result.message),
        **counts_record(oracle, before),
        seconds=time.perf_counter() - start,
    )


def _maximise(oracle: LossOracle, base: float, g0: torch.Tensor, epsilon: float, iterations: int, seed: int, bar):
    """(the largest loss L-BFGS-B evaluated in the box, scipy's result); ``bar`` is closed here.

    The start is y = 0 unless the gradient there (``g0``) is exactly zero, then a seeded random point
    inside half the box, since y = 0 would be a stationary point.
    """
    # late: scipy.optimize takes about a second to import and only this metric needs it
    from scipy.optimize import minimize  # noqa: PLC0415 - SciPy is heavy; only Keskar's sharpness needs its optimizer

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
