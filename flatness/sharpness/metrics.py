"""Every sharpness metric of docs/metrics.md (section Sharpness), on the probe data.

All metrics share one :class:`LossOracle`: the exact mean loss (and its gradient, and the mean
classification error) over every probe example at θ + δ, with batch b weighted by n_b / n, the model
in eval mode (BatchNorm uses its running statistics; buffers are never perturbed). Only the trainable
parameters (the flat vector θ of :mod:`flatness.core.params`) move, always through
:func:`flatness.core.params.perturbed`, so the weights are restored bit for bit after every evaluation.
Every random draw comes from the routine's own ``torch.Generator`` seeded by ``seed``.

Metrics (``METRIC_NAMES``):

``keskar``
    ε-sharpness (Keskar et al. 2017): φ = 100 · (max over |y_i| ≤ ε(|θ_i|+1) of L(θ+y) − L(θ)) / (1+L(θ)),
    in percent; the max by scipy's L-BFGS-B under the box bounds, from y = 0.
``worst_case`` / ``adaptive_worst_case``
    max over ‖δ / c‖_p ≤ ρ of L(θ+δ) − L(θ), c = 1 or |θ|, by projected normalised-gradient ascent.
    ``ball="global"``: one ball over the whole vector; ``ball="tensor"``: every parameter tensor in its
    own ball of radius ρ (the AMP ball of the reference code; with ρ = the AMP ε this is the AMP loss
    minus the ERM loss). The ascent runs in the coordinates η = δ / c, so for the adaptive metric its
    whole path (start, steps, projections) is unchanged when a ReLU layer is scaled by α and the next by
    1/α (Dinh et al. 2017): the value is invariant, not only in theory.
``average_case`` / ``adaptive_average_case``
    E over δ ~ N(0, ρ² diag(c²)) of L(θ+δ) − L(θ), c = 1 or |θ|, with its standard error.
``pac_bayes`` / ``pac_bayes_magnitude``
    σ* = the largest σ with E_u err(θ+u) ≤ err(θ) + 0.1 (Jiang et al. 2020), u ~ N(0, σ² I) or the
    magnitude-aware u_i ~ N(0, σ'² θ_i² + 1e-6), by bracketing and bisection with common random numbers
    (draw k uses the same standard normal vector at every σ); flatness = 1/σ*².

Default radii (``DEFAULTS``): ε ∈ {1e-3, 5e-4} for Keskar (the usual values); ρ ∈ {0.02, 0.05, 0.1} for
the ball and Gaussian metrics, where 0.02 is the AMP ε of the digits default training
(``TrainConfig().epsilon``, tensor ball; a test keeps the two in step), so ``worst_case`` at ρ = 0.02
with the default tensor ball is exactly the AMP loss minus the ERM loss of that training. (For the published CIFAR recipe pass ρ = 0.5.) Note the scales: ρ is
the radius of a whole ball for the worst-case metrics but a per-coordinate standard deviation for the
average-case ones, whose perturbation norm is about ρ·sqrt(d).

Default budget (``DEFAULTS``), chosen so that ``all`` on 1000 digits images of the default convnet
takes well under a minute on two CPU cores: 10 L-BFGS-B iterations (Keskar et al. used 10), 10 ascent
steps, 16 draws per average-case estimate, 8 draws per PAC-Bayes bisection step.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.core.evaluation import batch_cross_entropy, full_gradient
from flatness.core.params import flatten, get_flat_params, named_trainable, perturbed
from flatness.data.probe_data import ProbeData
from flatness.core.progress import progress_bar

METRIC_NAMES = ("keskar", "worst_case", "adaptive_worst_case", "average_case", "adaptive_average_case",
                "pac_bayes", "pac_bayes_magnitude")

#: Which metrics take a radius ρ (``rhos``) and which an ε (``epsilons``).
RHO_METRICS = ("worst_case", "adaptive_worst_case", "average_case", "adaptive_average_case")
EPSILON_METRICS = ("keskar",)
BALLS = ("global", "tensor")

DEFAULTS: Dict[str, object] = {
    "epsilons": (1e-3, 5e-4),        # Keskar's usual box sizes (docs/metrics.md)
    "rhos": (0.02, 0.05, 0.1),       # 0.02 = AMP ε of the digits default training (TrainConfig, tensor ball)
    "ball": "tensor",                # the AMP ball
    "p": 2,                          # norm of the (adaptive) worst-case ball: 2 or inf
    "draws": 16,                     # Monte-Carlo draws per average-case estimate
    "ascent_steps": 10,              # gradient evaluations of the worst-case ascent
    "step_size": 1.0,                # first ascent step, as a fraction of ρ (cosine decay to 0)
    "init": "gradient",              # ascent start: "gradient" (SAM direction) or "random"
    "lbfgs_iterations": 10,          # L-BFGS-B iterations for Keskar (maxiter)
    "pac_bayes_draws": 8,            # Monte-Carlo draws per bisection step
    "target_deviation": 0.1,         # err(θ+u) ≤ err(θ) + 0.1
    "bisection_tolerance": 0.02,     # stop when (hi − lo) ≤ tol · hi
    "bisection_max_steps": 30,
    "magnitude_eps": 1e-6,           # the + 1e-6 of the magnitude-aware variance
}

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
ErrorFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], Union[torch.Tensor, float]]


def _error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x).argmax(1) != y).double().mean()


# --------------------------------------------------------------------------- the one loss oracle

class LossOracle:
    """Loss, gradient and error rate over all probe data at θ + δ (δ a flat vector, or None for θ).

    ``loss_fn(model, x, y)`` is the mean loss of one batch (default cross-entropy) and ``error_fn``
    its mean error (default argmax ≠ label); batch means are weighted by n_b / n, so every value is
    the exact mean over all n examples. Counts every full-data evaluation (``loss_evals``,
    ``gradient_evals``, ``error_evals``). Tests replace ``loss_fn`` to get closed forms.
    """

    def __init__(self, model: nn.Module, data: ProbeData, loss_fn: Optional[LossFn] = None,
                 error_fn: Optional[ErrorFn] = None):
        self.model = model
        self.data = data
        self.loss_fn = loss_fn or batch_cross_entropy
        self.error_fn = error_fn or _error_rate
        pairs = named_trainable(model)
        if not pairs:
            raise FlatnessError("the model has no trainable parameters")
        self.names = [n for n, _ in pairs]
        self.params = [p for _, p in pairs]
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        self.theta = get_flat_params(model)
        self.loss_evals = 0
        self.gradient_evals = 0
        self.error_evals = 0

    @property
    def dim(self) -> int:
        return self.theta.numel()

    def counts(self) -> Tuple[int, int, int]:
        return self.loss_evals, self.gradient_evals, self.error_evals

    def _at(self, delta: Optional[torch.Tensor]):
        if delta is None:
            delta = torch.zeros_like(self.theta)
        return perturbed(self.model, delta)

    def _mean(self, batch_fn, delta: Optional[torch.Tensor]) -> float:
        """Σ_b (n_b / n) · batch_fn(model, x_b, y_b) at θ + δ: the exact mean over all n examples."""
        total = 0.0
        with self._at(delta), torch.no_grad():
            for w, (x, y) in zip(self.data.weights(), self.data):
                total += w * float(batch_fn(self.model, x, y))
        return total

    def loss(self, delta: Optional[torch.Tensor] = None) -> float:
        self.loss_evals += 1
        return self._mean(self.loss_fn, delta)

    def loss_and_grad(self, delta: Optional[torch.Tensor] = None) -> Tuple[float, torch.Tensor]:
        """(L(θ+δ), ∇L(θ+δ) as a flat vector on θ's device)."""
        self.gradient_evals += 1
        with self._at(delta), torch.enable_grad():
            total, grads = full_gradient(self.model, self.data, self.params, self.loss_fn)
        return total, flatten(grads).detach()

    def error(self, delta: Optional[torch.Tensor] = None) -> float:
        self.error_evals += 1
        return self._mean(self.error_fn, delta)

    def blocks(self, ball: str) -> List[slice]:
        """Slices of the flat vector: one for the global ball, one per parameter tensor otherwise."""
        if ball == "global":
            return [slice(0, self.dim)]
        out, offset = [], 0
        for n in self.sizes:
            out.append(slice(offset, offset + n))
            offset += n
        return out


class _EvalMode:
    """Model in eval mode for the measurement; the previous mode afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _oracle(model, data, oracle, loss_fn, error_fn) -> LossOracle:
    return oracle if oracle is not None else LossOracle(model, data, loss_fn, error_fn)


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def _normal(oracle: LossOracle, seed: int) -> torch.Tensor:
    """A standard normal vector shaped like θ, drawn on the CPU (same numbers on every device)."""
    z = torch.randn(oracle.dim, generator=_generator(seed), dtype=torch.float32)
    return z.to(oracle.device, oracle.dtype)


def _counts_record(oracle: LossOracle, before: Tuple[int, int, int]) -> Dict[str, int]:
    now = oracle.counts()
    return {"loss_evals": now[0] - before[0], "gradient_evals": now[1] - before[1],
            "error_evals": now[2] - before[2]}


def _check_p(p) -> Union[int, float]:
    if p in (2, "2"):
        return 2
    if p in (float("inf"), "inf", "Inf", "INF", "linf"):
        return float("inf")
    raise FlatnessError(f"p must be 2 or inf, got {p!r}")


def _p_name(p) -> Union[int, str]:
    return 2 if p == 2 else "inf"


# --------------------------------------------------------------------------- Keskar ε-sharpness

def keskar_sharpness(model: nn.Module, data: ProbeData, epsilon: float, iterations: Optional[int] = None,
                     seed: int = 0, progress: bool = False, oracle: Optional[LossOracle] = None,
                     loss_fn: Optional[LossFn] = None) -> Dict[str, object]:
    """ε-sharpness in percent over the box |y_i| ≤ ε(|θ_i|+1), by L-BFGS-B (scipy) from y = 0.

    If the gradient at θ is exactly zero, the start is a seeded random corner-scaled point (y = 0 would
    be a stationary point). The maximum is the best value L-BFGS-B evaluated (all its points are in the
    box)."""
    from scipy.optimize import minimize

    if not (math.isfinite(epsilon) and epsilon > 0):
        raise FlatnessError(f"epsilon must be > 0 and finite, got {epsilon}")
    iterations = int(DEFAULTS["lbfgs_iterations"] if iterations is None else iterations)
    start = time.perf_counter()
    with _EvalMode(model):
        oracle = _oracle(model, data, oracle, loss_fn, None)
        before = oracle.counts()
        base, g0 = oracle.loss_and_grad(None)
        theta = oracle.theta.detach().double().cpu().numpy()
        bound = epsilon * (np.abs(theta) + 1.0)
        x0 = np.zeros_like(theta)
        if not torch.any(g0 != 0):
            z = torch.rand(oracle.dim, generator=_generator(seed), dtype=torch.float64).numpy()
            x0 = (2.0 * z - 1.0) * bound * 0.5
        best = {"value": base}
        bar = progress_bar(progress, iterations, f"keskar eps={epsilon:g}")

        def fun(y: np.ndarray):
            delta = torch.from_numpy(y).to(oracle.device, oracle.dtype)
            value, grad = oracle.loss_and_grad(delta)
            if value > best["value"]:
                best["value"] = value
            return -value, -grad.double().cpu().numpy()

        def callback(*_):
            bar.update(1)

        try:
            result = minimize(fun, x0, jac=True, method="L-BFGS-B",
                              bounds=np.stack([-bound, bound], axis=1),
                              options={"maxiter": iterations, "maxfun": 4 * iterations + 10},
                              callback=callback)
        finally:
            bar.close()
        top = max(best["value"], -float(result.fun))
    phi = 100.0 * (top - base) / (1.0 + base)
    record = {"metric": "keskar", "value": phi, "epsilon": float(epsilon), "p": "inf", "ball": "box",
              "c": "|theta|+1", "base_loss": base, "max_loss": top, "solver": "L-BFGS-B",
              "iterations": int(result.nit), "solver_message": str(result.message)}
    record.update(_counts_record(oracle, before))
    record["seconds"] = time.perf_counter() - start
    return record


# --------------------------------------------------------------------------- worst-case sharpness

def _project(eta: torch.Tensor, blocks: List[slice], p, rho: float) -> torch.Tensor:
    if p != 2:
        return eta.clamp_(-rho, rho)
    for b in blocks:
        norm = float(eta[b].norm())
        if norm > rho:
            eta[b].mul_(rho / norm)
    return eta


def _direction(g: torch.Tensor, blocks: List[slice], p) -> torch.Tensor:
    """The steepest-ascent unit direction for the (product of) p-ball(s): g/‖g‖ per block, or sign(g)."""
    if p != 2:
        return torch.sign(g)
    d = torch.zeros_like(g)
    for b in blocks:
        norm = float(g[b].norm())
        if norm > 0:
            d[b] = g[b] / norm
    return d


def worst_case_sharpness(model: nn.Module, data: ProbeData, rho: float, ball: str = "global", p=2,
                         adaptive: bool = False, steps: Optional[int] = None, step_size: Optional[float] = None,
                         init: Optional[str] = None, seed: int = 0, progress: bool = False,
                         oracle: Optional[LossOracle] = None, loss_fn: Optional[LossFn] = None) -> Dict[str, object]:
    """max over ‖δ/c‖_p ≤ ρ of L(θ+δ) − L(θ) (c = |θ| if adaptive else 1), per block for ball="tensor".

    Projected normalised-gradient ascent in η = δ/c: η_{t+1} = Π(η_t + α_t ρ u_t), u_t the unit steepest
    ascent direction of the gradient in η (c ⊙ ∇L) — per block g/‖g‖ for p=2, sign for p=∞ — and
    α_t = step_size · (1 + cos(π t / steps)) / 2. The start is the ball's point in the gradient
    direction (SAM's step; blocks with a zero gradient start at a seeded random point of the sphere)
    or, with init="random", a seeded random point on the sphere. ``steps`` gradient evaluations; the
    value is the best loss seen along the path."""
    if not (math.isfinite(rho) and rho > 0):
        raise FlatnessError(f"rho must be > 0 and finite, got {rho}")
    if ball not in BALLS:
        raise FlatnessError(f"ball must be one of {', '.join(BALLS)}, got {ball!r}")
    p = _check_p(p)
    steps = int(DEFAULTS["ascent_steps"] if steps is None else steps)
    if steps < 1:
        raise FlatnessError(f"ascent steps must be >= 1, got {steps}")
    step_size = float(DEFAULTS["step_size"] if step_size is None else step_size)
    init = DEFAULTS["init"] if init is None else init
    if init not in ("gradient", "random"):
        raise FlatnessError(f"init must be gradient or random, got {init!r}")
    start = time.perf_counter()
    with _EvalMode(model):
        oracle = _oracle(model, data, oracle, loss_fn, None)
        before = oracle.counts()
        blocks = oracle.blocks(ball)
        c = oracle.theta.abs() if adaptive else torch.ones_like(oracle.theta)
        z = _normal(oracle, seed)
        rand = _direction(z, blocks, p) * rho  # a random point of each block's sphere (a corner for p=inf)
        if init == "gradient":
            base, g = oracle.loss_and_grad(None)
            u = _direction(g * c, blocks, p) * rho
            eta = u.clone()
            for b in blocks:  # blocks with no gradient start at the random point
                if not torch.any(u[b] != 0):
                    eta[b] = rand[b]
        else:
            base = oracle.loss(None)
            eta = rand.clone()
        best_value, best_eta, best_step = -math.inf, eta.clone(), 0
        bar = progress_bar(progress, steps, f"{'adaptive_' if adaptive else ''}worst_case rho={rho:g}")
        try:
            for t in range(steps):
                value, g = oracle.loss_and_grad(c * eta)
                if value > best_value:
                    best_value, best_eta, best_step = value, eta.clone(), t
                alpha = step_size * 0.5 * (1.0 + math.cos(math.pi * t / steps))
                eta = _project(eta + alpha * rho * _direction(g * c, blocks, p), blocks, p, rho)
                bar.update(1)
        finally:
            bar.close()
        value = oracle.loss(c * eta)
        if value > best_value:
            best_value, best_eta, best_step = value, eta, steps
    name = "adaptive_worst_case" if adaptive else "worst_case"
    record = {"metric": name, "value": best_value - base, "rho": float(rho), "p": _p_name(p), "ball": ball,
              "c": "|theta|" if adaptive else "1", "base_loss": base, "max_loss": best_value,
              "solver": "projected normalised-gradient ascent", "iterations": steps, "best_step": best_step, "init": init,
              "step_size": step_size, "delta_norm": float((c * best_eta).norm())}
    record.update(_counts_record(oracle, before))
    record["seconds"] = time.perf_counter() - start
    return record


# --------------------------------------------------------------------------- average-case sharpness

def average_case_sharpness(model: nn.Module, data: ProbeData, rho: float, draws: Optional[int] = None,
                           adaptive: bool = False, seed: int = 0, progress: bool = False,
                           oracle: Optional[LossOracle] = None, loss_fn: Optional[LossFn] = None) -> Dict[str, object]:
    """E over δ ~ N(0, ρ² diag(c²)) of L(θ+δ) − L(θ), c = |θ| if adaptive else 1; mean over ``draws``
    seeded draws and its standard error (None for one draw). Draw k uses seed·1000003 + k."""
    if not (math.isfinite(rho) and rho > 0):
        raise FlatnessError(f"rho must be > 0 and finite, got {rho}")
    draws = int(DEFAULTS["draws"] if draws is None else draws)
    if draws < 1:
        raise FlatnessError(f"draws must be >= 1, got {draws}")
    start = time.perf_counter()
    with _EvalMode(model):
        oracle = _oracle(model, data, oracle, loss_fn, None)
        before = oracle.counts()
        c = oracle.theta.abs() if adaptive else torch.ones_like(oracle.theta)
        base = oracle.loss(None)
        increases = []
        bar = progress_bar(progress, draws, f"{'adaptive_' if adaptive else ''}average_case rho={rho:g}")
        try:
            for k in range(draws):
                delta = rho * c * _normal(oracle, _draw_seed(seed, k))
                increases.append(oracle.loss(delta) - base)
                bar.update(1)
        finally:
            bar.close()
    values = np.asarray(increases, dtype=np.float64)
    stderr = float(values.std(ddof=1) / math.sqrt(draws)) if draws > 1 else None
    name = "adaptive_average_case" if adaptive else "average_case"
    record = {"metric": name, "value": float(values.mean()), "stderr": stderr, "rho": float(rho), "p": None,
              "ball": None, "c": "|theta|" if adaptive else "1", "base_loss": base, "draws": draws,
              "solver": "monte-carlo", "iterations": draws}
    record.update(_counts_record(oracle, before))
    record["seconds"] = time.perf_counter() - start
    return record


def _draw_seed(seed: int, k: int) -> int:
    return (int(seed) * 1000003 + k) % (2 ** 63)


# --------------------------------------------------------------------------- PAC-Bayes flatness

def pac_bayes_flatness(model: nn.Module, data: ProbeData, draws: Optional[int] = None, magnitude: bool = False,
                       target_deviation: Optional[float] = None, tolerance: Optional[float] = None,
                       max_steps: Optional[int] = None, sigma_start: Optional[float] = None, seed: int = 0,
                       progress: bool = False, oracle: Optional[LossOracle] = None,
                       error_fn: Optional[ErrorFn] = None) -> Dict[str, object]:
    """σ* = the largest σ with mean over draws of err(θ+u_σ) ≤ err(θ) + target_deviation; flatness 1/σ*².

    u_σ = σ z (or, magnitude-aware, sqrt(σ² θ² + 1e-6) ⊙ z) with the same seeded standard normal z_k
    for draw k at every σ (common random numbers: the estimate is a deterministic, nearly monotone
    function of σ). A bracket [lo, hi] (lo passes, hi fails) is found by doubling / halving from
    ``sigma_start``, then bisected until hi − lo ≤ tolerance · hi; σ* is the midpoint of the final
    bracket. ``iterations`` counts the σ values tried. If even σ = 1e-12 breaks the target, σ* = 0 and
    flatness is None (infinitely sharp; JSON-safe); if σ = 1e6 still passes, σ* = the last σ that passed
    and ``converged`` is False."""
    draws = int(DEFAULTS["pac_bayes_draws"] if draws is None else draws)
    if draws < 1:
        raise FlatnessError(f"draws must be >= 1, got {draws}")
    target_deviation = float(DEFAULTS["target_deviation"] if target_deviation is None else target_deviation)
    if not 0 < target_deviation < 1:
        raise FlatnessError(f"target deviation must be in (0, 1), got {target_deviation}")
    tolerance = float(DEFAULTS["bisection_tolerance"] if tolerance is None else tolerance)
    max_steps = int(DEFAULTS["bisection_max_steps"] if max_steps is None else max_steps)
    eps = float(DEFAULTS["magnitude_eps"])
    start = time.perf_counter()
    with _EvalMode(model):
        oracle = _oracle(model, data, oracle, None, error_fn)
        before = oracle.counts()
        theta2 = oracle.theta.double() ** 2
        base_err = oracle.error(None)
        limit = base_err + target_deviation
        if sigma_start is None:
            sigma_start = 0.05 if magnitude else 0.01
        bar = progress_bar(progress, max_steps, f"pac_bayes{'_magnitude' if magnitude else ''}")
        tried = []

        def mean_error(sigma: float) -> float:
            if magnitude:
                scale = torch.sqrt(sigma ** 2 * theta2 + eps).to(oracle.dtype)
            else:
                scale = torch.full_like(oracle.theta, sigma)
            total = 0.0
            for k in range(draws):
                total += oracle.error(scale * _normal(oracle, _draw_seed(seed, k)))
            value = total / draws
            tried.append((sigma, value))
            bar.update(1)
            return value

        try:
            lo, hi, sigma = 0.0, math.inf, float(sigma_start)
            steps = 0
            # bracket: lo passes (or is 0), hi fails
            while steps < max_steps:
                steps += 1
                if mean_error(sigma) <= limit:
                    lo = sigma
                    if sigma > 1e6:
                        break
                    if hi < math.inf:
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
                if mean_error(mid) <= limit:
                    lo = mid
                else:
                    hi = mid
        finally:
            bar.close()
        converged = hi < math.inf and lo > 0 and hi - lo <= tolerance * hi
        sigma_star = 0.5 * (lo + hi) if hi < math.inf else lo
    name = "pac_bayes_magnitude" if magnitude else "pac_bayes"
    record = {"metric": name, "value": None, "sigma": sigma_star,
              "flatness": (1.0 / sigma_star ** 2) if sigma_star > 0 else None,
              "p": None, "ball": None, "c": "sqrt(sigma^2 theta^2 + 1e-6)" if magnitude else "1",
              "base_error": base_err, "target_deviation": target_deviation, "draws": draws,
              "sigma_low": lo, "sigma_high": hi if hi < math.inf else None, "converged": bool(converged),
              "solver": "bisection", "iterations": steps}
    record["value"] = record["flatness"]
    record.update(_counts_record(oracle, before))
    record["seconds"] = time.perf_counter() - start
    return record


# --------------------------------------------------------------------------- validation and driver

def _parse_metrics(metrics) -> Tuple[str, ...]:
    if metrics is None:
        raise FlatnessError("no sharpness metric given; use all or some of: " + ", ".join(METRIC_NAMES))
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",")]
    names: List[str] = []
    for m in metrics:
        m = str(m).strip().lower().replace("-", "_")
        if not m:
            continue
        if m == "all":
            chosen = list(METRIC_NAMES)
        elif m in METRIC_NAMES:
            chosen = [m]
        else:
            raise FlatnessError(f"unknown sharpness metric {m!r}; choose all or some of: " + ", ".join(METRIC_NAMES))
        names.extend(n for n in chosen if n not in names)
    if not names:
        raise FlatnessError("no sharpness metric given; use all or some of: " + ", ".join(METRIC_NAMES))
    return tuple(names)


def _radii(values, default, what: str) -> Tuple[float, ...]:
    if values is None:
        values = default
    if isinstance(values, (int, float)):
        values = [values]
    out = []
    for v in values:
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise FlatnessError(f"{what} must be a number, got {v!r}") from None
        if not (math.isfinite(v) and v > 0):
            raise FlatnessError(f"{what} must be > 0 and finite, got {v:g}")
        out.append(v)
    return tuple(out)


def validate(metrics, rhos=None, epsilons=None, ball: str = "tensor", draws: Optional[int] = None,
             ascent_steps: Optional[int] = None, p=None, **_ignored) -> Tuple[str, ...]:
    """Check sharpness options before any work; returns the metric names (``all`` expanded, no duplicates).

    Raises ``FlatnessError`` with a one-line message for unknown metrics, radii ≤ 0 or not finite, a
    metric that needs radii given none, an unknown ball or p, draws < 1 or ascent steps < 1."""
    names = _parse_metrics(metrics)
    rhos = _radii(rhos, DEFAULTS["rhos"], "rho")
    epsilons = _radii(epsilons, DEFAULTS["epsilons"], "epsilon")
    if any(n in RHO_METRICS for n in names) and not rhos:
        raise FlatnessError("the chosen sharpness metrics need at least one rho")
    if "keskar" in names and not epsilons:
        raise FlatnessError("keskar sharpness needs at least one epsilon")
    if ball not in BALLS:
        raise FlatnessError(f"ball must be one of {', '.join(BALLS)}, got {ball!r}")
    if p is not None:
        _check_p(p)
    for label, value in (("draws", draws), ("ascent steps", ascent_steps)):
        if value is not None:
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise FlatnessError(f"{label} must be an integer >= 1, got {value}")
    return names


def compute(model: nn.Module, data: ProbeData, metrics=METRIC_NAMES, rhos: Optional[Sequence[float]] = None,
            epsilons: Optional[Sequence[float]] = None, ball: str = "tensor", draws: Optional[int] = None,
            ascent_steps: Optional[int] = None, seed: int = 0, progress: bool = True, p=None,
            lbfgs_iterations: Optional[int] = None, pac_bayes_draws: Optional[int] = None,
            loss_fn: Optional[LossFn] = None, error_fn: Optional[ErrorFn] = None) -> List[Dict[str, object]]:
    """Every requested metric at every radius: one dict per (metric, radius), in the order asked
    (``"all"``: METRIC_NAMES order).

    ``rhos`` serve the worst-case and average-case metrics (plain and adaptive), ``epsilons`` Keskar's;
    ``None`` takes ``DEFAULTS``. ``draws`` is the Monte-Carlo count of the average-case metrics (PAC-Bayes
    uses ``pac_bayes_draws``, default ``DEFAULTS['pac_bayes_draws']``, per bisection step). Each dict has
    ``metric``, ``value``, its parameters (``rho``/``epsilon``, ``p``, ``ball``, ``c``), solver info
    (``solver``, ``iterations``, ``loss_evals``, ``gradient_evals``, ``error_evals``) and ``seconds``;
    average-case adds ``stderr``, PAC-Bayes ``sigma`` and ``flatness`` (= its ``value``). The weights are
    restored bit for bit and the model's train/eval mode is restored."""
    names = validate(metrics, rhos, epsilons, ball, draws, ascent_steps, p)
    rhos = _radii(rhos, DEFAULTS["rhos"], "rho")
    epsilons = _radii(epsilons, DEFAULTS["epsilons"], "epsilon")
    p = _check_p(DEFAULTS["p"] if p is None else p)
    results: List[Dict[str, object]] = []
    with _EvalMode(model):
        oracle = LossOracle(model, data, loss_fn, error_fn)
        for name in names:
            if name == "keskar":
                for eps in epsilons:
                    results.append(keskar_sharpness(model, data, eps, iterations=lbfgs_iterations, seed=seed,
                                                    progress=progress, oracle=oracle))
            elif name in ("worst_case", "adaptive_worst_case"):
                for rho in rhos:
                    results.append(worst_case_sharpness(model, data, rho, ball=ball, p=p,
                                                        adaptive=name.startswith("adaptive"), steps=ascent_steps,
                                                        seed=seed, progress=progress, oracle=oracle))
            elif name in ("average_case", "adaptive_average_case"):
                for rho in rhos:
                    results.append(average_case_sharpness(model, data, rho, draws=draws,
                                                          adaptive=name.startswith("adaptive"), seed=seed,
                                                          progress=progress, oracle=oracle))
            else:
                results.append(pac_bayes_flatness(model, data, draws=pac_bayes_draws,
                                                  magnitude=name == "pac_bayes_magnitude", seed=seed,
                                                  progress=progress, oracle=oracle))
    return results
