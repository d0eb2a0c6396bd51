"""The norm and margin baselines (generalization/baselines.py) against values worked out by hand: margins
from fixed logits, the path norm as the explicit sum over paths, spectral norms of hand-set matrices."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from tiny_mlp import tiny_mlp, tiny_xy

from flatness.generalization.baselines import (
    BASELINES,
    baseline_measures,
    log_spectral_product,
    margin_percentile,
    path_norm,
)

# Logits of six examples over three classes and their labels. The true class is the largest score in
# rows 0, 2 and 4 (a positive margin, which only a masked true class gives) and not in the others.
LOGITS = torch.tensor(
    [
        [4.0, 1.0, -2.0],
        [0.5, 3.0, 2.0],
        [-1.0, 0.0, 2.5],
        [2.0, 2.0, 1.0],
        [1.0, 7.0, 3.0],
        [0.0, -3.0, 1.5],
    ],
    dtype=torch.float64,
)
LABELS = torch.tensor([0, 2, 2, 1, 1, 1])
# f_y - max_{j != y} f_j, row by row
MARGINS = np.array([4 - 1, 2 - 3, 2.5 - 0, 2 - 2, 7 - 3, -3 - 1.5])


class Identity(nn.Module):
    """Outputs its input, so the inputs are the logits; one parameter gives it a device."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x + self.anchor


def hand_set_mlp():
    """Linear(2, 3) - ReLU - Linear(3, 2) with distinct, partly negative weights and biases."""
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]]))
        net[0].bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
        net[2].weight.copy_(torch.tensor([[2.0, -0.5, 1.0], [-3.0, 1.0, 0.5]]))
        net[2].bias.copy_(torch.tensor([-0.75, 1.25]))
    return net


def path_sum(net):
    """Σ over every input-output path (biases as paths from a constant unit) of the product of w²."""
    w1, b1 = net[0].weight.detach().numpy(), net[0].bias.detach().numpy()
    w2, b2 = net[2].weight.detach().numpy(), net[2].bias.detach().numpy()
    total = 0.0
    for k, j in itertools.product(range(w2.shape[0]), range(w2.shape[1])):
        total += sum(w1[j, i] ** 2 * w2[k, j] ** 2 for i in range(w1.shape[1]))  # input i -> j -> k
        total += b1[j] ** 2 * w2[k, j] ** 2  # bias of hidden unit j -> k
    return total + float((b2**2).sum())  # bias of output k


def test_margin_percentile_is_numpys_percentile_of_the_hand_margins_true_class_masked():
    model = Identity().double()
    for q in (10, 50, 90):
        assert margin_percentile(model, (LOGITS, LABELS), percentile=q) == pytest.approx(np.percentile(MARGINS, q))
    assert margin_percentile(model, (LOGITS, LABELS)) == pytest.approx(np.percentile(MARGINS, 10))  # default 10
    # two batches give the same numbers as one
    assert margin_percentile(model, [(LOGITS[:4], LABELS[:4]), (LOGITS[4:], LABELS[4:])], 50) == pytest.approx(
        np.percentile(MARGINS, 50)
    )


def test_margin_is_measured_in_eval_mode_and_is_none_for_non_class_outputs():
    net = nn.Sequential(nn.Dropout(0.9), Identity()).double()
    net.train()
    # dropout would zero most logits in train mode; eval mode passes them through
    assert margin_percentile(net, (LOGITS, LABELS), 50) == pytest.approx(np.percentile(MARGINS, 50))
    assert net.training  # and the model's mode is restored
    assert margin_percentile(Identity(), (torch.zeros(4), torch.zeros(4, dtype=torch.long))) is None  # 1-d outputs
    assert margin_percentile(Identity(), (torch.zeros(4, 3), torch.zeros(4, 3, dtype=torch.long))) is None  # 2-d y
    assert margin_percentile(Identity(), (torch.zeros(4, 3), torch.zeros(4))) is None  # float targets


def test_path_norm_of_a_linear_relu_linear_net_is_the_root_of_the_sum_over_paths():
    net = hand_set_mlp()
    before = [p.detach().clone() for p in net.parameters()]
    expected = math.sqrt(path_sum(net))
    assert path_norm(net, torch.zeros(5, 2, dtype=torch.float64)) == pytest.approx(expected, rel=1e-12)
    # with absolute values instead of squares the number would differ
    assert abs(expected - math.sqrt(path_sum_abs(net))) > 1
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # the model is left unchanged


def path_sum_abs(net):
    w1, b1 = net[0].weight.detach().abs().numpy(), net[0].bias.detach().abs().numpy()
    w2, b2 = net[2].weight.detach().abs().numpy(), net[2].bias.detach().abs().numpy()
    return float((w2 @ (w1.sum(1) + b1)).sum() + b2.sum())


