"""Sharpness metrics of trained weights (docs/metrics.md, "Sharpness").

Keskar ε-sharpness, worst-case and adaptive sharpness, average-case sharpness and PAC-Bayes flatness.
Each metric takes a ``LossOracle`` first, as the spectral routines take a ``HessianOperator``, and
returns a result dataclass; ``measure_sharpness`` builds the oracle and runs every requested metric.
"""

from flatness.sharpness.average_case import AverageCaseResult, average_case_sharpness
from flatness.sharpness.keskar import KeskarResult, keskar_sharpness
from flatness.sharpness.measure import (
    SharpnessResult,
    SharpnessSettings,
    measure_sharpness,
    measure_with_oracle,
    parse_metrics,
    radii,
)
from flatness.sharpness.oracle import (
    BALLS,
    DEFAULTS,
    EPSILON_METRICS,
    METRIC_NAMES,
    RHO_METRICS,
    LossOracle,
    SharpnessRecord,
    default_error,
)
from flatness.sharpness.pac_bayes import BisectionSettings, PacBayesResult, bisect_sigma, pac_bayes_flatness
from flatness.sharpness.worst_case import AscentSettings, WorstCaseResult, worst_case_sharpness

__all__ = [
    "BALLS",
    "DEFAULTS",
    "EPSILON_METRICS",
    "METRIC_NAMES",
    "RHO_METRICS",
    "AscentSettings",
    "AverageCaseResult",
    "BisectionSettings",
    "KeskarResult",
    "LossOracle",
    "PacBayesResult",
    "SharpnessRecord",
    "SharpnessResult",
    "SharpnessSettings",
    "WorstCaseResult",
    "average_case_sharpness",
    "bisect_sigma",
    "default_error",
    "keskar_sharpness",
    "measure_sharpness",
    "measure_with_oracle",
    "pac_bayes_flatness",
    "parse_metrics",
    "radii",
    "worst_case_sharpness",
]
