"""``flatness.training.feeding``: each epoch's batches, their order drawn from the run's generator."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from flatness.data.tensor_data import AugmentSpec, TensorImageDataset
from flatness.training.feeding import EpochBatches, cpu_threads_for, device_flags

CPU = torch.device("cpu")


def _dataset(n, transform=None):
    """Example i has label i and every pixel equal to i: a batch says which examples it holds."""
    labels = torch.arange(n)
    images = labels.float().view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return TensorImageDataset(images, labels, transform)


def _modes(n):
    return {
        "tensor": EpochBatches(_dataset(n), 5, device_flags(CPU)),
        "loader": EpochBatches(_dataset(n, transform=lambda t: t.clone()), 5, device_flags(CPU)),
        "device": EpochBatches(_dataset(n), 5, device_flags(CPU), device=CPU, on_device=True),
    }


def _order(seed, n, batch_size=5):
    """The expected order, drawn independently: the first permutation of a generator seeded with ``seed``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return [perm[i : i + batch_size].tolist() for i in range(0, n, batch_size)]


@pytest.mark.parametrize("mode", ["tensor", "loader", "device"])
def test_the_order_is_the_seeds_permutation_and_every_example_comes_once(mode):
    batches = _modes(22)[mode]
    assert batches.mode == mode and len(batches) == 5
    g = torch.Generator().manual_seed(11)
    got = [(x, y, size) for x, y, size in batches.epoch(g)]
    assert [y.tolist() for _, y, _ in got] == _order(11, 22)
    assert [size for _, _, size in got] == [5, 5, 5, 5, 2]
    for x, y, _ in got:  # the inputs travel with their labels
        assert torch.equal(x[:, 0, 0, 0], y.float()) and x.shape[1:] == (1, 2, 2)
    assert sorted(i for _, y, _ in got for i in y.tolist()) == list(range(22))
    # the next epoch: the generator's second permutation, again every example once
    second = [y.tolist() for _, y, _ in batches.epoch(g)]
    ref = torch.Generator().manual_seed(11)
    torch.randperm(22, generator=ref)
    perm = torch.randperm(22, generator=ref).tolist()
    assert [i for b in second for i in b] == perm and second != _order(11, 22)
    # the same seed gives the same epoch again
    again = [y.tolist() for _, y, _ in batches.epoch(torch.Generator().manual_seed(11))]
    assert again == _order(11, 22)


def test_a_final_batch_of_one_example_is_dropped():
    batches = EpochBatches(_dataset(21), 5, device_flags(CPU))
    assert len(batches) == 4
    got = [y.tolist() for _, y, _ in batches.epoch(torch.Generator().manual_seed(3))]
    assert got == _order(3, 21)[:4]  # the last example of the permutation sits this epoch out


@pytest.mark.parametrize(("mode", "world"), [(m, w) for w in (2, 3, 4) for m in ("tensor", "loader", "device")])
def test_ranks_share_each_global_batch(mode, world):
    """22 examples in batches of 5: the final batch of 2 is shared by 2 ranks, and sits the epoch out for
    3 or 4 ranks (a rank would get an empty share: an IndexError in the DataLoader, a NaN mean loss on the
    tensor paths)."""
    batches = _modes(22)[mode]
    shares = [
        [(y.tolist(), size) for _, y, size in batches.epoch(torch.Generator().manual_seed(5), r, world)]
        for r in range(world)
    ]
    expected_batches = _order(5, 22) if world == 2 else _order(5, 22)[:4]
    assert batches.steps_for(world) == len(expected_batches) == len(shares[0])
    for step, expected in enumerate(expected_batches):
        parts = [shares[r][step][0] for r in range(world)]
        assert [i for p in parts for i in p] == expected  # contiguous shares, in rank order
        assert all(shares[r][step][1] == len(expected) for r in range(world))  # the global size, for the loss scale
        assert max(map(len, parts)) - min(map(len, parts)) <= 1 and min(map(len, parts)) >= 1


def test_on_device_augmentation_matches_a_hand_flip():
    n = 10
    images = torch.arange(n * 4, dtype=torch.float32).view(n, 1, 2, 2)
    batches = EpochBatches(
        TensorImageDataset(images, torch.arange(n)), 5, device_flags(CPU), CPU, True, AugmentSpec(flip=True)
    )
    got = list(batches.epoch(torch.Generator().manual_seed(4)))
    ref = torch.Generator().manual_seed(4)
    perm = torch.randperm(n, generator=ref)
    for step, (x, y, _) in enumerate(got):
        idx = perm[step * 5 : (step + 1) * 5]
        flip = torch.rand(5, generator=ref) < 0.5  # augment_batch's draw, after the permutation's
        expected = torch.where(flip.view(5, 1, 1, 1), images[idx].flip(3), images[idx])
        assert torch.equal(y, idx) and torch.equal(x, expected)
    assert any(not torch.equal(x, images[y]) for x, y, _ in got)


def test_device_flags_and_threads():
    cpu = device_flags(CPU, cpu_count=16)
    assert (cpu.pin_memory, cpu.non_blocking, cpu.num_workers, cpu.autocast) == (False, False, 0, False)
    cuda = device_flags(torch.device("cuda"), cpu_count=16)
    assert (cuda.pin_memory, cuda.non_blocking, cuda.num_workers) == (True, True, 4)
    assert device_flags(torch.device("cuda"), cpu_count=3).num_workers == 2
    assert device_flags(torch.device("cuda"), cpu_count=1).num_workers == 0


def test_a_small_model_on_the_cpu_trains_on_one_thread(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    small, large = nn.Linear(10, 10), nn.Linear(1500, 1500)  # 110 and 2,251,500 parameters
    assert cpu_threads_for(small, CPU) == 1
    assert cpu_threads_for(large, CPU) is None
    assert cpu_threads_for(small, torch.device("cuda")) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu_threads_for(small, CPU) is None
