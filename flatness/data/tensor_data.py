"""Datasets held as tensors: in memory (``TensorImageDataset``), and on the device with augmentation.

``TensorImageDataset`` holds images and labels already in memory (digits, MNIST-1D, tests' fixtures).

The CUDA fast path: CIFAR-10 (50,000 x 3 x 32 x 32 float32, 600 MB) fits on any training GPU, and
then the per-image PIL pipeline (the bottleneck of a small ResNet on a fast GPU) disappears:
random crops and flips are a few batched tensor ops. ``augment_batch`` reproduces torchvision's
``RandomCrop(size, padding)`` (zero-padded *image*, i.e. padding with the normalised value of black)
and ``RandomHorizontalFlip`` in distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset


class TensorImageDataset(Dataset):
    """Images and labels already in memory as tensors (the digits set, and tests' fixtures)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None):
        if images.shape[0] != labels.shape[0]:
            raise ValueError("images and labels differ in length")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index):
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


@dataclass(frozen=True)
class AugmentSpec:
    """Random crop with ``padding`` (0: none) and optional horizontal flip."""

    padding: int = 0
    flip: bool = False

    @property
    def active(self) -> bool:
        """Whether any augmentation is applied (a padded crop or a flip)."""
        return self.padding > 0 or self.flip


# The published augmentations (docs/metrics.md), by dataset; digits has none.
AUGMENTATIONS = {
    "cifar10": AugmentSpec(4, True),
    "cifar100": AugmentSpec(4, True),
    "svhn": AugmentSpec(2, False),
    "gtsrb": AugmentSpec(4, False),
    "mnist": AugmentSpec(2, False),
    "fashion-mnist": AugmentSpec(2, True),
}


def materialize(dataset: Dataset, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """All of an (un-augmented) dataset as two CPU tensors: images [N, C, H, W] and labels [N]."""
    xs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        xs.append(x)
        ys.append(torch.as_tensor(y))
    return torch.cat(xs), torch.cat(ys).long()


def augment_batch(
    x: torch.Tensor, spec: AugmentSpec, generator: torch.Generator, pad_value: Sequence[float] | None = None
) -> torch.Tensor:
    """Randomly crop (after padding) and flip a batch [B, C, H, W] on its own device.

    ``pad_value`` is the per-channel value of a black pixel after normalisation (-mean/std), so the
    padding matches torchvision's zero-padding of the raw image. Random numbers come from
    ``generator`` (on the CPU, so runs are reproducible across devices) and are then moved.
    """
    if not spec.active:
        return x
    b, c, h, w = x.shape
    out = x
    if spec.padding > 0:
        p = spec.padding
        padded = x.new_empty(b, c, h + 2 * p, w + 2 * p)
        fill = torch.zeros(c) if pad_value is None else torch.as_tensor(pad_value, dtype=torch.float32)
        padded[:] = fill.to(x.device, x.dtype).view(1, c, 1, 1)
        padded[:, :, p : p + h, p : p + w] = x
        offsets = torch.randint(0, 2 * p + 1, (2, b), generator=generator).to(x.device)
        rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # [B, H]
        cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # [B, W]
        batch_index = torch.arange(b, device=x.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if spec.flip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device).view(b, 1, 1, 1)
        out = torch.where(flip, out.flip(3), out)
    return out.contiguous()
