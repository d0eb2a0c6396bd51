"""What a comparison measures: the rows of its table (``Quantity``) and every number of one run.

Definitions used in the table:

* test accuracy: the last epoch's ``test_acc`` in ``metrics.jsonl`` (the full test split, as training
  evaluated it); without a metrics file, the probe's accuracy when the probe was made on the test split;
* generalisation gap (accuracy): train accuracy − test accuracy, both from the last epoch of
  ``metrics.jsonl``, in percentage points; (loss): test loss − train loss, in nats;
* λ1..λ5: the top Hessian eigenvalues of the probe's loss; trace: Hutchinson's estimate;
* sharpness: each metric of the probe's ``sharpness`` list, one quantity per metric and radius.

For every flatness quantity, lower means flatter.

Each quantity says whether it is *invariant* to a function-preserving rescaling of a ReLU net (a layer's
weights and bias ×c, the next layer's weights ÷c): the accuracies and losses are (the function is the
same), the adaptive (|θ|-scaled) sharpness metrics and the magnitude-aware PAC-Bayes bound are, while the
Hessian eigenvalues and trace, plain worst/average-case sharpness, Keskar's box and plain PAC-Bayes are
not (tests/study/test_quantities.py rescales a net and checks this table).

The *primary* measures are declared before any data (``primary_rule``): λmax, the trace, worst-case
sharpness at the perturbation method's own radius and at a fifth of it, adaptive worst-case sharpness
at that radius, and the magnitude-aware PAC-Bayes bound. The study's verdict is stated on them; every
other flatness row is exploratory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flatness.study.run_record import RunRecord


@dataclass
class Quantity:
    """One row of the comparison table: what is measured, in which unit, how, and which way is better.

    ``better`` says which direction of a difference counts as an improvement; ``flatness`` marks the
    flatness/sharpness measures, whose improvements are reported as "flatter" and adjusted together.
    """

    key: str
    label: str
    unit: str
    how: str
    better: str  # "lower" or "higher"
    flatness: bool = False  # a flatness/sharpness measure (lower = flatter)
    invariant: bool | None = None  # unchanged by a function-preserving rescaling of a ReLU net's layers
    primary: bool = False  # one of the primary measures declared before the data (primary_rule)


# Which sharpness metrics are invariant to a function-preserving layer rescaling (×c, ÷c).
INVARIANT_METRICS = {
    "keskar": False,  # the box ε(|θ|+1) is not proportional to |θ|
    "worst_case": False,
    "average_case": False,
    "adaptive_worst_case": True,  # the ball is ‖δ/|θ|‖ ≤ ρ: it scales with the layer
    "adaptive_average_case": True,
    "pac_bayes": False,
    "pac_bayes_magnitude": True,  # σ scaled by |θ| (up to its + 1e-6 floor)
}
#: The primary measures' rule, as the report states it.
PRIMARY_RULE = (
    "λmax, the Hessian trace, worst-case sharpness at the perturbation method's own radius r (AMP's ε, "
    "else SAM's ρ) and at r/5, adaptive worst-case sharpness at r (scale-invariant), and the "
    "magnitude-aware PAC-Bayes bound (scale-invariant)"
)
PRIMARY_FRACTION = 5  # the smaller primary radius is r / 5


def training_radius(configs: Sequence[dict[str, Any]]) -> float | None:
    """The radius r of the primary rule: AMP's ε when AMP was trained, else SAM's ρ (None: neither).

    Args:
        configs: the runs' training configs (``config.json``), each with ``method``.

    Returns:
        r, or None.
    """
    for method, key in (("amp", "epsilon"), ("sam", "rho")):
        for c in configs:
            if c.get("method") == method and finite_float(c.get(key)) is not None:
                return float(c[key])
    return None


def primary_radii(radius: float | None) -> tuple[float, ...]:
    """The radii the primary rule needs probed: r and r/5 (none without r)."""
    return () if radius is None else (radius, radius / PRIMARY_FRACTION)


def _close(a, b) -> bool:
    return a is not None and b is not None and math.isclose(float(a), float(b), rel_tol=1e-9)


def is_primary_sharpness(entry: dict[str, Any], radius: float | None) -> bool:
    """Whether a probe's sharpness entry is one of the primary measures for training radius r."""
    metric, rho = entry.get("metric"), finite_float(entry.get("rho"))
    if metric == "pac_bayes_magnitude":
        return True
    if radius is None or entry.get("p") not in (None, 2):
        return False
    if metric == "worst_case":
        return any(_close(rho, r) for r in primary_radii(radius))
    return metric == "adaptive_worst_case" and _close(rho, radius)


