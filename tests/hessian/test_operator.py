"""flatness.hessian.operator: Hessian-vector products against the dense float64 Hessian, on both backends, a
cached single-batch graph and a parameter subset (the tiny nets of tests/hessian_helpers.py)."""

import pytest
import torch
from hessian_helpers import dense_hessian

from flatness.data.probe_data import ProbeData
from flatness.hessian import HessianOperator


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
        H2 = dense_hessian(model, (x, y))
        torch.testing.assert_close(op.matvec(v), H2 @ v, rtol=1e-9, atol=1e-10)
    finally:
        with torch.no_grad():
            first.div_(1.5)


def test_subset_operator_is_dense_sub_block(setup):
    model, data, _, xy = setup
    names = [n for n, _ in model.named_parameters()][-2:]
    op = HessianOperator(model, data, params=names)
    Hs = dense_hessian(model, xy, names)
    assert op.names == names and op.dim == Hs.shape[0]
    v = torch.randn(op.dim, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), Hs @ v, rtol=1e-9, atol=1e-10)
