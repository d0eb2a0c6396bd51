"""Spectral density by stochastic Lanczos quadrature (SLQ; Ghorbani, Krishnan & Xiao 2019).

From a random unit vector v, m Lanczos steps (fully re-orthogonalised) give a tridiagonal T; its
eigenvalues θ_i are quadrature nodes and the squared first components of its eigenvectors the
weights, so that Σ w_i f(θ_i) ≈ vᵀ f(H) v, and E[vᵀ f(H) v] = tr f(H) / d. Averaging over several
vectors gives weights that sum to 1; a Gaussian kernel turns them into a density on a grid.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from flatness.core.progress import progress_bar
from flatness.hessian.reductions import dot, norm, normalize, project_out


@dataclass
class DensityResult:
    """SLQ quadrature nodes and weights per starting vector, and their cost."""

    nodes: np.ndarray  # (vectors, m) quadrature nodes, per starting vector
    weights: np.ndarray  # (vectors, m) weights; each row sums to 1/vectors, all of them to 1
    hvps: int
    seconds: float
    steps: int
    vectors: int

    def flat(self):
        """(nodes, weights) as 1-D arrays, weights summing to 1."""
        return self.nodes.reshape(-1), self.weights.reshape(-1)


def lanczos_tridiagonal(op, v0: torch.Tensor, steps: int):
    """At most ``steps`` Lanczos steps from v0 with full re-orthogonalisation: (alphas, betas) of T.

    Stops early when the Krylov space is exhausted (β ≈ 0), which makes the quadrature exact.
    """
    d = op.dim
    m = min(steps, d)
    Q = torch.empty(m, d, dtype=op.dtype, device=op.device)
    q = normalize(v0)
    alphas, betas = [], []
    for j in range(m):
        Q[j] = q
        w = op.matvec(q)
        alpha = dot(q, w)
        alphas.append(alpha)
        for _ in range(2):
            w = project_out(w, Q[: j + 1])
        beta = norm(w)
        if j == m - 1 or beta <= 1e-10 * max(1.0, max(abs(a) for a in alphas)):
            break
        betas.append(beta)
        q = w / beta
    return np.array(alphas), np.array(betas)


def slq(op, steps: int = 80, vectors: int = 5, seed: int = 0, progress: bool = False) -> DensityResult:
    """SLQ nodes and weights from ``vectors`` random (Rademacher, normalised) starting vectors.

    Examples:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> x, t = torch.diag(torch.tensor([1.0, 2.0, 3.0])), torch.zeros(3, 1)
        >>> model = nn.Linear(3, 1, bias=False)  # mean squared error: H = 2/n xᵀx = diag(2/3, 8/3, 6)
        >>> from flatness import HessianOperator, slq
        >>> nodes, weights = slq(HessianOperator(model, (x, t), loss_fn=F.mse_loss), steps=3, vectors=2).flat()
        >>> sorted({round(float(node), 4) for node in nodes})  # 3 steps in 3 dimensions: the eigenvalues
        [0.6667, 2.6667, 6.0]
        >>> round(float(weights.sum()), 6)
        1.0
    """
    if steps < 1 or vectors < 1:
        raise ValueError("SLQ needs steps >= 1 and vectors >= 1")
    start, hvps0 = time.perf_counter(), op.hvps
    gen = torch.Generator().manual_seed(int(seed))
    m = min(steps, op.dim)
    nodes = np.zeros((vectors, m))
    weights = np.zeros((vectors, m))
    with progress_bar(progress, vectors, "density (SLQ)", unit="vector") as bar:
        for i in range(vectors):
            z = torch.randint(0, 2, (op.dim,), generator=gen, dtype=torch.int8).to(op.device).to(op.dtype) * 2 - 1
            alphas, betas = lanczos_tridiagonal(op, z, m)
            T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
            theta, U = np.linalg.eigh(T)
            j = len(theta)
            nodes[i, :j] = theta
            weights[i, :j] = U[0, :] ** 2 / vectors
            if j < m:  # early stop: pad with zero-weight copies of the last node
                nodes[i, j:] = theta[-1]
            bar.update(1)
    return DensityResult(nodes, weights, op.hvps - hvps0, time.perf_counter() - start, m, vectors)


def density_on_grid(nodes, weights, grid, sigma: float) -> np.ndarray:
    """Σ_i w_i N(x; node_i, σ²) at every x of ``grid`` (integrates to Σ w_i = 1 over the real line)."""
    nodes = np.asarray(nodes, dtype=np.float64).reshape(-1)
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    grid = np.asarray(grid, dtype=np.float64)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    z = (grid[:, None] - nodes[None, :]) / sigma
    return (np.exp(-0.5 * z**2) @ weights) / (sigma * math.sqrt(2 * math.pi))


def default_grid(nodes, points: int = 512, sigma: float | None = None, pad: float = 0.05):
    """(grid, sigma) for plotting a density of ``nodes``.

    ``points`` points spanning the nodes plus 5% on each side (and 3σ); σ defaults to 1% of the node
    range.
    """
    nodes = np.asarray(nodes, dtype=np.float64).reshape(-1)
    lo, hi = float(nodes.min()), float(nodes.max())
    span = max(hi - lo, 1e-12 * max(1.0, abs(hi)), 1e-12)
    if sigma is None:
        sigma = 0.01 * span
    margin = pad * span + 3 * sigma
    return np.linspace(lo - margin, hi + margin, points), sigma