BASE_QUANTITIES = [
    Quantity("test_acc", "test accuracy", "%", "last epoch of training, full test split", "higher", invariant=True),
    Quantity(
        "train_acc",
        "train accuracy (logged)",
        "%",
        "last epoch's running mean during training (train mode, weights changing)",
        "higher",
        invariant=True,
    ),
    Quantity(
        "probe_acc",
        "train accuracy (probe)",
        "%",
        "final weights, eval mode, on the training probe data",
        "higher",
        invariant=True,
    ),
    Quantity(
        "gap_acc",
        "generalisation gap (accuracy)",
        "pp",
        "train accuracy (probe, eval mode; else the logged one) − test accuracy",
        "lower",
        invariant=True,
    ),
    Quantity(
        "gap_loss",
        "generalisation gap (loss)",
        "nats",
        "test loss − train loss (probe, eval mode; else the logged one)",
        "lower",
        invariant=True,
    ),
    Quantity(
        "probe_loss",
        "train loss (probe)",
        "nats",
        "mean loss (the run's, cross-entropy by default) on the probe data, eval mode",
        "lower",
        invariant=True,
    ),
]


def finite_float(value) -> float | None:
    """``value`` as a float when it is a finite number, else None (missing, text, NaN or ±inf).

    Args:
        value: anything read from a JSON file or a training log.

    Returns:
        The float, or None.
    """
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _fmt_radius(v) -> str:
    return f"{float(v):g}" if finite_float(v) is not None else str(v)


def sharpness_key(entry: dict[str, Any]) -> str:
    """One name per metric and radius, e.g. ``worst_l2 ρ=0.05`` or ``adaptive_worst ρ=0.5 p=inf``."""
    name = str(entry.get("metric", "sharpness"))
    parts = [name]
    if entry.get("rho") is not None:
        parts.append(f"ρ={_fmt_radius(entry['rho'])}")
    if entry.get("epsilon") is not None:
        parts.append(f"ε={_fmt_radius(entry['epsilon'])}")
    if entry.get("p") is not None and "worst" in name:  # c (1 or |θ|) is in the metric's name already
        parts.append(f"p={entry['p']}")
    return " ".join(parts)


def sharpness_unit(metric: str) -> tuple[str, str]:
    """The unit and a one-line definition of a sharpness metric, for the table's rows and notes.

    Args:
        metric: the metric's name as the probe JSON stores it (matched by substrings, any case).

    Returns:
        ``(unit, how)``: e.g. ``("nats", "max of L(θ+δ) − L(θ) over the ball, ...")``.
    """
    m = metric.lower()
    if "pac" in m:
        return "1/σ²", "PAC-Bayes flatness 1/σ*² (bisection on σ with Monte-Carlo draws)"
    if m.startswith("eps") or "keskar" in m:
        return "%", "ε-sharpness: 100·(max over the box of L(θ+y) − L(θ))/(1+L(θ))"
    if "avg" in m or "average" in m:
        return "nats", "mean of L(θ+δ) − L(θ) over Gaussian draws"
    if "adaptive" in m:
        return "nats", "max of L(θ+δ) − L(θ) over ‖δ/|θ|‖_p ≤ ρ, projected gradient ascent"
    return "nats", "max of L(θ+δ) − L(θ) over the ball, projected gradient ascent"


