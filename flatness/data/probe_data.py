"""The probe data: the fixed examples on which every measurement is made.

docs/metrics.md: the first ``samples`` examples of a split in dataset order, no augmentation, batched once
and kept in memory (on the compute device when it fits), so that every loss, HVP, sharpness ascent and
surface point sees exactly the same data in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from flatness.core.distributed import all_reduce_sum_
from flatness.core.errors import FlatnessError
from flatness.core.measured import HALF_DTYPES
from flatness.core.validation import check_count
from flatness.data.batches import map_tensors, move_to, split_batch
from flatness.data.datasets import get_dataset

Batch = tuple[Any, torch.Tensor]  # (inputs: a tensor, or a tuple/dict of tensors; targets)

DEFAULT_SAMPLES = 1000  # probe examples per measurement unless told otherwise
DEFAULT_BATCH_SIZE = 500
#: The default device of loaded probe data (one instance, not a call in each signature).
CPU = torch.device("cpu")


class ProbeData:
    """A fixed, ordered list of batches; ``n`` examples in all, batch ``b`` weighted by n_b / n."""

    def __init__(self, batches: list[Batch], total: int | None = None, sharded: bool = False):
        if not batches and not sharded:
            raise FlatnessError("the probe data is empty")
        self.batches = batches
        # n is always the size of the WHOLE probe set, also on a rank that holds only a shard, so
        # that weights n_b / n and sums over ranks give exactly the single-process mean.
        self.n = sum(int(y.shape[0]) for _, y in batches) if total is None else int(total)
        self.sharded = sharded

    @classmethod
    def from_tensors(cls, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> ProbeData:
        """Probe data of the tensors (x, y), cut in order into batches of ``batch_size``.

        Args:
            x: inputs, examples along the first dimension.
            y: targets, likewise.
            batch_size: examples per batch (>= 1; the last batch may be smaller).

        Returns:
            The probe data (no copy of the tensors).
        """
        if batch_size < 1:
            raise FlatnessError(f"batch size must be >= 1, got {batch_size}")
        return cls([(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])

    @classmethod
    def from_dataset(
        cls, dataset: Dataset, samples: int | None, batch_size: int, device: torch.device = CPU
    ) -> ProbeData:
        """Probe data of the first ``samples`` examples of ``dataset``, in order, batched.

        Args:
            dataset: any map-style dataset of (input, target) pairs.
            samples: examples taken (``None``: all; >= 1 otherwise).
            batch_size: examples per batch (>= 1).
            device: where the batches are put.

        Returns:
            The probe data.
        """
        if samples is not None:
            check_count(samples, "samples")
        if batch_size < 1:
            raise FlatnessError(f"batch size must be >= 1, got {batch_size}")
        count = len(dataset) if samples is None else min(samples, len(dataset))
        loader = DataLoader(Subset(dataset, range(count)), batch_size=batch_size, shuffle=False)
        batches = [split_batch(batch) for batch in loader]  # (x, y), or a dict with "labels"
        return cls([(move_to(x, device), y.to(device)) for x, y in batches])

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def weights(self) -> list[float]:
        """n_b / n for each batch: summing weighted batch means gives the mean over all n."""
        return [y.shape[0] / self.n for _, y in self.batches]

    @property
    def device(self) -> torch.device:
        """Where the batches live (the first batch's targets; a shard without batches: the CPU)."""
        return self.batches[0][1].device if self.batches else torch.device("cpu")

    def to(self, device: torch.device, dtype: torch.dtype | None = None) -> ProbeData:
        """The same batches on ``device`` (``n`` and sharding kept).

        Args:
            device: where the batches go.
            dtype: the model's floating dtype, for every floating input; floating targets take it too
                unless it is a half precision (the loss is computed in float32 there, and regression
                targets would lose digits). Integer tensors (token ids, labels) keep theirs. None:
                dtypes kept.
        """
        target_dtype = None if dtype in HALF_DTYPES else dtype
        return ProbeData(
            [(move_to(x, device, dtype), move_to(y, device, target_dtype)) for x, y in self.batches],
            self.n,
            self.sharded,
        )

    def needs_move(self, device: torch.device, dtype: torch.dtype | None = None) -> bool:
        """Whether ``to(device, dtype)`` would change anything."""
        if self.device != torch.device(device):
            return True
        if dtype is None:
            return False
        target_dtype = None if dtype in HALF_DTYPES else dtype

        def differs(tensors, wanted) -> bool:
            found: list[bool] = []
            map_tensors(tensors, lambda t: found.append(t.is_floating_point() and t.dtype != wanted) or t)
            return any(found)

        return any(
            differs(x, dtype) or (target_dtype is not None and differs(y, target_dtype)) for x, y in self.batches
        )

    def map_inputs(self, fn) -> ProbeData:
        """The same batches with ``fn`` applied to every input tensor (targets unchanged)."""
        return ProbeData([(map_tensors(x, fn), y) for x, y in self.batches], self.n, self.sharded)

    def channels_last(self) -> ProbeData:
        """The same batches with 4-D inputs in NHWC memory layout (same values; faster conv nets on CPUs)."""
        return self.map_inputs(lambda x: x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x)

    def shard(self, rank: int, world: int) -> ProbeData:
        """This rank's batches (round robin) of the same probe set; ``n`` stays the global size.

        Every full-data sum over a shard must then go through ``reduce_sum_`` to add the other
        ranks' parts: ``evaluate``, ``full_gradient`` and the Hessian operator all do.
        """
        if world <= 1:
            return self
        return ProbeData(self.batches[rank::world], total=self.n, sharded=True)

    def reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a per-shard partial result over ranks (in place); a no-op for unsharded data."""
        if self.sharded:
            all_reduce_sum_(tensor)
        return tensor


def load_probe_data(
    dataset: str,
    split: str,
    samples: int | None,
    batch_size: int,
    device: torch.device = CPU,
    root: str | None = None,
    download: bool = False,
) -> ProbeData:
    """The first ``samples`` examples of ``dataset``/``split`` (no augmentation), batched."""
    return ProbeData.from_dataset(
        get_dataset(dataset, split, root=root, augment=False, download=download), samples, batch_size, device
    )
