"""flatness.version: the one version string, what packaging installs and what output files record."""

from __future__ import annotations

import importlib.metadata
import re

import torch
import torch.nn as nn

from flatness.formats.checkpoint import read_checkpoint, save_checkpoint
from flatness.version import __version__


def test_the_version_is_the_installed_one_and_well_formed():
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", __version__)
    assert importlib.metadata.version("flatness") == __version__


def test_a_checkpoint_records_it(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(str(path), nn.Linear(1, 1), model_spec={"name": "linear"}, config={}, epoch=0)
    assert read_checkpoint(str(path))["flatness_version"] == __version__
    assert torch.load(path, weights_only=True)["flatness_version"] == __version__
