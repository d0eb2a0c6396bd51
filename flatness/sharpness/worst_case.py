"""Worst-case and adaptive worst-case sharpness.

max over ‖δ / c‖_p ≤ ρ of L(θ+δ) − L(θ), c = 1 or |θ|, by projected normalised-gradient ascent.

``ball="global"``: one ball over the whole vector; ``ball="tensor"``: every parameter tensor in its own
ball of radius ρ (the AMP ball of the reference code; with ρ = the AMP ε this is the AMP loss minus the
ERM loss). The ascent runs in the coordinates η = δ / c, so for the adaptive metric its whole path
(start, steps, projections) is unchanged when a ReLU layer is scaled by α and the next by 1/α (Dinh et
al. 2017): the value is invariant, not only in theory.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch

from flatness.core.errors import FlatnessError
from flatness.core.evaluation import eval_mode
from flatness.core.progress import progress_bar
from flatness.sharpness.oracle import (
    BALLS,
    DEFAULTS,
    LossOracle,
    SharpnessRecord,
    check_p,
    counts_record,
    p_name,
    standard_normal,
)

INITS = ("gradient", "random")


@dataclass(frozen=True)
class AscentSettings:
    """The ascent's knobs (``None``: the value in ``DEFAULTS``).

    ``steps``: gradient evaluations; ``step_size``: the first step as a fraction of ρ (cosine decay
    to 0); ``init``: ``"gradient"`` (SAM's direction) or ``"random"`` (a seeded point of the sphere).
    """

    steps: int | None = None
    step_size: float | None = None
    init: str | None = None

    def checked(self) -> AscentSettings:
        """A copy with the defaults filled in; a bad option is a one-line FlatnessError naming it."""
        steps = int(DEFAULTS["ascent_steps"] if self.steps is None else self.steps)
        if steps < 1:
            raise FlatnessError(f"ascent steps must be >= 1, got {steps}")
        step_size = float(DEFAULTS["step_size"] if self.step_size is None else self.step_size)
        init = DEFAULTS["init"] if self.init is None else self.init
        if init not in INITS:
            raise FlatnessError(f"init must be gradient or random, got {init!r}")
        return dataclasses.replace(self, steps=steps, step_size=step_size, init=init)


@dataclass(frozen=True, kw_only=True)
class WorstCaseResult(SharpnessRecord):
    """Worst-case (or adaptive worst-case) sharpness at one ρ (``value`` = max loss − base loss).

    ``best_step`` is the ascent step of the best loss seen (``iterations`` = after the last step),
    ``delta_norm`` ‖δ‖₂ of its perturbation; ``*_evals`` count full-data evaluations.
    """

    metric: str
    value: float
    rho: float
    p: int | str
    ball: str
    c: str
    base_loss: float
    max_loss: float
    solver: str = field(default="projected normalised-gradient ascent", init=False)
    iterations: int
    best_step: int
    init: str
    step_size: float
    delta_norm: float
    loss_evals: int
    gradient_evals: int
    error_evals: int
    seconds: float


def _project(eta: torch.Tensor, blocks: list[slice], p, rho: float) -> torch.Tensor:
    if p != 2:
        return eta.clamp_(-rho, rho)
    for b in blocks:
        norm = float(eta[b].norm())
        if norm > rho:
            eta[b].mul_(rho / norm)
    return eta


def _direction(g: torch.Tensor, blocks: list[slice], p) -> torch.Tensor:
    """The steepest-ascent unit direction for the (product of) p-ball(s): g/‖g‖ per block, or sign(g)."""
    if p != 2:
        return torch.sign(g)
    d = torch.zeros_like(g)
    for b in blocks:
        norm = float(g[b].norm())
        if norm > 0:
            d[b] = g[b] / norm
    return d


def _start(
    oracle: LossOracle, blocks: list[slice], c: torch.Tensor, p, rho: float, init: str, seed: int
) -> tuple[float, torch.Tensor]:
    """(L(θ), the first η of the ascent).

    The ball's point in the gradient direction (blocks without a gradient at a seeded random point
    of their sphere), or that random point everywhere for init="random".
    """
    z = standard_normal(oracle, seed)
    rand = _direction(z, blocks, p) * rho  # a random point of each block's sphere (a corner for p=inf)
    if init != "gradient":
        return oracle.loss(None), rand.clone()
    base, g = oracle.loss_and_grad(None)
    u = _direction(g * c, blocks, p) * rho
    eta = u.clone()
    for b in blocks:
        if not torch.any(u[b] != 0):
            eta[b] = rand[b]
    return base, eta


def worst_case_sharpness(
    oracle: LossOracle,
    rho: float,
    ball: str = "global",
    p=2,
    adaptive: bool = False,
    ascent: AscentSettings | None = None,
    seed: int = 0,
    progress: bool = False,
) -> WorstCaseResult:
    """Max over ‖δ/c‖_p ≤ ρ of L(θ+δ) − L(θ) (c = |θ| if adaptive else 1), per block for ball="tensor".

    Projected normalised-gradient ascent in η = δ/c: η_{t+1} = Π(η_t + α_t ρ u_t), u_t the unit steepest
    ascent direction of the gradient in η (c ⊙ ∇L) — per block g/‖g‖ for p=2, sign for p=∞ — and
    α_t = step_size · (1 + cos(π t / steps)) / 2. The start is the ball's point in the gradient
    direction (SAM's step; blocks with a zero gradient start at a seeded random point of the sphere)
    or, with init="random", a seeded random point on the sphere. ``steps`` gradient evaluations; the
    value is the best loss seen along the path.

    Args:
        oracle: the ``LossOracle`` of the model, data and loss (shared with other metrics); its model
            is measured in eval mode, its modes and weights restored after.
        rho: the radius ρ > 0.
        ball: ``"global"`` or ``"tensor"``.
        p: 2 or inf.
        adaptive: c = |θ| (adaptive sharpness) instead of 1.
        ascent: steps, step size and start of the ascent (``AscentSettings()``: the defaults).
        seed: seed of the random start.
        progress: show a progress bar.

    Returns:
        The increase (``value``), the losses, the ball, solver information, ``best_step``,
        ``delta_norm``, evaluation counts and ``seconds``.
    """
    p = _check_ball(rho, ball, p)
    ascent = (ascent or AscentSettings()).checked()
    start = time.perf_counter()
    with eval_mode(oracle.model):
        before = oracle.counts()
        blocks = oracle.blocks(ball)
        c = oracle.theta.abs() if adaptive else torch.ones_like(oracle.theta)
        base, eta = _start(oracle, blocks, c, p, rho, ascent.init, seed)
        label = f"{'adaptive_' if adaptive else ''}worst_case rho={rho:g}"
        bar = progress_bar(progress, ascent.steps, label)
        best_value, best_eta, best_step = _Ascent(oracle, blocks, c, p, rho).run(eta, ascent, bar)
    return WorstCaseResult(
        metric="adaptive_worst_case" if adaptive else "worst_case",
        value=best_value - base,
        rho=float(rho),
        p=p_name(p),
        ball=ball,
        c="|theta|" if adaptive else "1",
        base_loss=base,
        max_loss=best_value,
        iterations=ascent.steps,
        best_step=best_step,
        init=ascent.init,
        step_size=ascent.step_size,
        delta_norm=float((c * best_eta).norm()),
        **counts_record(oracle, before),
        seconds=time.perf_counter() - start,
    )


def _check_ball(rho: float, ball: str, p) -> int | float:
    """The checked p (2 or inf) of the ball of radius ``rho``; bad options are a FlatnessError."""
    if not (math.isfinite(rho) and rho > 0):
        raise FlatnessError(f"rho must be > 0 and finite, got {rho}")
    if ball not in BALLS:
        raise FlatnessError(f"ball must be one of {', '.join(BALLS)}, got {ball!r}")
    return check_p(p)


class _Ascent:
    """The projected normalised-gradient ascent in η = δ/c over the (product of) ball(s)."""

    def __init__(self, oracle: LossOracle, blocks: list[slice], c: torch.Tensor, p, rho: float):
        self.oracle, self.blocks, self.c, self.p, self.rho = oracle, blocks, c, p, rho

    def run(self, eta: torch.Tensor, ascent: AscentSettings, bar) -> tuple[float, torch.Tensor, int]:
        """(best loss, its η, its step) over ``steps`` gradient steps from ``eta`` and the final point.

        The step at t is α_t = step_size · (1 + cos(π t / steps)) / 2 of ρ (``ascent``, checked);
        ``bar`` is closed here.
        """
        oracle, c = self.oracle, self.c
        steps, step_size = ascent.steps, ascent.step_size
        best_value, best_eta, best_step = -math.inf, eta.clone(), 0
        try:
            for t in range(steps):
                value, g = oracle.loss_and_grad(c * eta)
                if value > best_value:
                    best_value, best_eta, best_step = value, eta.clone(), t
                alpha = step_size * 0.5 * (1.0 + math.cos(math.pi * t / steps))
                eta = self.step(eta, g, alpha)
                bar.update(1)
        finally:
            bar.close()
        value = oracle.loss(c * eta)
        if value > best_value:
            best_value, best_eta, best_step = value, eta, steps
        return best_value, best_eta, best_step

    def step(self, eta: torch.Tensor, g: torch.Tensor, alpha: float) -> torch.Tensor:
        """η moved α ρ along the steepest-ascent direction of the gradient in η (c ⊙ g), projected back."""
        move = eta + alpha * self.rho * _direction(g * self.c, self.blocks, self.p)
        return _project(move, self.blocks, self.p, self.rho)
