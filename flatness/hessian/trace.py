"""tr(H) by Hutchinson's estimator and by Hutch++ (Meyer, Musco, Musco & Woodruff 2021).

Both take an operator with ``dim``, ``dtype``, ``device``, ``matvec`` and ``hvps``; both draw
Rademacher vectors from their own seeded ``torch.Generator``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from flatness.core.progress import progress_bar
from flatness.hessian.reductions import dot, project_out


@dataclass
class TraceResult:
    """A trace estimate, its standard error and its cost (HVPs, samples, seconds)."""

    estimate: float
    stderr: float
    hvps: int
    samples: int
    seconds: float
    method: str

    def summary(self) -> dict:
        """The fields as a JSON-safe dict."""
        return asdict(self)


def _rademacher(op, gen: torch.Generator, count: int = 1) -> torch.Tensor:
    z = torch.randint(0, 2, (count, op.dim), generator=gen, dtype=torch.int8).to(op.device)
    return z.to(op.dtype) * 2 - 1


def _mean_stderr(values) -> tuple:
    t = torch.tensor(values, dtype=torch.float64)
    if t.numel() < 2:
        return float(t.mean()), float("nan")
    return float(t.mean()), float(t.std(unbiased=True) / math.sqrt(t.numel()))


def hutchinson(op, samples: int = 100, seed: int = 0, progress: bool = False) -> TraceResult:
    """tr(H) ≈ mean of zᵀHz over ``samples`` Rademacher z; stderr = sample std / √samples."""
    if samples < 2:
        raise ValueError(f"the trace needs at least 2 samples for an error estimate, got {samples}")
    start, hvps0 = time.perf_counter(), op.hvps
    gen = torch.Generator().manual_seed(int(seed))
    values = []
    with progress_bar(progress, samples, "trace (hutchinson)", unit="hvp") as bar:
        for _ in range(samples):
            z = _rademacher(op, gen)[0]
            values.append(dot(z, op.matvec(z)))
            bar.update(1)
    est, se = _mean_stderr(values)
    return TraceResult(est, se, op.hvps - hvps0, samples, time.perf_counter() - start, "hutchinson")


def hutchpp(op, samples: int = 100, seed: int = 0, progress: bool = False) -> TraceResult:
    """Hutch++ with a budget of ``samples`` HVPs.

    A third sketch H·S, a third for tr(QᵀHQ) on its orthonormal range Q (exact given Q), a third for
    Hutchinson on the deflated rest (I−QQᵀ)H(I−QQᵀ).

    The error estimate is the standard error of that Hutchinson part, the only random part once Q is
    fixed: an honest stderr of the estimate given the sketch. Best when a few large eigenvalues
    dominate the trace; costs memory samples/3 × d.
    """
    if samples < 6:
        raise ValueError(f"Hutch++ needs at least 6 HVPs (two per part), got {samples}")
    start, hvps0 = time.perf_counter(), op.hvps
    gen = torch.Generator().manual_seed(int(seed))
    r = samples // 3
    g = samples - 2 * r
    with progress_bar(progress, samples, "trace (hutch++)", unit="hvp") as bar:
        S = _rademacher(op, gen, r)
        Y = torch.empty_like(S)
        for i in range(r):
            Y[i] = op.matvec(S[i])
            bar.update(1)
        Q, _ = torch.linalg.qr(Y.T)  # d×r', orthonormal columns
        Q = Q.T
        exact = 0.0
        for q in Q:
            exact += dot(q, op.matvec(q))
            bar.update(1)
        values = []
        for _ in range(g):
            z = _rademacher(op, gen)[0]
            z = project_out(z, Q)
            values.append(dot(z, op.matvec(z)))
            bar.update(1)
    rest, se = _mean_stderr(values)
    return TraceResult(exact + rest, se, op.hvps - hvps0, samples, time.perf_counter() - start, "hutch++")


def estimate_trace(
    op, samples: int = 100, method: str = "hutchinson", seed: int = 0, progress: bool = False
) -> TraceResult:
    """tr(H) by ``"hutchinson"`` or ``"hutch++"`` with ``samples`` HVPs (see those functions).

    Examples:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> x, t = torch.diag(torch.tensor([1.0, 2.0, 3.0])), torch.zeros(3, 1)
        >>> model = nn.Linear(3, 1, bias=False)  # mean squared error: H = 2/n xᵀx = diag(2/3, 8/3, 6)
        >>> from flatness import HessianOperator, estimate_trace
        >>> op = HessianOperator(model, (x, t), loss_fn=F.mse_loss)
        >>> round(estimate_trace(op, samples=4).estimate, 4)  # zᵀHz is exact for a diagonal H: 28/3
        9.3333
        >>> round(estimate_trace(op, samples=9, method="hutch++").estimate, 4)  # its sketch spans all of R³
        9.3333
    """
    if method == "hutchinson":
        return hutchinson(op, samples, seed, progress)
    if method in ("hutch++", "hutchpp"):
        return hutchpp(op, samples, seed, progress)
    raise ValueError(f"unknown trace method {method!r}; use hutchinson or hutch++")
