"""User model and data factories that misbehave, shared by the hardening tests (written to a file ``f.py``).

Each raises what user code may raise (SystemExit, KeyboardInterrupt, GeneratorExit, a custom
BaseException) so that the tests can check it becomes one line naming the callable, exit 2.
"""

FACTORIES = """
import sys
import torch
from torch.utils.data import TensorDataset


class Custom(BaseException):
    pass


def exit0(**kwargs):
    sys.exit(0)


def exit3(**kwargs):
    sys.exit(3)


def ctrl_c(**kwargs):
    raise KeyboardInterrupt


def generator_exit(**kwargs):
    raise GeneratorExit("closed")


def custom(**kwargs):
    raise Custom("mine")


def model(**kwargs):
    return torch.nn.Linear(4, 3)


class FailsInTraining(torch.nn.Linear):
    def forward(self, x):
        if self.training:
            raise ValueError("boom in training")
        return super().forward(x)


def fails_in_training(**kwargs):
    return FailsInTraining(4, 3)


def data():
    x = torch.randn(170, 4)
    return TensorDataset(x[:130], torch.arange(130) % 3), TensorDataset(x[130:], torch.arange(40) % 3)


def data_exit0():
    sys.exit(0)
"""
