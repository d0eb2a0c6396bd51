"""One registry of datasets: ``get_dataset(name, split, root=None, augment=False)``.

Every dataset yields ``(image tensor [C, H, W], int label)`` (``mnist1d``: a signal [1, 40]),
normalised per channel with the dataset's training-set statistics. ``digits`` (scikit-learn's
bundled 8x8 handwritten digits) is the offline default; ``mnist1d`` is generated offline by the
``mnist1d`` package and cached under ``root``; the others load through torchvision from ``root``
(default ``./data``), and download only when asked (``download=True``, the CLI's ``--download``).
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from flatness.core.errors import FlatnessError
from flatness.data.mnist1d import mnist1d_split
from flatness.data.tensor_data import TensorImageDataset

DEFAULT_DATA_DIR = "data"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset, without loading it."""

    name: str
    in_channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    description: str
    # The registry model a run on this dataset uses unless told otherwise (None: the CLI's default).
    default_model: str | None = None


# --------------------------------------------------------------------------- digits (offline default)

# The split is fixed forever so that numbers stay comparable across versions: a stratified 80/20
# split of scikit-learn's 1797 digits with seed 0 (1437 train, 360 test).
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def _digits_split(split: str) -> TensorImageDataset:
    # late: scikit-learn is heavy and only the digits set needs it
    from sklearn.datasets import load_digits  # noqa: PLC0415 - scikit-learn is heavy; only digits needs it
    from sklearn.model_selection import train_test_split  # noqa: PLC0415 - scikit-learn is heavy; only digits needs it

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # pixel values are 0..16
    labels = bunch.target.astype(np.int64)
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        idx, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=labels
    )
    train_idx.sort()
    test_idx.sort()
    info = DATASETS["digits"]
    chosen = train_idx if split == "train" else test_idx
    x = (images[chosen] - info.mean[0]) / info.std[0]
    return TensorImageDataset(torch.from_numpy(x).unsqueeze(1), torch.from_numpy(labels[chosen]))


# --------------------------------------------------------------------------- torchvision datasets


def _normalize(info: DatasetInfo):
    from torchvision import transforms as T  # noqa: PLC0415 - torchvision is heavy; only its datasets need it

    return T.Normalize(info.mean, info.std)


def _transform(name: str, augment: bool):
    """The standard preprocessing per dataset; `augment` adds the published training augmentation."""
    from torchvision import transforms as T  # noqa: PLC0415 - torchvision is heavy; only its datasets need it

    info = DATASETS[name]
    steps = []
    if name == "gtsrb":
        steps.append(T.Resize((32, 32)))  # GTSRB images vary in size; the published setup uses 32x32
    if augment:
        if name in ("cifar10", "cifar100"):
            steps += [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
        elif name == "svhn":
            steps += [T.RandomCrop(32, padding=2)]  # digits must not be mirrored
        elif name == "gtsrb":
            steps += [T.RandomCrop(32, padding=4)]  # traffic signs must not be mirrored either
        elif name == "mnist":
            steps += [T.RandomCrop(28, padding=2)]
        elif name == "fashion-mnist":
            steps += [T.RandomCrop(28, padding=2), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), _normalize(info)]
    return T.Compose(steps)


# Where each dataset's files go under ``<root>/<name>/`` (torchvision's own layouts), for error messages.
LAYOUTS = {
    "cifar10": "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}",
    "cifar100": "cifar-100-python/{train, test, meta}",
    "svhn": "{train_32x32.mat, test_32x32.mat}",
    "gtsrb": "gtsrb/GTSRB/Training/<class>/*.ppm, gtsrb/GTSRB/Final_Test/Images/*.ppm, gtsrb/GT-final_test.csv",
    "mnist": "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
    "fashion-mnist": "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte",
}


