"""The one loss oracle every sharpness metric uses, and the helpers and settings they share.

:class:`LossOracle` gives the exact mean loss (and its gradient, and the mean error) over every
example of the data at θ + δ, with batch b weighted by n_b / n, the model in eval mode (BatchNorm
uses its running statistics; buffers are never perturbed). Only the trainable parameters (the flat
vector θ of :mod:`flatness.core.params`) move, always through :func:`flatness.core.params.perturbed`,
so the weights are restored bit for bit after every evaluation. Every random draw comes from the
routine's own ``torch.Generator`` seeded by ``seed``.

One loss convention (``flatness.core.losses``): ``loss_fn(outputs, targets)`` is one batch's
mean loss (cross-entropy by default) and ``error_fn(outputs, targets)`` its mean error (by default
the fraction whose largest output is not the label). That default error exists only where accuracy
does (``flatness.core.losses.accuracy_defined``: a classification loss on class scores); on any other
loss (regression) the quantities defined on the error (PAC-Bayes) are defined on the loss instead
(``LossOracle.criterion``), never on an argmax of a regression output.

A float16/bfloat16 model is measured on a float32 copy and a compiled one through its original module
(``flatness.core.measured.second_order_model``); ``oracle.model`` is the module actually moved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.core.evaluation import full_gradient, probe_for
from flatness.core.losses import LossFn, accuracy_defined, check_loss_value, resolve_loss
from flatness.core.measured import second_order_model
from flatness.core.params import flatten, get_flat_params, named_trainable, perturbed, segments
from flatness.data.batches import OutputFn, forward

METRIC_NAMES = (
    "keskar",
    "worst_case",
    "adaptive_worst_case",
    "average_case",
    "adaptive_average_case",
    "pac_bayes",
    "pac_bayes_magnitude",
)

#: Which metrics take a radius ρ (``rhos``) and which an ε (``epsilons``).
RHO_METRICS = ("worst_case", "adaptive_worst_case", "average_case", "adaptive_average_case")
EPSILON_METRICS = ("keskar",)
BALLS = ("global", "tensor")

DEFAULTS: dict[str, object] = {
    "epsilons": (1e-3, 5e-4),  # Keskar's usual box sizes (docs/metrics.md)
    "rhos": (0.02, 0.05, 0.1),  # 0.02 = AMP ε of the digits default training (TrainConfig, tensor ball)
    "ball": "tensor",  # the AMP ball
    "p": 2,  # norm of the (adaptive) worst-case ball: 2 or inf
    "draws": 16,  # Monte-Carlo draws per average-case estimate
    "ascent_steps": 10,  # gradient evaluations of the worst-case ascent
    "step_size": 1.0,  # first ascent step, as a fraction of ρ (cosine decay to 0)
    "init": "gradient",  # ascent start: "gradient" (SAM direction) or "random"
    "lbfgs_iterations": 10,  # L-BFGS-B iterations for Keskar (maxiter)
    "pac_bayes_draws": 8,  # Monte-Carlo draws per bisection step
    "target_deviation": 0.1,  # err(θ+u) ≤ err(θ) + 0.1
    "bisection_tolerance": 0.02,  # stop when (hi − lo) ≤ tol · hi
    "bisection_max_steps": 30,
    "magnitude_eps": 1e-6,  # the + 1e-6 of the magnitude-aware variance
}

ErrorFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | float]


def default_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The fraction of the batch whose largest output is not the label (classification error)."""
    return (outputs.argmax(1) != targets).double().mean()


