"""The tiny problems of tests/hessian/: two small float64 nets on 37 examples, their dense Hessian by
torch.autograd.functional.hessian (the ground truth), and a matrix with the operator interface.

Shared by tests/hessian/test_operator.py, test_eigen.py, test_trace.py and test_density.py (the ``setup``
fixture in tests/hessian/conftest.py builds on them); importable by name, as tests/ is on the path.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from flatness.data.probe_data import ProbeData


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def tiny_problem(kind):
    torch.manual_seed(1)
    if kind == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 4))
    else:
        model = TinyCNN()
        with torch.no_grad():  # non-trivial running statistics, used in eval mode
            model.bn.running_mean.uniform_(-0.5, 0.5)
            model.bn.running_var.uniform_(0.5, 2.0)
            model.bn.weight.uniform_(0.5, 1.5)
            model.bn.bias.uniform_(-0.2, 0.2)
    model.double().train()  # the operator must switch to eval mode itself (and restore train mode)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(37, 1, 4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (37,), generator=g)
    return model, ProbeData.from_tensors(x, y, 10), (x, y)


def dense_hessian(model, xy, names=None):
    """The Hessian of the mean loss over all 37 examples, by torch.autograd.functional.hessian."""
    x, y = xy
    pairs = [(n, p) for n, p in model.named_parameters() if names is None or n in names]
    shapes = [p.shape for _, p in pairs]
    flat0 = torch.cat([p.detach().reshape(-1) for _, p in pairs])

    def loss(flat):
        params, offset = {}, 0
        for (n, _), s in zip(pairs, shapes):
            k = math.prod(s)
            params[n] = flat[offset : offset + k].view(s)
            offset += k
        return F.cross_entropy(functional_call(model, params, (x,), strict=False), y)

    was = model.training
    model.eval()
    H = torch.autograd.functional.hessian(loss, flat0)
    model.train(was)
    return (H + H.T) / 2


class DenseOp:
    """A matrix with the operator interface: exercises the solvers on a hard, known spectrum."""

    def __init__(self, H):
        self.H, self.dim, self.dtype, self.device, self.hvps = H, H.shape[0], H.dtype, H.device, 0

    def matvec(self, v):
        self.hvps += 1
        return self.H @ v
