"""flatness.hessian.density: SLQ's quadrature against the moments of the dense float64 Hessian and against a
discrete spectral measure it must recover exactly; the smoothed density integrates to one."""

import math

import numpy as np
import pytest
import torch
from hessian_helpers import DenseOp

from flatness.hessian import HessianOperator, default_grid, density_on_grid, slq


def test_slq_moments(setup):
    model, data, H, _ = setup
    op = HessianOperator(model, data)
    d = op.dim
    res = slq(op, steps=20, vectors=16, seed=0)
    nodes, weights = res.flat()
    assert abs(weights.sum() - 1) < 1e-10 and (weights >= 0).all()
    evals = torch.linalg.eigvalsh(H).numpy()
    assert nodes.min() >= evals.min() - 1e-8 and nodes.max() <= evals.max() + 1e-8
    t1, t2 = float(torch.trace(H)) / d, float(torch.trace(H @ H)) / d
    # Each vector's quadrature gives zᵀHz and ‖Hz‖² (unit z), whose expectations are tr(H)/d and
    # tr(H²)/d: the averages must agree within 4 standard errors of the mean over vectors.
    for power, target in ((1, t1), (2, t2)):
        per_vector = (res.weights * res.nodes**power).sum(1) * res.vectors
        mean = float((weights * nodes**power).sum())
        assert abs(mean - per_vector.mean()) < 1e-12
        stderr = per_vector.std(ddof=1) / math.sqrt(res.vectors)
        assert abs(mean - target) <= 4 * stderr + 1e-12
    # each vector's quadrature reproduces its own first two moments exactly
    g = torch.Generator().manual_seed(0)
    z = torch.randint(0, 2, (d,), generator=g, dtype=torch.int8).double() * 2 - 1
    z = z / z.norm()
    assert abs(float((res.weights[0] * res.nodes[0]).sum() * res.vectors) - float(z @ H @ z)) < 1e-9
    hz = H @ z
    assert abs(float((res.weights[0] * res.nodes[0] ** 2).sum() * res.vectors) - float(hz @ hz)) < 1e-9


def test_density_on_grid_integrates_to_one():
    nodes, weights = np.array([0.0, 1.0, 5.0]), np.array([0.2, 0.3, 0.5])
    grid, sigma = default_grid(nodes, points=4000)
    values = density_on_grid(nodes, weights, grid, sigma)
    assert abs(float(((values[1:] + values[:-1]) / 2 * np.diff(grid)).sum()) - 1) < 1e-3
    with pytest.raises(ValueError):
        density_on_grid(nodes, weights, grid, 0.0)


def test_slq_recovers_a_discrete_spectral_measure_exactly():
    """A spectrum of 20 distinct eigenvalues (each 15 times; 4 large and close, 16 in a bulk far below):
    z's spectral measure has 20 atoms, so exact Lanczos stops after 20 steps and its Gauss quadrature
    IS that measure: one node per eigenvalue, weighted by |P_λ z|². Without full re-orthogonalisation
    the converged large eigenvalues come back as ghost copies (44 nodes here), splitting their weight."""
    vals = torch.tensor([1000.0, 999.0, 998.0, 997.0] + list(np.linspace(0.0, 1.0, 16)), dtype=torch.float64)
    evals = vals.repeat_interleave(15)
    d, vectors = evals.numel(), 3
    res = slq(DenseOp(torch.diag(evals)), steps=60, vectors=vectors, seed=0)
    g = torch.Generator().manual_seed(0)  # slq's own draws: Rademacher z, normalised
    for i in range(vectors):
        z = torch.randint(0, 2, (d,), generator=g, dtype=torch.int8).double() * 2 - 1
        atoms = torch.stack([(z[evals == v] ** 2).sum() / d for v in vals]).numpy()  # |P_λ z|², ‖z‖ = 1
        weights, nodes = res.weights[i] * vectors, res.nodes[i]
        live = weights > 0
        assert live.sum() == len(vals), f"{live.sum()} quadrature nodes for {len(vals)} eigenvalues"
        order = np.argsort(nodes[live])
        np.testing.assert_allclose(nodes[live][order], np.sort(vals.numpy()), rtol=0, atol=1e-9)
        np.testing.assert_allclose(weights[live][order], atoms[np.argsort(vals.numpy())], rtol=1e-9, atol=1e-14)
        for p in range(2 * len(vals)):  # every moment the 20-node Gauss rule integrates exactly
            exact = float((atoms * (vals.numpy() / 1000) ** p).sum())
            assert abs(float((weights * (nodes / 1000) ** p).sum()) - exact) <= 1e-11 * exact
