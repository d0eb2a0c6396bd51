"""flatness.hessian.eigen: Lanczos and power iteration against the eigenpairs of the dense float64 Hessian, and
Lanczos on a random symmetric matrix whose close eigenvalues at both ends need restarts."""

import pytest
import torch
from hessian_helpers import DenseOp

from flatness.hessian import HessianOperator, lanczos, power_iteration


def _cos(a, b):
    return abs(float(a @ b) / float(a.norm() * b.norm()))


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


@pytest.mark.parametrize("check", ["stored", "hvp"])
def test_lanczos_random_matrix_restarts_and_budget(check):
    g = torch.Generator().manual_seed(0)
    A = torch.randn(300, 300, generator=g, dtype=torch.float64)
    H = (A + A.T) / 2  # semicircle spectrum: small gaps at both ends, both signs
    evals = torch.linalg.eigvalsh(H)
    res = lanczos(DenseOp(H), k=4, tol=1e-8, max_iter=2000, max_basis=20, check=check)
    assert res.converged and max(res.residuals) <= 1e-8
    assert torch.allclose(torch.tensor(res.eigenvalues, dtype=torch.float64), evals.flip(0)[:4], rtol=1e-10)
    low = lanczos(DenseOp(H), k=3, which="smallest", tol=1e-8, max_iter=3000, max_basis=25, check=check)
    assert low.converged and torch.allclose(torch.tensor(low.eigenvalues, dtype=torch.float64), evals[:3], rtol=1e-10)
    assert low.negative == [True, True, True]
    short = lanczos(DenseOp(H), k=4, tol=1e-8, max_iter=15, check=check)
    assert not short.converged and len(short.eigenvalues) == 4 and short.hvps <= 15 + 4
