"""Shared test fixtures. Each test module keeps its own special fixtures; only what several share is here."""

import os

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from tinynet_file import MODEL_FILE

from flatness.data.datasets import dataset_info
from flatness.data.probe_data import load_probe_data
from flatness.formats.checkpoint import save_checkpoint
from flatness.models.registry import build_from_spec, model_spec

# Every test model is tiny: one intra-op thread is fastest, and on a busy 2-core machine two OpenMP
# threads spin against other processes and run many times slower. Subprocesses get OMP_NUM_THREADS=1.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def quick_digits_checkpoint(path, model_name="convnet", seed=0, steps=60, method="erm", **model_options):
    """A real (briefly trained) digits checkpoint in the flatness format, made without the training
    loop so that tests of probes and surfaces do not depend on it."""
    torch.manual_seed(seed)
    info = dataset_info("digits")
    spec = model_spec(model_name, info.in_channels, info.image_size, info.num_classes, **model_options)
    model = build_from_spec(spec)
    data = load_probe_data("digits", "train", None, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model.train()
    for step in range(steps):
        x, y = data.batches[step % len(data)]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    config = {"dataset": "digits", "model": model_name, "method": method, "seed": seed, "epochs": 1}
    save_checkpoint(str(path), model, model_spec=spec, config=config, epoch=1, step=steps)
    return str(path)


@pytest.fixture(scope="session")
def digits_checkpoint(tmp_path_factory):
    """A briefly trained digits convnet checkpoint (BatchNorm included), shared by the whole session."""
    return quick_digits_checkpoint(tmp_path_factory.mktemp("ckpt") / "convnet.pt")


@pytest.fixture(scope="session")
def digits_mlp_checkpoint(tmp_path_factory):
    return quick_digits_checkpoint(tmp_path_factory.mktemp("ckpt") / "mlp.pt", model_name="mlp", width=16, depth=1)


@pytest.fixture
def cli():
    """Run a flatness CLI command in-process: cli(["probe", ...]) -> click Result."""
    from flatness.cli.main import main

    runner = CliRunner()

    def invoke(args, **kwargs):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False, **kwargs)

    return invoke


@pytest.fixture
def model_file(tmp_path):
    """The path of a user's model file holding ``TinyNet`` (tests/tinynet_file.py)."""
    path = tmp_path / "tinynet.py"
    path.write_text(MODEL_FILE)
    return str(path)
