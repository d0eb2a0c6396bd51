"""A user's regression models and losses (reg.py, written out by the reg fixture in tests/conftest.py),
a reference to one of them, and the training options the tests of --loss / --output share."""

from __future__ import annotations

import textwrap

MODELS = textwrap.dedent("""
    import functools

    import torch
    import torch.nn as nn
    import torch.nn.functional as F


    def make(features=5):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(features, 6), nn.Tanh(), nn.Linear(6, 1))


    def classifier():
        return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))


    def wrong_width():
        return nn.Sequential(nn.Linear(7, 3))


    class Scores(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(5, 1)

        def forward(self, x):
            return {"scores": self.layer(x)}


    def scores():
        return Scores()


    def embedding():
        return nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(20, 1))


    summed = functools.partial(F.mse_loss, reduction="sum")


    class Unreduced(nn.MSELoss):
        def __init__(self):
            super().__init__(reduction="none")


    class Exits(nn.MSELoss):
        def __init__(self):
            raise SystemExit(0)


    def vector(outputs, targets):
        return (outputs.reshape(-1) - targets) ** 2


    def flat_mse(outputs, targets):
        return F.mse_loss(outputs.reshape(-1), targets)
""")


def ref(reg, name):
    return f"{reg['file']}:{name}"


REG_TRAIN = ["--epochs", "2", "--batch-size", "16", "--lr", "0.05", "--no-progress"]
