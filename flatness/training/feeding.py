"""How training data reaches the model.

The run's train and test splits (``training_splits``), each epoch's batches in an order drawn from the
run's generator and shared out between torchrun ranks (``EpochBatches``), device placement
(``DeviceFlags``, ``to_device``, the CUDA keep-on-GPU decision) and the CPU thread count.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from flatness.core import distributed
from flatness.data.batches import map_tensors
from flatness.data.datasets import dataset_info, get_dataset
from flatness.data.tensor_data import AUGMENTATIONS, AugmentSpec, TensorImageDataset, augment_batch, materialize
from flatness.sources.loading import is_user_dataset, training_data
from flatness.training.config import TrainConfig

SMALL_MODEL_PARAMS = 2_000_000


def training_splits(config: TrainConfig, main_rank: bool):
    """The run's train and test splits and the dataset's record.

    Under torchrun rank 0 downloads first and the others then read the same files.

    Args:
        config: the run's config (dataset, data_dir, augment, download, image_size, normalize).
        main_rank: this process is rank 0 (or not under torchrun): only it may download.

    Returns:
        ``(train_set, test_set, the dataset's record)``.
    """
    args = (config.data_dir, config.augment)
    if main_rank:
        found = training_data(config.dataset, *args, config.download, config.image_size, config.normalize)
    distributed.barrier()
    if not main_rank:
        found = training_data(config.dataset, *args, False, config.image_size, config.normalize)
    return found


@dataclass(frozen=True)
class DeviceFlags:
    """How data moves to ``device``: pinned host memory and asynchronous copies on CUDA only."""

    pin_memory: bool
    non_blocking: bool
    num_workers: int
    cudnn_benchmark: bool
    autocast: bool  # mixed precision is never used: measurements need full-precision weights


def device_flags(device: torch.device, cpu_count: int | None = None) -> DeviceFlags:
    """How training data moves to ``device``.

    Args:
        device: the compute device.
        cpu_count: CPUs to size the loader workers by (default: this machine's).

    Returns:
        The flags: pinned memory, asynchronous copies and loader workers on CUDA only.
    """
    cuda = torch.device(device).type == "cuda"
    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    return DeviceFlags(
        pin_memory=cuda,
        non_blocking=cuda,
        num_workers=min(4, max(0, cpus - 1)) if cuda else 0,
        cudnn_benchmark=False,
        autocast=False,
    )


def to_device(batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, flags: DeviceFlags):
    """Move an ``(x, y)`` batch to ``device``.

    Args:
        batch: inputs and targets.
        device: the compute device.
        flags: ``device_flags(device)`` (asynchronous copies on CUDA).

    Returns:
        ``(x, y)`` on ``device``.
    """
    x, y = batch
    return map_tensors(x, lambda t: t.to(device, non_blocking=flags.non_blocking)), y.to(
        device, non_blocking=flags.non_blocking
    )


class EpochBatches:
    """The training batches of one epoch in the order of a permutation drawn from ``generator``.

    Three ways to the data, one order: a dataset already on the compute device (the CUDA fast path:
    augmentation by ``flatness.data.tensor_data.augment_batch``, drawing from ``generator``); in-memory
    tensors without a transform, sliced directly; anything else through a DataLoader with a fixed
    batch sampler. A final batch of a single example is dropped (BatchNorm cannot train on it), and so
    is a final global batch with fewer examples than ranks (a rank with an empty share would take the
    mean loss of nothing); those examples sit that epoch out.

    Under torchrun every rank draws the same permutation and takes its contiguous share of each
    global batch; ``epoch`` yields ``(x, y, global_batch_size)`` so the loss can be scaled to make
    the all-reduced gradient the mean over the global batch exactly, even for uneven shares.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        flags: DeviceFlags,
        device: torch.device | None = None,
        on_device: bool = False,
        augment=None,
        pad_value=None,
    ):
        self.dataset = dataset
        self.batch_size = batch_size
        self.flags = flags
        self.augment, self.pad_value = augment, pad_value
        if on_device:
            images, labels = materialize(dataset)
            self.images, self.labels, self.mode = images.to(device), labels.to(device), "device"
        elif isinstance(dataset, TensorImageDataset) and dataset.transform is None:
            self.images, self.labels, self.mode = dataset.images, dataset.labels, "tensor"
        else:
            self.mode = "loader"

    def __len__(self) -> int:
        return self.steps_for(1)

    def steps_for(self, world: int) -> int:
        """The steps of an epoch shared by ``world`` ranks.

        Args:
            world: the number of ranks sharing each global batch.

        Returns:
            Every full batch, and a final partial one only when it holds at least two examples and at
            least one per rank.
        """
        full, rest = divmod(len(self.dataset), self.batch_size)
        return full + (1 if rest >= max(2, world) else 0)

    def epoch(
        self, generator: torch.Generator, rank: int = 0, world: int = 1
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        """The batches of one epoch, in the order of a fresh permutation drawn from ``generator``.

        Args:
            generator: the run's data-order generator (advanced by the draw).
            rank: this process's rank under torchrun.
            world: the number of processes.

        Returns:
            An iterator of ``(x, y, global_batch_size)``: this rank's share of each global batch.
        """
        perm = torch.randperm(len(self.dataset), generator=generator)
        chunks = [perm[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self.steps_for(world))]
        share = (lambda t: t.tensor_split(world)[rank]) if world > 1 else (lambda t: t)
        if self.mode == "device":
            spec = self.augment or AugmentSpec()
            for idx in chunks:
                # augment the whole global batch, then take this rank's share: every rank consumes the
                # same random numbers, and the batch equals the single-process one
                idx_dev = idx.to(self.images.device)
                x = augment_batch(self.images[idx_dev], spec, generator, self.pad_value)
                yield share(x), share(self.labels[idx_dev]), int(idx.numel())
            return
        if self.mode == "tensor":
            for idx in chunks:
                part = share(idx)
                yield self.images[part], self.labels[part], int(idx.numel())
            return
        sizes = [int(c.numel()) for c in chunks]
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=[share(c).tolist() for c in chunks],
            num_workers=self.flags.num_workers,
            pin_memory=self.flags.pin_memory,
        )
        for (x, y), size in zip(loader, sizes):
            yield x, y, size


def epoch_batches(config: TrainConfig, train_set, device: torch.device, flags: DeviceFlags) -> EpochBatches:
    """The training batches.

    From a copy of the un-augmented set on the GPU (augmented there) when ``keep_data_on_device``
    says so, else from ``train_set`` as it is.

    Args:
        config: the run's config (dataset, batch_size, augment, data_on_device).
        train_set: the training split.
        device: the compute device.
        flags: ``device_flags(device)``.

    Returns:
        The batches, one epoch per ``EpochBatches.epoch`` call.
    """
    if not keep_data_on_device(config, device, train_set):
        return EpochBatches(train_set, config.batch_size, flags)

    info = dataset_info(config.dataset)
    plain = get_dataset(config.dataset, "train", root=config.data_dir, augment=False)
    spec_aug = AUGMENTATIONS.get(config.dataset, AugmentSpec()) if config.augment else AugmentSpec()
    return EpochBatches(
        plain,
        config.batch_size,
        flags,
        device=device,
        on_device=True,
        augment=spec_aug,
        pad_value=[-m / s for m, s in zip(info.mean, info.std)],
    )


def keep_data_on_device(config: TrainConfig, device: torch.device, train_set) -> bool:
    """The CUDA fast path's data decision: whether the whole training set lives on the GPU.

    It does when asked ("yes"), or ("auto") when the un-augmented set takes under a quarter of the
    free GPU memory; never on the CPU, never for a user's dataset.

    Args:
        config: the run's config (``data_on_device``, ``dataset``).
        device: the compute device.
        train_set: the training split (its size decides "auto").

    Returns:
        True to keep the data on the device.
    """
    if config.data_on_device == "no" or device.type != "cuda" or is_user_dataset(config.dataset):
        return False
    if config.data_on_device == "yes":
        return True
    x, _ = train_set[0]
    needed = len(train_set) * x.numel() * 4
    free, _total = torch.cuda.mem_get_info(device)
    return needed < free // 4


def cpu_threads_for(model: nn.Module, device: torch.device) -> int | None:
    """Intra-op threads to train ``model`` with.

    1 for a small model on the CPU: its ops are too small to gain from a second thread, and on a
    busy machine OpenMP's spin-waiting made a 2-thread run of the digits convnet use ~8x the CPU
    time of a 1-thread run. An explicit OMP_NUM_THREADS in the environment always wins.

    Args:
        model: the model to train.
        device: the compute device.

    Returns:
        The thread count, or None to leave torch's setting.
    """
    if torch.device(device).type != "cpu" or os.environ.get("OMP_NUM_THREADS"):
        return None
    if sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS:
        return 1
    return None
