"""MNIST-1D built in: generated offline by the mnist1d package, cached, registered with its models."""

import os
import random

import numpy as np
import pytest
import torch

pytest.importorskip("mnist1d")

from flatness.data import mnist1d as m1d  # noqa: E402
from flatness.data.datasets import dataset_info, get_dataset  # noqa: E402
from flatness.models.registry import build_model  # noqa: E402


def _small_args():
    args = m1d.generator_args()
    args["num_samples"] = 60
    return args


def test_published_defaults_and_no_download_url():
    args = m1d.generator_args()
    assert args["num_samples"] == 5000 and args["train_split"] == 0.8 and args["final_seq_length"] == 40
    assert args["seed"] == 42 and "url" not in args


def test_generation_matches_the_package_and_keeps_global_rng(tmp_path):
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    np.random.seed(123)
    random.seed(123)
    arrays = m1d.load_arrays(str(tmp_path), _small_args())
    assert np.random.randint(10**6) == np.random.RandomState(123).randint(10**6)  # state restored
    assert random.random() == random.Random(123).random()

    reference = make_dataset(ObjectView(_small_args()))  # the package's own generator, called directly
    assert np.array_equal(arrays["x_train"], reference["x"]) and np.array_equal(arrays["y_test"], reference["y_test"])
    assert arrays["x_train"].shape == (48, 40) and arrays["x_test"].shape == (12, 40)
    cached = [f for f in os.listdir(tmp_path / "mnist1d") if f.endswith(".npz")]
    assert len(cached) == 1


def test_cache_is_reused_and_damaged_cache_regenerated(tmp_path, monkeypatch):
    first = m1d.load_arrays(str(tmp_path), _small_args())
    calls = []
    real = m1d.generate
    monkeypatch.setattr(m1d, "generate", lambda args=None: calls.append(1) or real(args))
    again = m1d.load_arrays(str(tmp_path), _small_args())
    assert calls == [] and np.array_equal(first["x_test"], again["x_test"])
    (path,) = [tmp_path / "mnist1d" / f for f in os.listdir(tmp_path / "mnist1d")]
    path.write_bytes(b"damaged")
    again = m1d.load_arrays(str(tmp_path), _small_args())
    assert calls == [1] and np.array_equal(first["x_test"], again["x_test"])


def test_full_dataset_registered(tmp_path):
    info = dataset_info("mnist1d")
    assert (info.in_channels, info.image_size, info.num_classes, info.default_model) == (1, 40, 10, "mlp1d")
    train = get_dataset("mnist1d", "train", root=str(tmp_path))
    test = get_dataset("mnist1d", "test", root=str(tmp_path))
    assert len(train) == 4000 and len(test) == 1000
    x, y = train[0]
    assert x.shape == (1, 40) and x.dtype == torch.float32 and isinstance(y, int)
    assert sorted(set(test.labels.tolist())) == list(range(10))
    assert os.path.isfile(tmp_path / "mnist1d" / m1d.CACHE_NAME)


def test_reference_models_shapes_and_sizes():
    mlp = build_model("mlp1d", 1, 40, 10)
    conv = build_model("conv1d", 1, 40, 10)
    # the paper's parameter counts: 40-100-100-10 MLP and the 25-channel three-layer CNN
    assert sum(p.numel() for p in mlp.parameters()) == 40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10
    assert sum(p.numel() for p in conv.parameters()) == (25 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (125 * 10 + 10)
    x = torch.randn(3, 1, 40)
    assert mlp(x).shape == (3, 10) and conv(x).shape == (3, 10) and conv(x[:, 0]).shape == (3, 10)
    wide = build_model("mlp1d", 1, 40, 10, width=256)
    assert wide.linear1.out_features == 256
