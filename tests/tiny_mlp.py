"""A tiny MLP (4 inputs, 6 tanh units, 3 outputs by default) and 12 examples for it: the models and data
of the tests of the loss and dtype rules (core/test_losses.py, core/test_measured.py, data/test_batches.py,
...); importable by name, as tests/ is on the path."""

import torch
import torch.nn as nn


def tiny_mlp(out=3, dtype=torch.float32):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, out)).to(dtype)


def tiny_xy(n=12, classes=3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randint(0, classes, (n,), generator=g)
