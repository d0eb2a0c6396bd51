"""HessianOperator, eigen solvers, trace and SLQ against a dense float64 Hessian on tiny models."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from flatness.data.probe_data import ProbeData
from flatness.hessian import (
    HessianOperator,
    default_grid,
    density_on_grid,
    hutchinson,
    hutchpp,
    lanczos,
    power_iteration,
    slq,
)


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def _tiny(kind):
    torch.manual_seed(1)
    if kind == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 4))
    else:
        model = TinyCNN()
        with torch.no_grad():  # non-trivial running statistics, used in eval mode
            model.bn.running_mean.uniform_(-0.5, 0.5)
            model.bn.running_var.uniform_(0.5, 2.0)
            model.bn.weight.uniform_(0.5, 1.5)
            model.bn.bias.uniform_(-0.2, 0.2)
    model.double().train()  # the operator must switch to eval mode itself (and restore train mode)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(37, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (37,), generator=g)
    return model, ProbeData.from_tensors(x, y, 10), (x, y)


def _dense(model, xy, names=None):
    """The Hessian of the mean loss over all 37 examples, by torch.autograd.functional.hessian."""
    x, y = xy
    pairs = [(n, p) for n, p in model.named_parameters() if names is None or n in names]
    shapes = [p.shape for _, p in pairs]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in pairs])

    def loss(flat):
        params, offset = {}, 0
        for (n, _), s in zip(pairs, shapes):
            k = math.prod(s)
            params[n] = flat[offset : offset + k].view(s)
            offset += k
        return F.cross_entropy(functional_call(model, params, (x,), strict=False), y)

    was = model.training
    model.eval()
    H = torch.autograd.functional.hessian(loss, flat0)
    model.train(was)
    return (H + H.T) / 2


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def setup(request):
    model, data, xy = _tiny(request.param)
    return model, data, _dense(model, xy), xy


def _cos(a, b):
    return abs(float(a @ b) / float(a.norm() * b.norm()))


@pytest.mark.parametrize("backend", ["double-backward", "forward-over-reverse"])
def test_hvp_matches_dense(setup, backend):
    model, data, H, _ = setup
    op = HessianOperator(model, data, backend=backend)
    assert op.dim == H.shape[0] and op.dtype == torch.float64
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(op.dim, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-9, atol=1e-10)
    assert op.hvps == 3
    assert model.training  # mode restored
    torch.testing.assert_close(op @ v, H @ v, rtol=1e-9, atol=1e-10)
    if backend != "double-backward":
        return
    dense = op.to_dense()
    torch.testing.assert_close((dense + dense.T) / 2, H, rtol=1e-8, atol=1e-10)


def test_backends_agree_and_deterministic(setup):
    model, data, _, _ = setup
    v = torch.randn(HessianOperator(model, data).dim, dtype=torch.float64)
    a = HessianOperator(model, data, backend="double-backward").matvec(v)
    b = HessianOperator(model, data, backend="forward-over-reverse").matvec(v)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    op = HessianOperator(model, data)
    assert torch.equal(op.matvec(v), op.matvec(v))


def test_single_batch_cached_graph(setup):
    model, _, H, (x, y) = setup
    op = HessianOperator(model, ProbeData.from_tensors(x, y, 100))
    assert op.cache_graph
    v = torch.randn(op.dim, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), H @ v, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(op.matvec(2 * v), 2 * H @ v, rtol=1e-9, atol=1e-10)
    with torch.no_grad():  # weights changed in place: the cached graph must not be reused
        first = next(model.parameters())
        first.mul_(1.5)
    try:
        H2 = _dense(model, (x, y))
        torch.testing.assert_close(op.matvec(v), H2 @ v, rtol=1e-9, atol=1e-10)
    finally:
        with torch.no_grad():
            first.div_(1.5)


def test_subset_operator_is_dense_sub_block(setup):
    model, data, _, xy = setup
    names = [n for n, _ in model.named_parameters()][-2:]
    op = HessianOperator(model, data, params=names)
    Hs = _dense(model, xy, names)
    assert op.names == names and op.dim == Hs.shape[0]
    v = torch.randn(op.dim, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), Hs @ v, rtol=1e-9, atol=1e-10)


def _check_pairs(result, evals, evecs, idx, rel=1e-4):
    for j, i in enumerate(idx):
        assert abs(result.eigenvalues[j] - evals[i]) <= rel * abs(evals[i]), (j, result.eigenvalues[j], evals[i])
        assert _cos(result.eigenvectors[j], evecs[:, i]) > 0.999
    assert result.eigenvectors.shape == (len(idx), evecs.shape[0])


def test_lanczos_largest_and_smallest(setup):
    model, data, H, _ = setup
    evals, evecs = torch.linalg.eigh(H)
    op = HessianOperator(model, data)
    top = lanczos(op, k=5, which="largest", tol=1e-7, seed=0)
    assert top.converged and top.method == "lanczos" and max(top.residuals) <= 1e-7
    assert top.eigenvalues == sorted(top.eigenvalues, reverse=True)
    _check_pairs(top, evals, evecs, [len(evals) - 1 - j for j in range(5)])
    assert top.hvps == op.hvps and top.seconds > 0
    low = lanczos(op, k=2, which="smallest", tol=1e-7, seed=1)
    assert low.converged and low.eigenvalues == sorted(low.eigenvalues)
    _check_pairs(low, evals, evecs, [0, 1])
    assert low.negative == [ev < 0 for ev in low.eigenvalues]


@pytest.mark.parametrize("check", ["stored", "hvp"])
def test_lanczos_thick_restart(setup, check):
    model, data, H, _ = setup
    evals, evecs = torch.linalg.eigh(H)
    res = lanczos(HessianOperator(model, data), k=3, tol=1e-7, max_basis=8, seed=0, check=check)
    assert res.converged
    _check_pairs(res, evals, evecs, [len(evals) - 1, len(evals) - 2, len(evals) - 3])
    # the reported residuals are those of fresh products with the returned vectors
    for lam, v, r in zip(res.eigenvalues, res.eigenvectors, res.residuals):
        fresh = float((H @ v - lam * v).norm()) / abs(lam)
        assert abs(fresh - r) <= 1e-9 + 1e-3 * fresh


def test_power_iteration(setup):
    model, data, H, _ = setup
    evals, evecs = torch.linalg.eigh(H)
    op = HessianOperator(model, data)
    res = power_iteration(op, k=2, tol=1e-5, max_iter=2000, seed=0)
    assert res.method == "power" and res.converged and max(res.residuals) <= 1e-5
    by_mag = sorted(range(len(evals)), key=lambda i: -abs(float(evals[i])))[:2]
    _check_pairs(res, evals, evecs, by_mag)
    assert res.negative == [float(evals[i]) < 0 for i in by_mag]


def test_eigen_reproducible(setup):
    model, data, _, _ = setup
    op = HessianOperator(model, data)
    for fn in (lambda s: lanczos(op, 2, tol=1e-5, seed=s), lambda s: power_iteration(op, 2, tol=1e-3, seed=s)):
        a, b = fn(3), fn(3)
        assert a.eigenvalues == b.eigenvalues and a.hvps == b.hvps
        assert torch.equal(a.eigenvectors, b.eigenvectors)


def test_eigen_bad_arguments(setup):
    model, data, _, _ = setup
    op = HessianOperator(model, data)
    with pytest.raises(ValueError):
        lanczos(op, k=op.dim + 1)
    with pytest.raises(ValueError):
        power_iteration(op, k=0)
    with pytest.raises(ValueError):
        lanczos(op, k=1, which="middle")


@pytest.mark.parametrize("method", [hutchinson, hutchpp])
def test_trace(setup, method):
    model, data, H, _ = setup
    exact = float(torch.trace(H))
    op = HessianOperator(model, data)
    res = method(op, samples=30, seed=0)
    assert res.hvps == 30 and res.samples == 30 and res.stderr > 0
    assert abs(res.estimate - exact) <= 3 * res.stderr + 1e-12
    big = method(op, samples=300, seed=1)
    assert abs(big.estimate - exact) <= max(3 * big.stderr, 0.02 * abs(exact))
    assert big.stderr < res.stderr
    again = method(op, samples=30, seed=0)
    assert again.estimate == res.estimate


def test_hutchpp_exact_when_sketch_spans_space(setup):
    model, data, _, xy = setup
    names = [n for n, p in model.named_parameters() if p.numel() <= 30]  # biases and BatchNorm: small d
    op = HessianOperator(model, data, params=names)
    Hs = _dense(model, xy, names)
    res = hutchpp(op, samples=3 * op.dim, seed=0)  # the sketch spans R^d: exact, residual part zero
    assert abs(res.estimate - float(torch.trace(Hs))) <= 1e-8 * float(Hs.abs().sum())


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


class _DenseOp:
    """A matrix with the operator interface: exercises the solvers on a hard, known spectrum."""

    def __init__(self, H):
        self.H, self.dim, self.dtype, self.device, self.hvps = H, H.shape[0], H.dtype, H.device, 0

    def matvec(self, v):
        self.hvps += 1
        return self.H @ v


@pytest.mark.parametrize("check", ["stored", "hvp"])
def test_lanczos_random_matrix_restarts_and_budget(check):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(300, 300, generator=g, dtype=torch.float64)
    H = (A + A.T) / 2  # semicircle spectrum: small gaps at both ends, both signs
    evals = torch.linalg.eigvalsh(H)
    res = lanczos(_DenseOp(H), k=4, tol=1e-8, max_iter=2000, max_basis=20, check=check)
    assert res.converged and max(res.residuals) <= 1e-8
    assert torch.allclose(torch.tensor(res.eigenvalues, dtype=torch.float64), evals.flip(0)[:4], rtol=1e-10)
    low = lanczos(_DenseOp(H), k=3, which="smallest", tol=1e-8, max_iter=3000, max_basis=25, check=check)
    assert low.converged and torch.allclose(torch.tensor(low.eigenvalues, dtype=torch.float64), evals[:3], rtol=1e-10)
    assert low.negative == [True, True, True]
    short = lanczos(_DenseOp(H), k=4, tol=1e-8, max_iter=15, check=check)
    assert not short.converged and len(short.eigenvalues) == 4 and short.hvps <= 15 + 4


def test_slq_recovers_a_discrete_spectral_measure_exactly():
    """A spectrum of 20 distinct eigenvalues (each 15 times; 4 large and close, 16 in a bulk far below):
    z's spectral measure has 20 atoms, so exact Lanczos stops after 20 steps and its Gauss quadrature
    IS that measure: one node per eigenvalue, weighted by |P_λ z|². Without full re-orthogonalisation
    the converged large eigenvalues come back as ghost copies (44 nodes here), splitting their weight."""
    vals = torch.tensor([1000.0, 999.0, 998.0, 997.0] + list(np.linspace(0.0, 1.0, 16)), dtype=torch.float64)
    evals = vals.repeat_interleave(15)
    d, vectors = evals.numel(), 3
    res = slq(_DenseOp(torch.diag(evals)), steps=60, vectors=vectors, seed=0)
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
