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

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from flatness.core.errors import FlatnessError
from flatness.core.evaluation import eval_mode
from flatness.core.progress import progress_bar
from flatness.sharpness.oracle import DEFAULTS, LossOracle, SharpnessRecord, counts_record, draw_seed, standard_normal


@dataclass(frozen=True)
class BisectionSettings:
    """The σ search's knobs (``None``: the value in ``DEFAULTS``).

    ``target_deviation``: the allowed error increase, in (0, 1); ``tolerance``: the bisection stops at
    relative width ``hi − lo ≤ tolerance · hi``; ``max_steps``: the most σ values tried;
    ``sigma_start``: the first σ (``None``: 0.05 magnitude-aware, else 0.01, chosen by the metric).
    """

    target_deviation: float | None = None
    tolerance: float | None = None
    max_steps: int | None = None
    sigma_start: float | None = None

    def checked(self) -> BisectionSettings:
        """A copy with the defaults filled in (``sigma_start`` aside); a bad option is a one-line FlatnessError."""
        target_deviation = float(
            DEFAULTS["target_deviation"] if self.target_deviation is None else self.target_deviation
        )
        if not 0 < target_deviation < 1:
            raise FlatnessError(f"target deviation must be in (0, 1), got {target_deviation}")
        tolerance = float(DEFAULTS["bisection_tolerance"] if self.tolerance is None else self.tolerance)
        max_steps = int(DEFAULTS["bisection_max_steps"] if self.max_steps is None else self.max_steps)
        return dataclasses.replace(self, target_deviation=target_deviation, tolerance=tolerance, max_steps=max_steps)


@dataclass(frozen=True, kw_only=True)
class PacBayesResult(SharpnessRecord):
    """PAC-Bayes flatness 1/σ*² (``value`` = ``flatness``; None when σ* = 0) and its search.

    ``sigma`` is σ*, the midpoint of the final bracket [``sigma_low``, ``sigma_high``] (``sigma_high``
    None when no σ failed); ``base_error`` is the error, or the loss where ``criterion`` is
    ``"loss"``; ``iterations`` counts the σ values tried; ``*_evals`` count full-data evaluations.
    """

    metric: str
    value: float | None
    sigma: float
    flatness: float | None
    p: None = field(default=None, init=False)
    ball: None = field(default=None, init=False)
    c: str
    base_error: float
    criterion: str
    target_deviation: float
    draws: int
    sigma_low: float
    sigma_high: float | None
    converged: bool
    solver: str = field(default="bisection", init=False)
    iterations: int
    loss_evals: int
    gradient_evals: int
    error_evals: int
    seconds: float


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


def pac_bayes_flatness(
    oracle: LossOracle,
    draws: int | None = None,
    magnitude: bool = False,
    bisection: BisectionSettings | None = None,
    seed: int = 0,
    progress: bool = False,
) -> PacBayesResult:
    """σ* = the largest σ with mean over draws of err(θ+u_σ) ≤ err(θ) + target_deviation; flatness 1/σ*².

    u_σ = σ z (or, magnitude-aware, sqrt(σ² θ² + 1e-6) ⊙ z) with the same seeded standard normal z_k
    for draw k at every σ (common random numbers: the estimate is a deterministic, nearly monotone
    function of σ). A bracket [lo, hi] is found and bisected (``bisect_sigma``); σ* is the midpoint
    of the final bracket. ``iterations`` counts the σ values tried. If even σ = 1e-12 breaks the
    target, σ* = 0 and flatness is None (infinitely sharp; JSON-safe); if σ = 1e6 still passes,
    σ* = the last σ that passed and ``converged`` is False.

    Args:
        oracle: the ``LossOracle`` of the model, data, loss and error (shared with other metrics; its
            ``error_fn``, or its loss where accuracy is not defined, is err); its model is measured
            in eval mode, its modes and weights restored after.
        draws: Monte-Carlo draws per σ (default ``DEFAULTS['pac_bayes_draws']``).
        magnitude: the magnitude-aware perturbation.
        bisection: target deviation, tolerance, step budget and first σ (``BisectionSettings()``:
            the defaults).
        seed: seed of the draws.
        progress: show a progress bar.

    Returns:
        Flatness (``value`` = ``flatness``), ``sigma`` and its bracket, ``base_error``, ``criterion``,
        ``converged``, evaluation counts and ``seconds``.
    """
    draws = int(DEFAULTS["pac_bayes_draws"] if draws is None else draws)
    if draws < 1:
        raise FlatnessError(f"draws must be >= 1, got {draws}")
    search = (bisection or BisectionSettings()).checked()
    sigma_start = search.sigma_start
    if sigma_start is None:
        sigma_start = 0.05 if magnitude else 0.01
    start = time.perf_counter()
    with eval_mode(oracle.model):
        before = oracle.counts()
        base_err = oracle.error(None)
        limit = base_err + search.target_deviation
        bar = progress_bar(progress, search.max_steps, f"pac_bayes{'_magnitude' if magnitude else ''}")
        try:
            mean_error = _mean_error_fn(oracle, magnitude, draws, seed, bar)
            lo, hi, steps = bisect_sigma(
                lambda s: mean_error(s) <= limit, sigma_start, search.tolerance, search.max_steps
            )
        finally:
            bar.close()
    sigma, flatness, converged = _read_bracket(lo, hi, search.tolerance)
    return PacBayesResult(
        metric="pac_bayes_magnitude" if magnitude else "pac_bayes",
        value=flatness,
        sigma=sigma,
        flatness=flatness,
        c="sqrt(sigma^2 theta^2 + 1e-6)" if magnitude else "1",
        base_error=base_err,
        criterion=oracle.criterion(),
        target_deviation=search.target_deviation,
        draws=draws,
        sigma_low=lo,
        sigma_high=hi if hi < math.inf else None,
        converged=converged,
        iterations=steps,
        **counts_record(oracle, before),
        seconds=time.perf_counter() - start,
    )


def _read_bracket(lo: float, hi: float, tolerance: float) -> tuple[float, float | None, bool]:
    """(σ*, flatness 1/σ*² (None at σ* = 0), converged) of the final bracket [lo, hi]."""
    converged = hi < math.inf and lo > 0 and hi - lo <= tolerance * hi
    sigma_star = 0.5 * (lo + hi) if hi < math.inf else lo
    flatness = (1.0 / sigma_star**2) if sigma_star > 0 else None
    return sigma_star, flatness, bool(converged)