def record_values(rec: RunRecord) -> dict[str, float]:
    """Every number of one run, by quantity key (missing quantities are left out)."""
    out: dict[str, float] = {}
    last = rec.epochs[-1] if rec.epochs else {}
    p = rec.probe or {}
    for key in ("test_acc", "train_acc"):
        v = finite_float(last.get(key))
        if v is not None:
            out[key] = 100.0 * v
    split = (p.get("data") or {}).get("split")
    if "test_acc" not in out and split == "test" and finite_float(p.get("accuracy")) is not None:
        out["test_acc"] = 100.0 * float(p["accuracy"])
    on_train = split == "train"
    if on_train and finite_float(p.get("accuracy")) is not None:
        out["probe_acc"] = 100.0 * float(p["accuracy"])
    if on_train and finite_float(p.get("loss")) is not None:  # the row is the train loss: a test probe's is not
        out["probe_loss"] = float(p["loss"])
    # the gap uses the final weights in eval mode on the training probe data when there is such a probe,
    # else the training log's running mean over the last epoch
    train_acc = out.get("probe_acc", out.get("train_acc"))
    if train_acc is not None and "test_acc" in out:
        out["gap_acc"] = train_acc - out["test_acc"]
    tl = finite_float(last.get("test_loss"))
    trl = (
        float(p["loss"])
        if on_train and finite_float(p.get("loss")) is not None
        else finite_float(last.get("train_loss"))
    )
    if tl is not None and trl is not None:
        out["gap_loss"] = tl - trl
    if p:
        out.update(probe_values(p))
    return out


def probe_values(probe: dict[str, Any]) -> dict[str, float]:
    """The flatness numbers of one probe JSON: λ1..λ5, the trace and every sharpness metric and radius.

    Args:
        probe: the probe JSON, as read.

    Returns:
        ``{quantity key: value}``; non-finite or missing values are left out.
    """
    out: dict[str, float] = {}
    eig = (probe.get("hessian") or {}).get("eigenvalues") or []
    for i, lam in enumerate(eig[:5]):
        if finite_float(lam) is not None:
            out[f"lambda_{i + 1}"] = float(lam)
    trace = (probe.get("trace") or {}).get("estimate")
    if finite_float(trace) is not None:
        out["trace"] = float(trace)
    for entry in probe.get("sharpness") or []:
        v = finite_float(entry.get("value"))
        if v is not None:
            out["sharp:" + sharpness_key(entry)] = v
    return out


def quantities_for(records: Sequence[RunRecord]) -> list[Quantity]:
    """The table's rows, in a fixed order, for the quantities any record has (primaries marked)."""
    radius = training_radius([r.config for r in records if r.config])
    present = set()
    for r in records:
        present.update(r.values)
    out = [q for q in BASE_QUANTITIES if q.key in present]
    for i in range(1, 6):
        if f"lambda_{i}" in present:
            out.append(
                Quantity(
                    f"lambda_{i}",
                    "λmax" if i == 1 else f"λ{i}",
                    "",
                    f"Hessian eigenvalue #{i} of the probe loss",
                    "lower",
                    True,
                    invariant=False,
                    primary=i == 1,
                )
            )
    if "trace" in present:
        how = "Hutchinson estimate over Rademacher vectors"
        out.append(Quantity("trace", "Hessian trace", "", how, "lower", True, invariant=False, primary=True))
    sharp = []
    for r in records:
        for entry in (r.probe or {}).get("sharpness") or []:
            key = "sharp:" + sharpness_key(entry)
            if key in present and key not in [s.key for s in sharp]:
                metric = str(entry.get("metric", ""))
                unit, how = sharpness_unit(metric)
                invariant = INVARIANT_METRICS.get(metric)
                primary = is_primary_sharpness(entry, radius)
                sharp.append(Quantity(key, sharpness_key(entry), unit, how, "lower", True, invariant, primary))
    return out + sharp