def test_path_norm_is_measured_in_eval_mode_and_only_for_nets_it_describes():
    net = nn.Sequential(nn.Dropout(0.5), *hand_set_mlp())
    net.train()
    assert path_norm(net, torch.zeros(1, 2, dtype=torch.float64)) == pytest.approx(math.sqrt(path_sum(net[1:])))
    batchnorm = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    assert path_norm(batchnorm, torch.zeros(4, 2)) is None
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 2))
    assert path_norm(pooled, torch.zeros(1, 1, 6, 6)) is None
    assert path_norm(nn.Sequential(), torch.zeros(1, 2)) is None  # no layer at all


def test_log_spectral_product_sums_the_log_largest_singular_values_not_frobenius():
    net = nn.Sequential(nn.Linear(3, 3, bias=False), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.diag(torch.tensor([3.0, -2.0, 0.5])))  # σ_max 3 (Frobenius: 3.64)
        net[2].weight.copy_(torch.tensor([[0.0, 4.0, 0.0], [1.0, 0.0, 0.0]]))  # σ 4 and 1
        net[2].bias.fill_(100.0)  # biases are no part of it
    assert log_spectral_product(net) == pytest.approx(math.log(3.0) + math.log(4.0), rel=1e-12)


def test_log_spectral_product_of_a_convolution_is_that_of_its_kernel_as_a_matrix():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 2)
    matrix = conv.weight.detach().double().reshape(3, 8).numpy()  # out channels x (in channels x 2 x 2)
    assert log_spectral_product(conv) == pytest.approx(math.log(np.linalg.svd(matrix, compute_uv=False)[0]))
    assert log_spectral_product(nn.Sequential(nn.ReLU())) is None


def test_baseline_measures_of_a_hand_set_net_and_its_init():
    net, init = hand_set_mlp(), hand_set_mlp()
    with torch.no_grad():
        init[0].weight.add_(torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.0, -4.0]]))  # ‖θ − θ₀‖ = 5
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1])
    out = baseline_measures(net, init, (x, y))
    assert list(out) == list(BASELINES)
    params = np.concatenate([p.detach().numpy().ravel() for p in net.parameters()])
    assert out["weight_norm"] == pytest.approx(float(np.sqrt((params**2).sum())))
    assert out["distance_from_init"] == pytest.approx(5.0)
    assert out["path_norm"] == pytest.approx(math.sqrt(path_sum(net)))
    logits = net(x).detach().numpy()
    margins = [logits[i, y[i]] - logits[i, 1 - y[i]] for i in range(3)]
    assert out["margin_p10"] == pytest.approx(np.percentile(margins, 10))
    sigma = [np.linalg.svd(m.weight.detach().numpy(), compute_uv=False)[0] for m in (net[0], net[2])]
    assert out["log_spectral_product"] == pytest.approx(float(np.log(sigma).sum()))
    assert baseline_measures(net, None, (x, y))["distance_from_init"] is None


def test_path_norm_of_a_zero_net_is_zero_and_of_an_overflowing_one_is_none():
    zero = hand_set_mlp()
    with torch.no_grad():
        for p in zero.parameters():
            p.zero_()
    assert path_norm(zero, torch.zeros(1, 2, dtype=torch.float64)) == 0.0
    small = hand_set_mlp()
    with torch.no_grad():
        for p in small.parameters():
            p.mul_(0.01)  # every path product shrinks by 1e-8: a sum well below 1
    assert path_norm(small, torch.zeros(1, 2, dtype=torch.float64)) == pytest.approx(math.sqrt(path_sum(small)))
    huge = hand_set_mlp()
    with torch.no_grad():
        huge[0].weight.mul_(1e160)  # its square overflows float64: no number rather than inf
    assert path_norm(huge, torch.zeros(1, 2, dtype=torch.float64)) is None


class TwoInputs(nn.Module):
    """A classifier of an (a, b) pair of tensors; its one leaf is a Linear, within the path norm's layers."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 3)

    def forward(self, a, b):
        return self.linear(a + b)


def test_baselines_of_a_model_with_tuple_inputs_have_no_path_norm():
    model = TwoInputs()
    x = (torch.randn(4, 2), torch.randn(4, 2))
    out = baseline_measures(model, None, (x, torch.tensor([0, 1, 2, 1])))
    assert out["path_norm"] is None and out["distance_from_init"] is None
    sigma = np.linalg.svd(model.linear.weight.detach().double().numpy(), compute_uv=False)[0]
    assert out["log_spectral_product"] == pytest.approx(math.log(sigma))  # float64, as the measure computes it


def test_the_margin_exists_only_where_accuracy_does():
    from flatness.generalization.baselines import margin_percentile

    model, (x, y) = tiny_mlp(), tiny_xy()
    with torch.no_grad():
        out = model(x)
    true = out.gather(1, y[:, None]).squeeze(1)
    others = out.scatter(1, y[:, None], float("-inf")).max(1).values
    expected = torch.quantile((true - others).double(), 0.1).item()
    assert margin_percentile(model, (x, y)) == pytest.approx(expected, rel=1e-6)
    assert margin_percentile(model, (x, y), loss_fn="mse") is None
    assert margin_percentile(tiny_mlp(out=1), (x, torch.randn(12, 1)), loss_fn=nn.MSELoss()) is None
