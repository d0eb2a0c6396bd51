"""``measure_sharpness``: every requested sharpness metric at every radius, on one shared oracle.

``SharpnessSettings`` holds what to measure and how, checked in one place (``checked``), and
``radii`` is the one reader of radii, numbers or text as typed (docs/metrics.md, section Sharpness).
``measure_with_oracle`` runs the settings on a ``LossOracle`` of your own (a custom ``error_fn``).

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

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.core.evaluation import eval_mode
from flatness.core.losses import LossFn
from flatness.data.batches import OutputFn
from flatness.sharpness.average_case import AverageCaseResult, average_case_sharpness
from flatness.sharpness.keskar import KeskarResult, keskar_sharpness
from flatness.sharpness.oracle import BALLS, DEFAULTS, METRIC_NAMES, RHO_METRICS, LossOracle, check_p, p_name
from flatness.sharpness.pac_bayes import PacBayesResult, pac_bayes_flatness
from flatness.sharpness.worst_case import AscentSettings, WorstCaseResult, worst_case_sharpness

#: Radii: a number, a sequence of numbers, text as typed on the command line ("0.05,0.1"), or None.
Radii = float | str | Sequence[float] | None
#: One metric's result at one radius.
SharpnessResult = KeskarResult | WorstCaseResult | AverageCaseResult | PacBayesResult


@dataclass(frozen=True, kw_only=True)
class SharpnessSettings:
    """What sharpness is measured and how (``None``: the value in ``DEFAULTS``).

    ``metrics``: names, a comma-separated string or ``"all"`` (``parse_metrics``); ``rhos``: radii
    of the worst- and average-case metrics; ``epsilons``: box sizes of Keskar's metric (each as
    ``radii`` reads them); ``ball``/``p``: the worst-case ball; ``draws``: average-case Monte-Carlo
    draws; ``ascent_steps``: worst-case gradient evaluations; ``lbfgs_iterations``: Keskar's solver;
    ``pac_bayes_draws``: draws per PAC-Bayes bisection step; ``seed`` for every random draw;
    ``progress``: progress bars.
    """

    metrics: str | Sequence[str] = METRIC_NAMES
    rhos: Radii = None
    epsilons: Radii = None
    ball: str = "tensor"
    p: Any = None
    draws: int | None = None
    ascent_steps: int | None = None
    lbfgs_iterations: int | None = None
    pac_bayes_draws: int | None = None
    seed: int = 0
    progress: bool = False

    def checked(self) -> SharpnessSettings:
        """The settings checked before any work, as a copy in normal form.

        ``metrics`` becomes a tuple of names (``all`` expanded, no duplicates), ``rhos`` and
        ``epsilons`` tuples of floats (``DEFAULTS`` where None), ``p`` 2 or ``"inf"``; the budgets
        stay None where None (each metric's default).

        Raises:
            FlatnessError: one line naming the option: unknown metrics, radii ≤ 0 or not finite, a
                metric that needs radii given none, an unknown ball or p, a budget < 1.
        """
        names = parse_metrics(self.metrics)
        rhos = radii(self.rhos, DEFAULTS["rhos"], "rho")
        epsilons = radii(self.epsilons, DEFAULTS["epsilons"], "epsilon")
        if any(n in RHO_METRICS for n in names) and not rhos:
            raise FlatnessError("the chosen sharpness metrics need at least one rho")
        if "keskar" in names and not epsilons:
            raise FlatnessError("keskar sharpness needs at least one epsilon")
        if self.ball not in BALLS:
            raise FlatnessError(f"ball must be one of {', '.join(BALLS)}, got {self.ball!r}")
        p = p_name(check_p(DEFAULTS["p"] if self.p is None else self.p))
        budgets = (
            ("draws", self.draws),
            ("ascent steps", self.ascent_steps),
            ("lbfgs iterations", self.lbfgs_iterations),
            ("pac-bayes draws", self.pac_bayes_draws),
        )
        for label, value in budgets:
            if value is not None and not _is_count(value):
                raise FlatnessError(f"{label} must be an integer >= 1, got {value!r}")
        return dataclasses.replace(self, metrics=names, rhos=rhos, epsilons=epsilons, p=p)


def _is_count(value) -> bool:
    """Whether ``value`` is a whole number >= 1 (an int, or a float such as 3.0; never a bool or text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value == int(value) and value >= 1


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
    """``values`` as finite floats > 0; ``None``: ``default``.

    ``values`` is a number, a sequence of numbers, or text as typed on the command line
    (``"0.05,0.1"``; its errors name the flag, ``--rho``). ``what`` names the option (``"rho"``).
    """
    if values is None:
        values = default
    if isinstance(values, str):
        return _radii_text(values, what)
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


def _radii_text(text: str, what: str) -> tuple[float, ...]:
    """Radii typed as numbers separated by commas ("0.05,0.1"), each finite and > 0; at least one."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value = float(part)
        except ValueError:
            raise FlatnessError(f"--{what} takes numbers separated by commas, got {part!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise FlatnessError(f"--{what} values must be finite and > 0, got {part}")
        out.append(value)
    if not out:
        raise FlatnessError(f"--{what} needs at least one value")
    return tuple(out)


def measure_sharpness(
    model: nn.Module,
    data: Any,
    metrics: str | Sequence[str] | None = None,
    rho: Radii = None,
    epsilon: Radii = None,
    loss_fn: LossFn | str | None = None,
    settings: SharpnessSettings | None = None,
    output_fn: OutputFn | None = None,
) -> list[SharpnessResult]:
    """Every requested metric at every radius: one result per (metric, radius).

    Results come in the order asked (``"all"``: METRIC_NAMES order). The convenience layer: it
    builds the ``LossOracle`` and runs ``measure_with_oracle`` (build the oracle yourself for an
    ``error_fn`` of your own).

    Args:
        model: any ``nn.Module``; measured in eval mode; its weights (bit for bit) and each
            module's mode are restored afterwards.
        data: any form ``flatness.data.convert.as_probe_data`` accepts; read once.
        metrics: names, a comma-separated string, or ``"all"``; overrides ``settings.metrics``
            (all metrics by default).
        rho: radius or radii of the worst-case and average-case metrics; overrides ``settings.rhos``.
        epsilon: box size(s) of Keskar's metric; overrides ``settings.epsilons``.
        loss_fn: ``loss_fn(outputs, targets)`` -> batch mean loss, or a loss name
            (``flatness.core.losses.LOSS_NAMES``); cross-entropy by default.
        settings: metrics, radii, ball, p, budgets, seed and progress (``SharpnessSettings()``).
        output_fn: what of the model's output the loss sees (``flatness.data.batches.model_output``).

    Returns:
        The results (``KeskarResult``, ``WorstCaseResult``, ``AverageCaseResult``,
        ``PacBayesResult``), each with ``metric``, ``value``, its parameters (``rho``/``epsilon``,
        ``p``, ``ball``, ``c``), solver info (``solver``, ``iterations``, ``loss_evals``,
        ``gradient_evals``, ``error_evals``) and ``seconds``; ``to_dict()`` gives the probe record.

    Examples:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> x, t = torch.diag(torch.tensor([1.0, 2.0, 3.0])), torch.zeros(3, 1)
        >>> model = nn.Linear(3, 1, bias=False)  # mean squared error: H = 2/n xᵀx = diag(2/3, 8/3, 6)
        >>> from flatness import measure_sharpness
        >>> _ = nn.init.zeros_(model.weight)  # the minimum: the worst case in the ball is ρ² λ_max / 2
        >>> (result,) = measure_sharpness(model, (x, t), metrics=["worst_case"], rho=[0.1], loss_fn=F.mse_loss)
        >>> result.metric, round(result.value, 3)  # 0.1² · 6 / 2
        ('worst_case', 0.03)
    """
    shortcuts = {"metrics": metrics, "rhos": rho, "epsilons": epsilon}
    s = dataclasses.replace(settings or SharpnessSettings(), **{k: v for k, v in shortcuts.items() if v is not None})
    s = s.checked()  # every option, before the data is read
    with eval_mode(model):
        return measure_with_oracle(LossOracle(model, data, loss_fn, output_fn=output_fn), s)


def measure_with_oracle(oracle: LossOracle, settings: SharpnessSettings) -> list[SharpnessResult]:
    """Every metric of ``settings`` at every radius, all on ``oracle``: one result per (metric, radius).

    Args:
        oracle: the ``LossOracle`` of the model, data, loss and error; its model is measured in eval
            mode, its modes and weights restored after.
        settings: what to measure and how (checked here).

    Returns:
        The results in the order asked, as ``measure_sharpness`` returns them.
    """
    s = settings.checked()
    common = dict(seed=s.seed, progress=s.progress)
    results: list[SharpnessResult] = []
    for name in s.metrics:
        adaptive = name.startswith("adaptive")
        if name == "keskar":
            results.extend(keskar_sharpness(oracle, eps, s.lbfgs_iterations, **common) for eps in s.epsilons)
        elif name in ("worst_case", "adaptive_worst_case"):
            ascent = AscentSettings(steps=s.ascent_steps)
            results.extend(worst_case_sharpness(oracle, r, s.ball, s.p, adaptive, ascent, **common) for r in s.rhos)
        elif name in ("average_case", "adaptive_average_case"):
            results.extend(average_case_sharpness(oracle, r, s.draws, adaptive, **common) for r in s.rhos)
        else:
            results.append(pac_bayes_flatness(oracle, s.pac_bayes_draws, name == "pac_bayes_magnitude", **common))
    return results
