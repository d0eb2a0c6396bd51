"""Every torchvision dataset loads from a tiny fake copy written in the real on-disk format.

The layouts follow torchvision's loaders (cifar.py, svhn.py, gtsrb.py, mnist.py). torchvision checks
the md5 of CIFAR and SVHN files, which no fake copy can pass; flatness decides those files exist by
their presence (the archive md5 is still checked on download), so the fakes load through the same
parsing code as the real files.
"""

import csv
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from flatness.core.errors import FlatnessError
from flatness.data.datasets import dataset_info, get_dataset

RNG = np.random.default_rng(0)


def _pickle(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def fake_cifar10(root):
    base = os.path.join(root, "cifar10", "cifar-10-batches-py")
    images, labels = {}, {}
    for _i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = RNG.integers(0, 256, (2, 3072), dtype=np.uint8)
        lab = [int(x) for x in RNG.integers(0, 10, 2)]
        _pickle(
            os.path.join(base, name),
            {"batch_label": name, "data": data, "labels": lab, "filenames": [f"{name}-{j}.png" for j in range(2)]},
        )
        images[name], labels[name] = data, lab
    _pickle(
        os.path.join(base, "batches.meta"),
        {"label_names": [f"c{k}" for k in range(10)], "num_cases_per_batch": 2, "num_vis": 3072},
    )
    train = np.concatenate([images[f"data_batch_{k}"] for k in range(1, 6)]).reshape(-1, 3, 32, 32)
    train_y = sum((labels[f"data_batch_{k}"] for k in range(1, 6)), [])
    test = images["test_batch"].reshape(-1, 3, 32, 32)
    return {"train": (train.transpose(0, 2, 3, 1), train_y), "test": (test.transpose(0, 2, 3, 1), labels["test_batch"])}


def fake_cifar100(root):
    base = os.path.join(root, "cifar100", "cifar-100-python")
    out = {}
    for name, n in (("train", 4), ("test", 3)):
        data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(x) for x in RNG.integers(0, 100, n)]
        _pickle(
            os.path.join(base, name),
            {
                "filenames": [f"{j}.png" for j in range(n)],
                "batch_label": name,
                "fine_labels": fine,
                "coarse_labels": [f // 5 for f in fine],
                "data": data,
            },
        )
        out[name] = (data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), fine)
    _pickle(
        os.path.join(base, "meta"),
        {"fine_label_names": [f"f{k}" for k in range(100)], "coarse_label_names": [f"c{k}" for k in range(20)]},
    )
    return out


def fake_svhn(root):
    from scipy.io import savemat

    base = os.path.join(root, "svhn")
    os.makedirs(base)
    out = {}
    for split, n in (("train", 4), ("test", 3)):
        x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [3], [1], [10]][:n], dtype=np.uint8)  # SVHN stores the digit 0 as 10
        savemat(os.path.join(base, f"{split}_32x32.mat"), {"X": x, "y": y})
        out[split] = (x.transpose(3, 0, 1, 2), [int(v) % 10 for v in y[:, 0]])
    return out


def _idx(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    code = 0x0800 + array.ndim  # type 0x08 = unsigned byte
    with open(path, "wb") as handle:
        handle.write(struct.pack(">I", code))
        handle.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        handle.write(array.astype(np.uint8).tobytes())


def fake_mnist(root, name="mnist", folder="MNIST"):
    raw = os.path.join(root, name, folder, "raw")
    out = {}
    for split, prefix, n in (("train", "train", 5), ("test", "t10k", 3)):
        x = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = RNG.integers(0, 10, n).astype(np.uint8)
        _idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), x)
        _idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), y)
        out[split] = (x[..., None], [int(v) for v in y])
    return out


