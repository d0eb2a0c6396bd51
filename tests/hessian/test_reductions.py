"""Accurate float32 reductions for parameter-sized vectors, and what they buy the spectral routines.

Ground truth: float64 sums of the same float32 numbers, and a diagonal operator whose spectrum is
known exactly. With d in the millions, plain float32 norms and dot products are off by ~1e-4
relative on a CPU, which used to stall float32 Lanczos residuals near 1e-3 on PreActResNet-18.
"""

import math

import pytest
import torch

from flatness.hessian import lanczos, power_iteration
from flatness.hessian.reductions import BLOCK, CUDA_BLOCK, block_size, dot, norm, project_out, row_dots

D = 4_000_000


@pytest.fixture(scope="module")
def vectors():
    g = torch.Generator().manual_seed(0)
    # zero-mean Gaussian entries, like Lanczos vectors: torch's own float32 norm of such a vector of
    # 4M entries was off by 7.7e-5 relative on the development VM (1 thread), ours by 2e-8
    a = torch.randn(D, generator=g)
    b = torch.randn(D, generator=g) * 0.5 + 0.1
    return a, b


def test_dot_and_norm_match_float64_sums(vectors):
    a, b = vectors
    truth = float(a.double() @ b.double())
    scale = float(a.double().norm() * b.double().norm())  # a dot's rounding is relative to |a||b|
    assert abs(dot(a, b) - truth) <= 1e-7 * scale
    truth_norm = float(a.double().norm())
    assert abs(norm(a) - truth_norm) <= 1e-7 * truth_norm


def test_row_dots_and_projection(vectors):
    a, b = vectors
    rows = torch.stack([a, b, a - b])
    truth = rows.double() @ b.double()
    got = row_dots(rows, b)
    assert got.dtype == torch.float64
    scale = rows.double().norm(dim=1) * b.double().norm()
    assert ((got - truth).abs() <= 1e-7 * scale).all()
    unit = a / norm(a)
    rest = project_out(b, unit[None])
    assert abs(dot(rest, unit)) <= 1e-6 * norm(b)  # float32 storage of the result bounds this
    small = torch.arange(10.0)
    assert row_dots(small[None], small).item() == 285.0 and BLOCK > 10  # short vectors: one BLAS call


def test_block_size_per_device_and_the_cuda_block_is_accurate_too(vectors, monkeypatch):
    """CUDA takes bigger blocks (tree reductions, launch cost); the CPU runs the same blockwise code
    with that block size here, so the arithmetic of the CUDA path is checked without a GPU."""
    assert block_size(torch.device("cpu")) == BLOCK and block_size(torch.device("cuda", 0)) == CUDA_BLOCK
    a, b = vectors
    import flatness.hessian.reductions as red

    truth = float(a.double() @ b.double())
    scale = float(a.double().norm() * b.double().norm())
    monkeypatch.setattr(red, "block_size", lambda device: CUDA_BLOCK)  # 4 blocks of 2^20 over the 4M entries
    assert abs(dot(a, b) - truth) <= 1e-6 * scale


class Diagonal:
    """H = diag(values) in float32 with d in the millions: the spectrum is known exactly."""

    def __init__(self, values):
        self.values = values
        self.dim, self.dtype, self.device, self.hvps = values.numel(), values.dtype, values.device, 0

    def matvec(self, v):
        self.hvps += 1
        return self.values * v.to(self.dtype)


def test_float32_lanczos_on_millions_of_parameters_converges_tightly():
    g = torch.Generator().manual_seed(1)
    values = torch.rand(D, generator=g) * 0.5  # a bulk in [0, 0.5) ...
    top = torch.tensor([10.0, 7.0, 5.0, 4.0, 3.0])  # ... and five outliers, like a trained net's Hessian
    values[:5] = top
    op = Diagonal(values)
    # float32 storage of the vectors bounds residuals near 1e-6 (smaller eigenvalues, relative to
    # ||H||); 1e-5 is far below where float32 norms and dot products used to stall (~1e-4)
    result = lanczos(op, k=5, tol=1e-5, seed=0, max_iter=300)
    assert result.converged and max(result.residuals) <= 1e-5
    for got, want in zip(result.eigenvalues, top.tolist()):
        assert abs(got - want) <= 1e-6 * want
    for i, v in enumerate(result.eigenvectors):  # each is (up to sign) a unit coordinate vector
        assert abs(float(v[i])) >= 1 - 1e-6
    power = power_iteration(op, k=1, tol=1e-5, seed=0, max_iter=400)
    assert power.converged and math.isclose(power.eigenvalues[0], 10.0, rel_tol=1e-6)
