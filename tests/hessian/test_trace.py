"""flatness.hessian.trace: Hutchinson and Hutch++ against the trace of the dense float64 Hessian, within their
standard errors, and Hutch++ exact once its sketch spans the space."""

import pytest
import torch
from hessian_helpers import dense_hessian

from flatness.hessian import HessianOperator, hutchinson, hutchpp


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
    Hs = dense_hessian(model, xy, names)
    res = hutchpp(op, samples=3 * op.dim, seed=0)  # the sketch spans R^d: exact, residual part zero
    assert abs(res.estimate - float(torch.trace(Hs))) <= 1e-8 * float(Hs.abs().sum())
