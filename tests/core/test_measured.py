"""flatness.core.measured: a float64 model measured in float64, a half model on a float32 copy (with a warning
and a note), a compiled model through its original module, and a model mixing float dtypes refused."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from tiny_mlp import tiny_mlp, tiny_xy

import flatness
from flatness.core.errors import FlatnessError
from flatness.core.losses import LOSS_NAMES, named_loss


def test_a_float64_model_is_measured_in_float64():
    model, (x, y) = tiny_mlp(dtype=torch.float64), tiny_xy()
    loss, _ = flatness.evaluate(model, (x, y))  # float32 data: moved to the model's dtype
    with torch.no_grad():
        reference = F.cross_entropy(model(x.double()), y).item()
    assert abs(loss - reference) <= 1e-12
    for name in LOSS_NAMES:  # every named loss keeps float64 outputs in float64
        if name in ("ce", "nll"):
            out = named_loss(name)(torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 1]))
        else:
            out = named_loss(name)(torch.randn(4, 1, dtype=torch.float64), torch.tensor([0, 1, 1, 0]))
        assert out.dtype == torch.float64
    assert named_loss("ce")(torch.randn(4, 3, dtype=torch.bfloat16), torch.tensor([0, 1, 2, 1])).dtype == torch.float32


def test_a_half_model_is_measured_on_a_float32_copy():
    model, (x, y) = tiny_mlp(dtype=torch.bfloat16), tiny_xy()
    with pytest.warns(UserWarning, match="bfloat16: its Hessian and sharpness are measured on a float32 copy"):
        op = flatness.HessianOperator(model, (x, y))
    assert op.dtype == torch.float32 and next(model.parameters()).dtype == torch.bfloat16
    reference = flatness.HessianOperator(tiny_mlp(dtype=torch.bfloat16).float(), (x, y))
    v = torch.randn(op.dim)
    torch.testing.assert_close(op.matvec(v), reference.matvec(v), rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = flatness.measure(model, (x, y), top_k=1)
    assert "float32 copy" in result["precision_note"]
    assert flatness.evaluate(model, (x, y))[0] == pytest.approx(flatness.evaluate(model.float(), (x, y))[0], rel=0.05)


def test_a_compiled_model_is_measured_through_its_original_module():
    model, (x, y) = tiny_mlp(), tiny_xy()
    compiled = torch.compile(model)
    assert flatness.evaluate(compiled, (x, y)) == flatness.evaluate(model, (x, y))
    v = torch.randn(51, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(
        flatness.HessianOperator(compiled, (x, y)).matvec(v), flatness.HessianOperator(model, (x, y)).matvec(v)
    )


def test_a_model_mixing_float_dtypes_is_refused():
    model = tiny_mlp()
    model[2].double()
    with pytest.raises(FlatnessError, match="mix floating dtypes \\(float32, float64\\)"):
        flatness.evaluate(model, tiny_xy())
