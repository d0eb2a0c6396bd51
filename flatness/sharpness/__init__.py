"""Sharpness metrics of trained weights (docs/metrics.md, "Sharpness").

Keskar ε-sharpness, worst-case and adaptive sharpness, average-case sharpness and PAC-Bayes flatness.
"""

from flatness.sharpness.average_case import average_case_sharpness
from flatness.sharpness.keskar import keskar_sharpness
from flatness.sharpness.measure import SharpnessSettings, measure_sharpness, parse_metrics, validate
from flatness.sharpness.oracle import (
    BALLS,
    DEFAULTS,
    EPSILON_METRICS,
    METRIC_NAMES,
    RHO_METRICS,
    LossOracle,
    default_error,
)
from flatness.sharpness.pac_bayes import bisect_sigma, pac_bayes_flatness
from flatness.sharpness.worst_case import worst_case_sharpness

__all__ = [
    "BALLS",
    "DEFAULTS",
    "EPSILON_METRICS",
    "METRIC_NAMES",
    "RHO_METRICS",
    "LossOracle",
    "SharpnessSettings",
    "average_case_sharpness",
    "bisect_sigma",
    "default_error",
    "keskar_sharpness",
    "measure_sharpness",
    "pac_bayes_flatness",
    "parse_metrics",
    "validate",
    "worst_case_sharpness",
]
