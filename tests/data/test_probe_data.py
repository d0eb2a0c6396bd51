"""flatness.data.probe_data: the first n examples in order, and batch weights that give the mean over all of them."""

import pytest
import torch
import torch.nn.functional as F
from tiny_mlp import tiny_mlp

import flatness
from flatness.core.evaluation import evaluate
from flatness.data.probe_data import load_probe_data
from flatness.models.registry import build_model


def test_probe_data_is_first_n_in_order_and_batch_weights_give_the_full_mean():
    data = load_probe_data("digits", "train", 100, 30)  # batches of 30, 30, 30, 10: uneven on purpose
    assert data.n == 100 and [y.shape[0] for _, y in data] == [30, 30, 30, 10]
    assert abs(sum(data.weights()) - 1.0) < 1e-12
    whole = load_probe_data("digits", "train", 100, 100)
    assert torch.equal(torch.cat([x for x, _ in data]), whole.batches[0][0])
    model = build_model("mlp", 1, 8, 10, width=8, depth=1).eval()
    loss_batched, acc_batched = evaluate(model, data)
    loss_whole, acc_whole = evaluate(model, whole)
    assert loss_batched == pytest.approx(loss_whole, rel=1e-6) and acc_batched == acc_whole


def test_data_follow_the_model_dtype_but_half_models_keep_float32_targets():
    x, y = torch.randn(6, 4), torch.randn(6, 1) + 1000.125  # needs more digits than bfloat16 has
    for dtype, target in ((torch.float64, torch.float64), (torch.bfloat16, torch.float32)):
        probe = flatness.as_probe_data((x, y), dtype=dtype)
        assert probe.batches[0][0].dtype == dtype and probe.batches[0][1].dtype == target
    model = tiny_mlp(out=1, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = F.mse_loss(model(x.bfloat16()).float(), y).item()
    assert flatness.evaluate(model, (x, y), "mse")[0] == pytest.approx(expected, rel=1e-6)
