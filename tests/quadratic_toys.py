"""Quadratic toys for the sharpness metrics: a model made only of parameters, whose output is the flat
parameter vector, so that ``quadratic_loss(A)`` makes the loss the closed form ½ θᵀAθ.

Shared by tests/sharpness/ and tests/core/test_params.py; importable by name, as tests/ is on the path.
"""

import numpy as np
import torch
import torch.nn as nn

from flatness.core.params import flatten
from flatness.data.probe_data import ProbeData


class Params(nn.Module):
    """Only parameters; its output is the flat parameter vector, so loss_fn(outputs, _) is a closed form."""

    def __init__(self, *values):
        super().__init__()
        self.ts = nn.ParameterList([nn.Parameter(torch.as_tensor(v, dtype=torch.float64).clone()) for v in values])

    def forward(self, x):
        return flatten(list(self.parameters()))


def dummy_data():
    # two batches of unequal size: the n_b / n weights must still sum the batch losses to the quadratic
    return ProbeData.from_tensors(torch.zeros(5, 1), torch.zeros(5, dtype=torch.long), 3)


def quadratic_loss(A):
    A = torch.as_tensor(A, dtype=torch.float64)

    def loss_fn(theta, targets):
        return 0.5 * theta @ A @ theta

    return loss_fn


def random_sym(eigs, seed):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigs), len(eigs))))
    return q @ np.diag(eigs) @ q.T
