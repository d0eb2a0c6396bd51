"""flatness.core.losses: a loss that sums or returns a vector is refused in one line (before any work, or at the
first batch), and the named regression losses meet their targets without broadcasting."""

import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from tiny_mlp import tiny_mlp, tiny_xy

import flatness
from flatness.core.errors import FlatnessError
from flatness.core.losses import named_loss


@pytest.mark.parametrize(
    "bad",
    [
        nn.CrossEntropyLoss(reduction="sum"),
        nn.CrossEntropyLoss(reduction="none"),
        functools.partial(F.cross_entropy, reduction="sum"),
        nn.MSELoss(reduction="sum"),
    ],
    ids=["module-sum", "module-none", "partial-sum", "mse-sum"],
)
def test_a_loss_that_does_not_average_is_refused_before_any_work(bad):
    model, (x, y) = tiny_mlp(), tiny_xy()
    for call in (
        lambda: flatness.evaluate(model, (x, y), bad),
        lambda: flatness.HessianOperator(model, (x, y), bad),
        lambda: flatness.measure_sharpness(model, (x, y), "worst_case", rho=0.1, loss_fn=bad),
        lambda: flatness.loss_surface(model, (x, y), "-1:1:3", loss_fn=bad),
    ):
        with pytest.raises(FlatnessError, match="reduction=.*batch mean"):
            call()


def test_a_loss_returning_a_vector_is_refused_at_the_first_batch():
    model, (x, y) = tiny_mlp(), tiny_xy()

    def per_example(outputs, targets):
        return F.cross_entropy(outputs, targets, reduction="none")

    op = flatness.HessianOperator(model, (x, y), per_example)
    for call in (
        lambda: flatness.evaluate(model, (x, y), per_example),
        lambda: op.matvec(torch.randn(op.dim)),
        lambda: flatness.HessianOperator(model, (x, y), per_example, backend="forward-over-reverse").matvec(
            torch.randn(op.dim)
        ),
        lambda: flatness.measure_sharpness(model, (x, y), "worst_case", rho=0.1, loss_fn=per_example),
    ):
        with pytest.raises(FlatnessError, match=r"returned a tensor of shape \(12,\).*scalar"):
            call()


def test_regression_losses_meet_their_targets_without_broadcasting():
    torch.manual_seed(3)
    outputs, targets = torch.randn(8, 1), torch.randn(8)
    assert named_loss("mse")(outputs, targets) == F.mse_loss(outputs[:, 0], targets)
    assert named_loss("l1")(outputs, targets) == F.l1_loss(outputs[:, 0], targets)
    assert named_loss("huber")(outputs, targets) == F.huber_loss(outputs[:, 0], targets)
    assert named_loss("bce")(outputs, (targets > 0).long()) == F.binary_cross_entropy_with_logits(
        outputs[:, 0], (targets > 0).float()
    )
    with pytest.raises(FlatnessError, match=r"loss mse: the model's outputs have shape \(8, 3\) but the targets"):
        named_loss("mse")(torch.randn(8, 3), targets)
    with pytest.raises(FlatnessError, match="unknown loss 'hinge'"):
        named_loss("hinge")