class LossOracle:
    """Loss, gradient and error over all data at θ + δ (δ a flat vector, or None for θ).

    Batch means are weighted by n_b / n, so every value is the exact mean over all n examples.
    Counts every full-data evaluation (``loss_evals``, ``gradient_evals``, ``error_evals``).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        loss_fn: LossFn | str | None = None,
        error_fn: ErrorFn | None = None,
        output_fn: OutputFn | None = None,
    ):
        """The oracle of ``model`` on ``data``.

        Args:
            model: any ``nn.Module`` with trainable parameters (the caller chooses its mode).
            data: any form ``flatness.data.convert.as_probe_data`` accepts.
            loss_fn: ``loss_fn(outputs, targets)`` -> batch mean loss (or a loss name); cross-entropy by default.
            error_fn: ``error_fn(outputs, targets)`` -> batch mean error; argmax ≠ label by default
                (where accuracy is defined; see ``criterion``).
            output_fn: what of the model's output the loss sees (``flatness.data.batches.model_output``).
        """
        self.loss_fn = resolve_loss(loss_fn)
        model, self.note = second_order_model(model)
        pairs = named_trainable(model)
        if not pairs:
            raise FlatnessError("the model has no trainable parameters")
        self.model = model
        self.data = probe_for(model, data)
        self.output_fn = output_fn
        self.user_error_fn = error_fn
        self.error_fn = error_fn or default_error
        self._criterion: str | None = "error" if error_fn is not None else None
        self.names = [n for n, _ in pairs]
        self.params = [p for _, p in pairs]
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        self.theta = get_flat_params(model)
        self.loss_evals = 0
        self.gradient_evals = 0
        self.error_evals = 0

    @property
    def dim(self) -> int:
        """d, the number of trainable parameters."""
        return self.theta.numel()

    def counts(self) -> tuple[int, int, int]:
        """(loss_evals, gradient_evals, error_evals) so far."""
        return self.loss_evals, self.gradient_evals, self.error_evals

    def _at(self, delta: torch.Tensor | None):
        if delta is None:
            delta = torch.zeros_like(self.theta)
        return perturbed(self.model, delta)

    def _mean(self, batch_fn, delta: torch.Tensor | None) -> float:
        """Σ_b (n_b / n) · batch_fn(outputs_b, y_b) at θ + δ: the exact mean over all n examples."""
        total = 0.0
        with self._at(delta), torch.no_grad():
            for w, (x, y) in zip(self.data.weights(), self.data):
                total += w * float(batch_fn(forward(self.model, x, self.output_fn), y))
        return total

    def _batch_loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return check_loss_value(self.loss_fn(outputs, targets), self.loss_fn)

    def criterion(self) -> str:
        """What the error-based metrics (PAC-Bayes) measure: ``"error"`` or ``"loss"``.

        ``"error"`` with a user's ``error_fn``, or where accuracy is defined (a classification loss on
        class scores, judged on the first batch); ``"loss"`` otherwise (regression: an argmax of its
        outputs would be a meaningless error, docs/metrics.md).
        """
        if self._criterion is None:
            x, y = self.data.batches[0]
            with torch.no_grad():
                outputs = forward(self.model, x, self.output_fn)
            self._criterion = "error" if accuracy_defined(outputs, y, self.loss_fn) else "loss"
        return self._criterion

    def loss(self, delta: torch.Tensor | None = None) -> float:
        """L(θ+δ), the mean loss over all data."""
        self.loss_evals += 1
        return self._mean(self._batch_loss, delta)

    def loss_and_grad(self, delta: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
        """(L(θ+δ), ∇L(θ+δ) as a flat vector on θ's device)."""
        self.gradient_evals += 1
        with self._at(delta), torch.enable_grad():
            total, grads = full_gradient(self.model, self.data, self.params, self.loss_fn, self.output_fn)
        return total, flatten(grads).detach()

    def error(self, delta: torch.Tensor | None = None) -> float:
        """err(θ+δ), the mean error over all data (the mean loss where ``criterion()`` is ``"loss"``)."""
        self.error_evals += 1
        return self._mean(self.error_fn if self.criterion() == "error" else self._batch_loss, delta)

    def blocks(self, ball: str) -> list[slice]:
        """Slices of the flat vector: one for the global ball, one per parameter tensor otherwise."""
        if ball == "global":
            return [slice(0, self.dim)]
        return segments(self.params)


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    return g


def standard_normal(oracle: LossOracle, seed: int) -> torch.Tensor:
    """A standard normal vector shaped like θ, drawn on the CPU (same numbers on every device)."""
    z = torch.randn(oracle.dim, generator=generator(seed), dtype=torch.float32)
    return z.to(oracle.device, oracle.dtype)


def draw_seed(seed: int, k: int) -> int:
    """The seed of Monte-Carlo draw k: seed·1000003 + k (common random numbers across radii)."""
    return (int(seed) * 1000003 + k) % (2**63)


class SharpnessRecord:
    """What every metric's result dataclass shares: ``to_dict``, the record as the probe JSON holds it.

    The fields, in order, are the record's keys (the layout of flatness.formats.probe_file); the
    constant ones (``solver``, the ball of a metric that has none) are fields without an argument.
    """

    def to_dict(self) -> dict[str, object]:
        """The record as a plain dict, keys in field order (the probe JSON's ``sharpness`` entries)."""
        return dataclasses.asdict(self)


def counts_record(oracle: LossOracle, before: tuple[int, int, int]) -> dict[str, int]:
    """The evaluations made since ``before`` (an ``oracle.counts()``), as record entries."""
    now = oracle.counts()
    return {"loss_evals": now[0] - before[0], "gradient_evals": now[1] - before[1], "error_evals": now[2] - before[2]}


def check_p(p) -> int | float:
    """The ball's norm as 2 or inf; anything else is a FlatnessError."""
    if p in (2, "2"):
        return 2
    if p in (float("inf"), "inf", "Inf", "INF", "linf"):
        return float("inf")
    raise FlatnessError(f"p must be 2 or inf, got {p!r}")


def p_name(p) -> int | str:
    """The norm as written in a record: 2 or "inf"."""
    return 2 if p == 2 else "inf"
