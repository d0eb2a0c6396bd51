"""A user's model file, its data and the helpers the command-line tests of user models share: the dense
Hessian's top eigenvalue and the eager loss (ground truth), a probe call, a one-line error, an npz writer."""

import textwrap

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

USER_FILE = textwrap.dedent('''
    import torch
    import torch.nn as nn
    from torch.utils.data import TensorDataset


    class UserNet(nn.Module):
        """A model class that exists only in this test's file."""

        def __init__(self, width=6, classes=3):
            super().__init__()
            self.hidden = nn.Linear(4, width)
            self.out = nn.Linear(width, classes)

        def forward(self, x):
            return self.out(torch.tanh(self.hidden(x)))


    def make(width=6, classes=3):
        return UserNet(width, classes)


    def broken(**kwargs):
        raise ValueError("no such layer size")


    def not_a_model():
        return 42


    NOT_CALLABLE = 3


    def data():
        gen = torch.Generator().manual_seed(5)
        x = torch.randn(40, 4, generator=gen)
        y = torch.randint(0, 3, (40,), generator=gen)
        return TensorDataset(x[:32], y[:32]), TensorDataset(x[32:], y[32:])
''')


TRAIN = ["--method", "amp", "--epsilon", "0.1", "--batch-size", "16", "--lr", "0.1", "--seed", "3", "--no-progress"]


def weights(path):
    return torch.load(path, weights_only=True)


def dense_top_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Ground truth: the largest eigenvalue of the dense Hessian of the mean cross-entropy."""
    named = [(n, p.detach().double()) for n, p in model.named_parameters()]
    sizes = [p.numel() for _, p in named]
    flat = torch.cat([p.reshape(-1) for _, p in named])

    def loss(theta):
        params = {n: t.reshape(p.shape) for (n, p), t in zip(named, theta.split(sizes))}
        return F.cross_entropy(torch.func.functional_call(model.double(), params, (x.double(),)), y)

    value = float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))[-1])
    model.float()
    return value


def one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def probe(cli, checkpoint, out, *extra):
    return cli(
        ["probe", checkpoint, "--top-k", "1", "--tol", "1e-6", "--max-iter", "60", "--out", out, "--quiet", *extra]
    )


def eager_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Ground truth: the mean cross-entropy of the eager model (eval mode) on all of ``x`` at once."""
    model.eval()
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def _npz(path, **arrays):
    gen = np.random.default_rng(0)
    base = {
        "x_train": gen.normal(size=(20, 4)).astype(np.float32),
        "y_train": np.arange(20) % 3,
        "x_test": gen.normal(size=(8, 4)).astype(np.float32),
        "y_test": np.arange(8) % 3,
    }
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return str(path)