def fake_gtsrb(root):
    base = os.path.join(root, "gtsrb", "gtsrb")
    train_x, train_y = [], []
    for cls in range(43):  # every class folder exists in the real set; make_dataset needs a file in each
        folder = os.path.join(base, "GTSRB", "Training", f"{cls:05d}")
        os.makedirs(folder)
        img = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(img).save(os.path.join(folder, f"00000_0000{cls % 3}.ppm"))
        with open(os.path.join(folder, f"GT-{cls:05d}.csv"), "w") as handle:
            handle.write("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n")
        train_x.append(img)
        train_y.append(cls)
    images = os.path.join(base, "GTSRB", "Final_Test", "Images")
    os.makedirs(images)
    test_x, test_y = [], []
    with open(os.path.join(base, "GT-final_test.csv"), "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"])
        for k, cls in enumerate((5, 42, 0)):
            img = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(img).save(os.path.join(images, f"{k:05d}.ppm"))
            writer.writerow([f"{k:05d}.ppm", 32, 32, 0, 0, 31, 31, cls])
            test_x.append(img)
            test_y.append(cls)
    # a smaller, odd-sized image (real GTSRB images vary in size): it must come out 32x32 too
    Image.fromarray(RNG.integers(0, 256, (17, 23, 3), dtype=np.uint8)).save(
        os.path.join(base, "GTSRB", "Training", "00007", "00001_00000.ppm")
    )
    return {"train": (np.stack(train_x), train_y), "test": (np.stack(test_x), test_y)}


FAKES = {
    "cifar10": fake_cifar10,
    "cifar100": fake_cifar100,
    "svhn": fake_svhn,
    "gtsrb": fake_gtsrb,
    "mnist": fake_mnist,
    "fashion-mnist": lambda r: fake_mnist(r, "fashion-mnist", "FashionMNIST"),
}


@pytest.mark.parametrize("name", sorted(FAKES))
def test_fake_copy_loads(tmp_path, name):
    expected = FAKES[name](str(tmp_path))
    info = dataset_info(name)
    mean = torch.tensor(info.mean).view(-1, 1, 1)
    std = torch.tensor(info.std).view(-1, 1, 1)
    for split in ("train", "test"):
        raw, labels = expected[split]
        data = get_dataset(name, split, root=str(tmp_path), augment=False)
        extra = 1 if (name == "gtsrb" and split == "train") else 0
        assert len(data) == len(labels) + extra
        got_labels = []
        for i in range(len(data)):
            x, y = data[i]
            assert x.shape == (info.in_channels, info.image_size, info.image_size) and x.dtype == torch.float32
            assert isinstance(y, int) and 0 <= y < info.num_classes
            got_labels.append(y)
        if name == "gtsrb" and split == "train":
            got = {}
            for i in range(len(data)):  # one image per class folder (+ the odd one in class 7)
                x, y = data[i]
                got.setdefault(y, x)
            assert sorted(got) == list(range(43))
            for cls in range(43):
                want = (torch.from_numpy(raw[cls]).permute(2, 0, 1).float() / 255 - mean) / std
                if cls != 7:
                    torch.testing.assert_close(got[cls], want, atol=1e-5, rtol=1e-5)
            continue
        assert got_labels == list(labels)
        for i in range(len(labels)):  # exact pixel values, channel order and normalisation
            want = (torch.from_numpy(raw[i]).permute(2, 0, 1).float() / 255 - mean) / std
            torch.testing.assert_close(data[i][0], want, atol=1e-5, rtol=1e-5)
    augmented = get_dataset(name, "train", root=str(tmp_path), augment=True)
    torch.manual_seed(0)
    x, _ = augmented[0]
    assert x.shape == (info.in_channels, info.image_size, info.image_size)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize(
    "name, hint",
    [
        ("cifar10", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python"),
        ("svhn", "train_32x32.mat"),
        ("gtsrb", "GTSRB"),
        ("mnist", "MNIST/raw"),
        ("fashion-mnist", "FashionMNIST/raw"),
    ],
)
def test_missing_dataset_says_where_files_go(tmp_path, name, hint):
    with pytest.raises(FlatnessError) as err:
        get_dataset(name, "train", root=str(tmp_path))
    message = str(err.value)
    assert os.path.join(str(tmp_path), name) in message and hint in message and "--download" in message
    assert "\n" not in message
    os.makedirs(tmp_path / name)  # the folder exists but holds nothing
    with pytest.raises(FlatnessError) as err:
        get_dataset(name, "test", root=str(tmp_path))
    assert "--download" in str(err.value) and hint in str(err.value)
    assert os.listdir(tmp_path / name) == []  # nothing was created


def test_damaged_file_is_one_line_error(tmp_path):
    fake_cifar10(str(tmp_path))
    with open(tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch", "wb") as handle:
        handle.write(b"not a pickle")
    with pytest.raises(FlatnessError, match="could not read cifar10"):
        get_dataset("cifar10", "test", root=str(tmp_path))
