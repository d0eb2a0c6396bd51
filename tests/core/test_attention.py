"""``flatness.core.attention.exact_attention``: a Hessian-vector product through attention, checked by finite
differences, and the global attention settings restored afterwards."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from flatness.core.attention import exact_attention


def _setup():
    torch.manual_seed(0)
    block = nn.MultiheadAttention(embed_dim=4, num_heads=2, batch_first=True).double().eval()
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    params = list(block.parameters())
    v = [torch.randn_like(p) for p in params]
    return block, x, params, v


def _grads(block, x, params):
    out, _ = block(x, x, x, need_weights=False)
    return torch.autograd.grad((out**2).mean(), params, create_graph=True)


def test_a_hessian_vector_product_through_attention_matches_finite_differences():
    block, x, params, v = _setup()
    with exact_attention():
        grads = _grads(block, x, params)
        hvp = torch.autograd.grad(sum((g * d).sum() for g, d in zip(grads, v)), params)
    # ground truth: the central difference of the gradient along v
    eps = 1e-5
    shifted = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, d in zip(params, v):
                p.add_(d, alpha=sign * eps)
        shifted.append([g.detach() for g in _grads(block, x, params)])
        with torch.no_grad():
            for p, d in zip(params, v):
                p.sub_(d, alpha=sign * eps)
    for h, plus, minus in zip(hvp, *shifted):
        torch.testing.assert_close(h, (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-8)
    assert any(float(h.abs().max()) > 1e-3 for h in hvp)  # not a trivially zero product


@pytest.mark.parametrize("before", [True, False])
def test_the_fast_path_setting_is_restored_even_after_an_error(before):
    saved = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(before)
    try:
        with exact_attention():
            assert torch.backends.mha.get_fastpath_enabled() is False
        assert torch.backends.mha.get_fastpath_enabled() is before
        with pytest.raises(RuntimeError, match="inside"), exact_attention():
            raise RuntimeError("inside")
        assert torch.backends.mha.get_fastpath_enabled() is before
    finally:
        torch.backends.mha.set_fastpath_enabled(saved)
