"""``measure_sharpness``: every requested sharpness metric at every radius, on one shared oracle.

Also the validation of its options (docs/metrics.md, section Sharpness).

Metrics (``METRIC_NAMES``): ``keskar`` (flatness.sharpness.keskar), ``worst_case`` /
``adaptive_worst_case`` (flatness.sharpness.worst_case), ``average_case`` / ``adaptive_average_case``
(flatness.sharpness.average_case), ``pac_bayes`` / ``pac_bayes_magnitude``
(flatness.sharpness.pac_bayes).

Default radii (``DEFAULTS``): ε ∈ {1e-3, 5e-4} for Keskar (the usual values); ρ ∈ {0.02, 0.05, 0.1} for
the ball and Gaussian metrics, where 0.02 is the AMP ε of the digits default training
(``TrainConfig().epsilon``, tensor ball; a test keeps the two in step), so ``worst_case`` at ρ = 0.02
with the default tensor ball is exactly the AMP loss minus the ERM loss of that training. (For the
published CIFAR recipe pass ρ = 0.5.) Note the scales: ρ is the radius of a whole ball for the
worst-case metrics but a per-coordinate standard deviation for the average-case ones, whose
perturbation norm is about ρ·sqrt(d).

Default budget (``DEFAULTS``), chosen so that ``all`` on 1000 digits images of the default convnet
takes well under a minute on two CPU cores: 10 L-BFGS-B iterations (Keskar et al. used 10), 10 ascent
steps, 16 draws per average-case estimate, 8 draws per PAC-Bayes bisection step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.core.evaluation import LossFn, eval_mode
from flatness.data.batches import OutputFn
from flatness.sharpness.average_case import average_case_sharpness
from flatness.sharpness.keskar import keskar_sharpness
from flatness.sharpness.oracle import BALLS, DEFAULTS, METRIC_NAMES, RHO_METRICS, ErrorFn, LossOracle, check_p
from flatness.sharpness.pac_bayes import pac_bayes_flatness
from flatness.sharpness.worst_case import worst_case_sharpness

Radii = float | Sequence[float] | None


@dataclass
class SharpnessSettings:
    """How the metrics are computed (``None``: the value in ``DEFAULTS``).

    ``ball``/``p``: the worst-case ball; ``draws``: average-case Monte-Carlo draws;
    ``ascent_steps``: worst-case gradient evaluations; ``lbfgs_iterations``: Keskar's solver;
    ``pac_bayes_draws``: draws per PAC-Bayes bisection step; ``seed`` for every random draw;
    ``progress``: progress bars.
    """

    ball: str = "tensor"
    p: Any = None
    draws: int | None = None
    ascent_steps: int | None = None
    lbfgs_iterations: int | None = None
    pac_bayes_draws: int | None = None
    seed: int = 0
    progress: bool = False


def parse_metrics(metrics) -> tuple[str, ...]:
    """The metric names of ``metrics``; unknown or missing names are a FlatnessError.

    ``metrics`` is a comma-separated string or a list; ``all`` is expanded, duplicates dropped and
    ``-`` read as ``_``.
    """
    if metrics is None:
        raise FlatnessError("no sharpness metric given; use all or some of: " + ", ".join(METRIC_NAMES))
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",")]
    names: list[str] = []
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


def radii(values: Radii, default, what: str) -> tuple[float, ...]:
    """``values`` (a number or a sequence; ``None``: ``default``) as finite floats > 0."""
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


def validate(
    metrics,
    rhos: Radii = None,
    epsilons: Radii = None,
    ball: str = "tensor",
    draws: int | None = None,
    ascent_steps: int | None = None,
    p=None,
) -> tuple[str, ...]:
    """Check sharpness options before any work.

    Args:
        metrics: names (a comma-separated string or a list; ``all`` for every metric).
        rhos: radii of the worst- and average-case metrics (``None``: ``DEFAULTS``).
        epsilons: box sizes of Keskar's metric (``None``: ``DEFAULTS``).
        ball: ``"global"`` or ``"tensor"``.
        draws: average-case draws (``None``: default).
        ascent_steps: worst-case gradient evaluations (``None``: default).
        p: the worst-case norm, 2 or inf (``None``: default).

    Returns:
        The metric names (``all`` expanded, no duplicates).

    Raises:
        FlatnessError: one line, for unknown metrics, radii ≤ 0 or not finite, a metric that needs
            radii given none, an unknown ball or p, draws < 1 or ascent steps < 1.
    """
    names = parse_metrics(metrics)
    rhos = radii(rhos, DEFAULTS["rhos"], "rho")
    epsilons = radii(epsilons, DEFAULTS["epsilons"], "epsilon")
    if any(n in RHO_METRICS for n in names) and not rhos:
        raise FlatnessError("the chosen sharpness metrics need at least one rho")
    if "keskar" in names and not epsilons:
        raise FlatnessError("keskar sharpness needs at least one epsilon")
    if ball not in BALLS:
        raise FlatnessError(f"ball must be one of {', '.join(BALLS)}, got {ball!r}")
    if p is not None:
        check_p(p)
    for label, value in (("draws", draws), ("ascent steps", ascent_steps)):
        if value is not None:
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise FlatnessError(f"{label} must be an integer >= 1, got {value}")
    return names


def validate_settings(metrics, rho: Radii, epsilon: Radii, settings: SharpnessSettings) -> tuple[str, ...]:
    """``validate`` with the options of ``settings``; returns the metric names."""
    return validate(metrics, rho, epsilon, settings.ball, settings.draws, settings.ascent_steps, settings.p)


def measure_sharpness(
    model: nn.Module,
    data: Any,
    metrics=METRIC_NAMES,
    rho: Radii = None,
    epsilon: Radii = None,
    loss_fn: LossFn | str | None = None,
    error_fn: ErrorFn | None = None,
    settings: SharpnessSettings | None = None,
    output_fn: OutputFn | None = None,
) -> list[dict[str, object]]:
    """Every requested metric at every radius: one record per (metric, radius).

    Records come in the order asked (``"all"``: METRIC_NAMES order).

    Args:
        model: any ``nn.Module``; measured in eval mode; its weights (bit for bit) and each
            module's mode are restored afterwards.
        data: any form ``flatness.data.convert.as_probe_data`` accepts; read once.
        metrics: names, a comma-separated string, or ``"all"``.
        rho: radius or radii of the worst-case and average-case metrics (``None``: ``DEFAULTS``).
        epsilon: box size(s) of Keskar's metric (``None``: ``DEFAULTS``).
        loss_fn: ``loss_fn(outputs, targets)`` -> batch mean loss, or a loss name
            (``flatness.core.losses.LOSS_NAMES``); cross-entropy by default.
        error_fn: ``error_fn(outputs, targets)`` -> batch mean error (PAC-Bayes); argmax ≠ label
            by default where accuracy is defined, else PAC-Bayes is defined on the loss (its
            record's ``criterion``).
        settings: ball, p, budgets, seed and progress (``SharpnessSettings()`` by default).
        output_fn: what of the model's output the loss sees (``flatness.data.batches.model_output``).

    Returns:
        A list of dicts with ``metric``, ``value``, its parameters (``rho``/``epsilon``, ``p``,
        ``ball``, ``c``), solver info (``solver``, ``iterations``, ``loss_evals``,
        ``gradient_evals``, ``error_evals``) and ``seconds``; average-case adds ``stderr``,
        PAC-Bayes ``sigma`` and ``flatness`` (= its ``value``).

    Examples:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> x, t = torch.diag(torch.tensor([1.0, 2.0, 3.0])), torch.zeros(3, 1)
        >>> model = nn.Linear(3, 1, bias=False)  # mean squared error: H = 2/n xᵀx = diag(2/3, 8/3, 6)
        >>> from flatness import measure_sharpness
        >>> _ = nn.init.zeros_(model.weight)  # the minimum: the worst case in the ball is ρ² λ_max / 2
        >>> (record,) = measure_sharpness(model, (x, t), metrics=["worst_case"], rho=[0.1], loss_fn=F.mse_loss)
        >>> record["metric"], round(record["value"], 3)  # 0.1² · 6 / 2
        ('worst_case', 0.03)
    """
    s = settings or SharpnessSettings()
    names = validate_settings(metrics, rho, epsilon, s)
    rhos = radii(rho, DEFAULTS["rhos"], "rho")
    epsilons = radii(epsilon, DEFAULTS["epsilons"], "epsilon")
    p = check_p(DEFAULTS["p"] if s.p is None else s.p)
    results: list[dict[str, object]] = []
    with eval_mode(model):
        oracle = LossOracle(model, data, loss_fn, error_fn, output_fn)
        common = dict(seed=s.seed, progress=s.progress, oracle=oracle)
        for name in names:
            adaptive = name.startswith("adaptive")
            if name == "keskar":
                results.extend(
                    keskar_sharpness(model, None, eps, iterations=s.lbfgs_iterations, **common) for eps in epsilons
                )
            elif name in ("worst_case", "adaptive_worst_case"):
                results.extend(
                    worst_case_sharpness(
                        model, None, r, ball=s.ball, p=p, adaptive=adaptive, steps=s.ascent_steps, **common
                    )
                    for r in rhos
                )
            elif name in ("average_case", "adaptive_average_case"):
                results.extend(
                    average_case_sharpness(model, None, r, draws=s.draws, adaptive=adaptive, **common) for r in rhos
                )
            else:
                results.append(
                    pac_bayes_flatness(
                        model, None, draws=s.pac_bayes_draws, magnitude=name == "pac_bayes_magnitude", **common
                    )
                )
    return results
