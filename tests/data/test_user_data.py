"""User datasets (issue 13, library layer): npz, callables, ImageFolder, normalisation, model fit."""

import textwrap

import numpy as np
import pytest
import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.data.user_data import channel_statistics, check_model_fits, load_user_dataset

DATA_FILE = textwrap.dedent("""
    import torch
    from torch.utils.data import TensorDataset


    def make():
        g = torch.Generator().manual_seed(0)
        return (TensorDataset(torch.randn(10, 2, 3, generator=g), torch.arange(10) % 3),
                TensorDataset(torch.randn(4, 2, 3, generator=g), torch.arange(4) % 3))


    def one():
        return [1, 2, 3]


    def empty():
        return TensorDataset(torch.zeros(0, 2)), TensorDataset(torch.zeros(0, 2))


    def raises():
        raise OSError("disk gone")
""")


def _one_line(err) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def _npz(tmp_path, name="d.npz", **override):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(20, 6)).astype(np.float64) * 5 + 2,
        "y_train": rng.integers(0, 3, 20),
        "x_test": rng.normal(size=(8, 6)),
        "y_test": rng.integers(0, 3, 8),
    }
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path), arrays


def test_npz_loads_exactly_as_given(tmp_path):
    path, arrays = _npz(tmp_path)
    train, test, record = load_user_dataset(path)
    assert len(train) == 20 and len(test) == 8
    x, y = train[3]
    assert torch.equal(x, torch.from_numpy(arrays["x_train"][3]).float()) and int(y) == arrays["y_train"][3]
    assert y.dtype == torch.int64
    assert record["normalize"] is None and len(record["sha256"]) == 64


def test_npz_normalize_uses_training_statistics(tmp_path):
    path, arrays = _npz(tmp_path)
    train, test, record = load_user_dataset(path, normalize=True)
    xtr = arrays["x_train"].astype(np.float32)
    mean, std = xtr.mean(), xtr.std()  # vectors: one channel over all features
    assert record["normalize"]["mean"][0] == pytest.approx(mean, rel=1e-5)
    assert record["normalize"]["std"][0] == pytest.approx(std, rel=1e-5)
    expected = (torch.from_numpy(arrays["x_test"][1]).float() - mean) / std
    assert torch.allclose(test[1][0], expected, atol=1e-5)


def test_channel_statistics_against_numpy():
    x = torch.randn(30, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1) + 5
    mean, std = channel_statistics(torch.utils.data.TensorDataset(x, torch.zeros(30)), batch_size=7)
    arr = x.numpy().transpose(1, 0, 2, 3).reshape(3, -1)
    assert np.allclose(mean.numpy(), arr.mean(1), atol=1e-5) and np.allclose(std.numpy(), arr.std(1), atol=1e-5)


@pytest.mark.parametrize(
    "override, expected",
    [
        ({"y_test": None}, "has no array 'y_test'"),
        ({"y_train": np.zeros(19, dtype=np.int64)}, "x_train has 20 examples but y_train has 19"),
        ({"x_test": np.array(["a"] * 8)}, "numeric"),
    ],
)
def test_bad_npz_fails_in_one_line(tmp_path, override, expected):
    path, _ = _npz(tmp_path, **override)
    with pytest.raises(FlatnessError) as err:
        load_user_dataset(path)
    assert expected in _one_line(err)


def test_npz_with_object_array_is_refused_unread(tmp_path):
    path, _ = _npz(tmp_path, x_test=np.array([{"a": 1}] * 8, dtype=object))
    with pytest.raises(FlatnessError) as err:
        load_user_dataset(path)
    assert "cannot read" in _one_line(err)


def test_callable_dataset_loads(tmp_path):
    (tmp_path / "mydata.py").write_text(DATA_FILE)
    train, test, record = load_user_dataset(f"{tmp_path / 'mydata.py'}:make")
    assert len(train) == 10 and len(test) == 4 and train[0][0].shape == (2, 3)
    assert record["sha256"] is not None
    _, _, record = load_user_dataset(f"{tmp_path / 'mydata.py'}:make", normalize=True)
    assert len(record["normalize"]["mean"]) == 2  # per channel


@pytest.mark.parametrize(
    "name, expected",
    [
        ("one", "must return (train_dataset, test_dataset)"),
        ("empty", "empty train dataset"),
        ("raises", "raised OSError: disk gone"),
        ("nothere", "has no attribute 'nothere'"),
    ],
)
def test_bad_callable_dataset_fails_in_one_line(tmp_path, name, expected):
    (tmp_path / "mydata.py").write_text(DATA_FILE)
    with pytest.raises(FlatnessError) as err:
        load_user_dataset(f"{tmp_path / 'mydata.py'}:{name}")
    assert expected in _one_line(err)


def test_unknown_dataset_and_missing_file(tmp_path):
    for ref, expected in [
        ("nonsense", "unknown dataset"),
        (str(tmp_path / "x.npz"), "not found"),
        ("no_such_mod_q:make", "not found"),
    ]:
        with pytest.raises(FlatnessError) as err:
            load_user_dataset(ref)
        assert expected in _one_line(err)


def test_imagefolder(tmp_path):
    from PIL import Image

    for split, count in (("train", 2), ("test", 1)):
        for label in ("cat", "dog"):
            folder = tmp_path / "imgs" / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (10, 6), color=(10 * i, 100, 200)).save(folder / f"{i}.png")
    train, test, record = load_user_dataset(f"imagefolder:{tmp_path / 'imgs'}", image_size=8)
    assert len(train) == 4 and len(test) == 2 and train[0][0].shape == (3, 8, 8)
    assert train[0][0][2].mean().item() == pytest.approx(200 / 255, abs=1e-3)  # values as stored
    assert [int(train[i][1]) for i in range(4)] == [0, 0, 1, 1]


def test_empty_imagefolder_fails_in_one_line(tmp_path):
    (tmp_path / "imgs" / "train").mkdir(parents=True)
    (tmp_path / "imgs" / "test").mkdir(parents=True)
    with pytest.raises(FlatnessError) as err:
        load_user_dataset(f"imagefolder:{tmp_path / 'imgs'}")
    assert "holds no images" in _one_line(err)
    with pytest.raises(FlatnessError) as err:
        load_user_dataset(f"imagefolder:{tmp_path / 'none'}")
    assert "needs" in _one_line(err)


def test_check_model_fits(tmp_path):
    path, _ = _npz(tmp_path)
    train, _, _ = load_user_dataset(path)
    check_model_fits(nn.Linear(6, 3), train)
    with pytest.raises(FlatnessError) as err:
        check_model_fits(nn.Linear(5, 3), train)
    message = _one_line(err)
    assert "input shape (1, 6)" in message and "RuntimeError" in message
    labelled = torch.utils.data.TensorDataset(torch.zeros(3, 6), torch.tensor([2, 0, 1]))
    check_model_fits(nn.Linear(6, 3), labelled)
    with pytest.raises(FlatnessError) as err:
        check_model_fits(nn.Linear(6, 2), labelled)  # label 2 but two class scores
    assert "2 class scores (output shape (1, 2)) but the data has label 2" in _one_line(err)
