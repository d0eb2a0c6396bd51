"""flatness.sharpness.oracle: the loss, error and gradient are the exact means over the whole probe set (uneven
batches weighted), and the default radii include the digits AMP ε."""

import pytest
import torch

import flatness.sharpness as S
from flatness.core.params import flatten
from flatness.data.probe_data import load_probe_data
from flatness.formats.checkpoint import load_checkpoint


def test_default_rhos_include_the_digits_amp_epsilon():
    from flatness.training.config import TrainConfig

    config = TrainConfig()
    assert config.epsilon in S.DEFAULTS["rhos"] and S.DEFAULTS["ball"] == config.ball


def test_oracle_is_the_exact_full_data_mean(digits_checkpoint):
    from flatness.core.evaluation import evaluate

    model, _ = load_checkpoint(digits_checkpoint)
    data = load_probe_data("digits", "train", 150, 64)  # batches of 64, 64, 22: weights n_b / n matter
    oracle = S.LossOracle(model.eval(), data)
    loss, acc = evaluate(model, data)
    assert oracle.loss() == pytest.approx(loss, rel=1e-6)
    assert oracle.error() == pytest.approx(1 - acc, abs=1e-12)
    value, grad = oracle.loss_and_grad()
    # reference, independent of the batch weighting: all 150 examples as one batch
    params = [p for p in model.parameters() if p.requires_grad]
    x_all = torch.cat([x for x, _ in data])
    y_all = torch.cat([y for _, y in data])
    whole = torch.nn.functional.cross_entropy(model(x_all), y_all)
    ref_loss, ref_grad = float(whole), torch.autograd.grad(whole, params)
    assert value == pytest.approx(ref_loss, rel=1e-6)
    ref = flatten(ref_grad)
    # float32 sums in another order: equal to rounding, measured relative to the gradient's size
    assert torch.allclose(grad, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    assert oracle.counts() == (1, 1, 1)