def _present_cifar(cls):
    """Torchvision's CIFAR, deciding that files exist by their presence.

    This avoids re-hashing 170 MB of md5 on every load. The archive's md5 is still checked when it
    is downloaded; damaged files fail when they are parsed (a FlatnessError below).
    """

    class Present(cls):
        def _check_integrity(self) -> bool:
            files = self.train_list if self.train else self.test_list
            names = [f for f, _ in files] + [self.meta["filename"]]
            return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in names)

        def _load_meta(self) -> None:
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            if not os.path.isfile(path):
                raise RuntimeError("metadata file not found")
            with open(path, "rb") as infile:
                data = pickle.load(infile, encoding="latin1")
            self.classes = data[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    Present.__name__ = cls.__name__
    return Present


def _present_svhn():
    from torchvision import datasets as D  # noqa: PLC0415 - torchvision is heavy; only its datasets need it

    class SVHN(D.SVHN):
        def _check_integrity(self) -> bool:  # presence; the md5 is checked by download_url on download
            return os.path.isfile(os.path.join(self.root, self.filename))

    return SVHN


def _torchvision(name: str, split: str, root: str, augment: bool, download: bool) -> Dataset:
    from torchvision import datasets as D  # noqa: PLC0415 - torchvision is heavy; only its datasets need it

    transform = _transform(name, augment)
    train = split == "train"
    folder = os.path.join(root, name)
    builders = {
        "cifar10": lambda: _present_cifar(D.CIFAR10)(folder, train=train, transform=transform, download=download),
        "cifar100": lambda: _present_cifar(D.CIFAR100)(folder, train=train, transform=transform, download=download),
        "svhn": lambda: _present_svhn()(folder, split=split, transform=transform, download=download),
        # GTSRB and (Fashion-)MNIST decide by presence already (no md5 of the extracted files)
        "gtsrb": lambda: D.GTSRB(folder, split=split, transform=transform, download=download),
        "mnist": lambda: D.MNIST(folder, train=train, transform=transform, download=download),
        "fashion-mnist": lambda: D.FashionMNIST(folder, train=train, transform=transform, download=download),
    }
    if not download and not os.path.isdir(folder):
        raise FlatnessError(
            f"{name} not found: expected its files under {folder}/ ({LAYOUTS[name]}); "
            "put them there, or pass --download"
        )
    try:
        return builders[name]()
    except RuntimeError as err:
        if download:
            raise FlatnessError(
                f"could not download {name} into {folder}: {str(err).splitlines()[0] if str(err) else err}"
            ) from None
        raise FlatnessError(
            f"{name} {split} files not found under {folder}/ ({LAYOUTS[name]}); put them there, or pass --download"
        ) from None
    except (OSError, ValueError, TypeError, KeyError, EOFError, AssertionError, pickle.UnpicklingError) as err:
        raise FlatnessError(
            f"could not read {name} from {folder} (damaged files?): {type(err).__name__}: "
            f"{str(err).splitlines()[0][:160] if str(err) else ''}"
        ) from None


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        "digits", 1, 8, 10, (0.3054,), (0.3761,), "scikit-learn's bundled 8x8 digits (offline; 1437 train / 360 test)"
    ),
    "cifar10": DatasetInfo(
        "cifar10", 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "CIFAR-10 (torchvision)"
    ),
    "cifar100": DatasetInfo(
        "cifar100", 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), "CIFAR-100 (torchvision)"
    ),
    "svhn": DatasetInfo(
        "svhn", 3, 32, 10, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), "SVHN cropped digits (torchvision)"
    ),
    "gtsrb": DatasetInfo(
        "gtsrb",
        3,
        32,
        43,
        (0.3403, 0.3121, 0.3214),
        (0.2724, 0.2608, 0.2669),
        "German traffic signs, resized to 32x32 (torchvision)",
    ),
    "mnist": DatasetInfo("mnist", 1, 28, 10, (0.1307,), (0.3081,), "MNIST (torchvision)"),
    # 1-D signals [1, 40]: image_size is the sequence length. The generator itself standardises the
    # whole set (both splits together) to mean 0, std 1; those are the statistics, applied by no one else.
    "mnist1d": DatasetInfo(
        "mnist1d",
        1,
        40,
        10,
        (0.0,),
        (1.0,),
        "MNIST-1D (Greydanus 2020; generated offline; 4000 train / 1000 test, 40 samples)",
        default_model="mlp1d",
    ),
    "fashion-mnist": DatasetInfo("fashion-mnist", 1, 28, 10, (0.2860,), (0.3530,), "Fashion-MNIST (torchvision)"),
}


def dataset_names():
    """The registered dataset names, sorted."""
    return sorted(DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of dataset ``name``.

    Args:
        name: a registered dataset name.

    Returns:
        Its ``DatasetInfo``.

    Raises:
        FlatnessError: for an unknown name (the message lists the known ones).
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise FlatnessError(f"unknown dataset {name!r}; choose one of: {', '.join(dataset_names())}") from None


def get_dataset(
    name: str, split: str, root: str | None = None, augment: bool = False, download: bool = False
) -> Dataset:
    """The ``split`` ('train' or 'test') of dataset ``name`` as a torch Dataset of (image, label)."""
    dataset_info(name)
    if split not in SPLITS:
        raise FlatnessError(f"unknown split {split!r}; use train or test")
    if name == "digits":
        return _digits_split(split)  # no augmentation: 8x8 digits lose too much to crops
    if name == "mnist1d":
        return mnist1d_split(split, root or DEFAULT_DATA_DIR)  # no augmentation: the generator's set as is
    return _torchvision(name, split, root or DEFAULT_DATA_DIR, augment, download)
