"""A user's model file for the tests of model references and foreign weight files (models/test_references.py,
formats/test_weights.py): ``TinyNet`` (4 inputs, ``width`` tanh units, ``classes`` outputs) exists only in it,
with a factory, one that raises, one that returns no model, and a name that is not callable. The ``model_file``
fixture in tests/conftest.py writes it; importable by name, as tests/ is on the path."""

import textwrap

import pytest

MODEL_FILE = textwrap.dedent('''
    import torch
    import torch.nn as nn


    class TinyNet(nn.Module):
        """Exists only in this file."""

        def __init__(self, width=5, classes=3):
            super().__init__()
            self.hidden = nn.Linear(4, width)
            self.out = nn.Linear(width, classes)

        def forward(self, x):
            return self.out(torch.tanh(self.hidden(x)))


    def make(width=5, classes=3):
        return TinyNet(width, classes)


    def broken(**kwargs):
        raise ValueError("no such layer size")


    def not_a_model():
        return 42


    NOT_CALLABLE = 3
''')


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message
