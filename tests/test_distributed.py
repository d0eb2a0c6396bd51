"""torch.distributed with 2 gloo CPU ranks gives the single-process results."""
import pytest
import torch

from dist_harness import run_ranks
from flatness import distributed
from flatness.checkpoint import load_checkpoint
from flatness.evaluate import evaluate, full_gradient
from flatness.params import named_trainable
from flatness.probe_data import load_probe_data


def _sharded_eval(checkpoint):
    model, _ = load_checkpoint(checkpoint)
    data = load_probe_data("digits", "train", 203, 20).shard(distributed.rank(), distributed.world_size())
    loss, acc = evaluate(model, data)
    params = [p for _, p in named_trainable(model)]
    gloss, grads = full_gradient(model, data, params)
    return {"loss": loss, "acc": acc, "gloss": gloss, "grads": [g.detach() for g in grads],
            "rank": distributed.rank(), "world": distributed.world_size()}


def test_single_process_helpers_are_no_ops():
    assert not distributed.is_distributed() and distributed.rank() == 0 and distributed.world_size() == 1
    t = torch.ones(3)
    distributed.all_reduce_sum_(t)
    assert torch.equal(t, torch.ones(3))
    assert distributed.shard(list(range(5)), 1, 2) == [1, 3]
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}


def test_sharded_loss_accuracy_and_gradient_equal_single_process(digits_checkpoint):
    model, _ = load_checkpoint(digits_checkpoint)
    data = load_probe_data("digits", "train", 203, 20)  # 11 batches, the last of 3: uneven shards
    loss, acc = evaluate(model, data)
    params = [p for _, p in named_trainable(model)]
    gloss, grads = full_gradient(model, data, params)
    results = run_ranks(_sharded_eval, 2, digits_checkpoint)
    assert [r["rank"] for r in results] == [0, 1] and all(r["world"] == 2 for r in results)
    for r in results:
        assert r["loss"] == pytest.approx(loss, rel=1e-6) and r["acc"] == acc
        assert r["gloss"] == pytest.approx(gloss, rel=1e-5)
        for g, h in zip(r["grads"], grads):
            torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-6)


def _distributed_surface(checkpoint, out):
    from flatness.surface import compute_surface

    summary = compute_surface(checkpoint, out, x=(-1, 1, 5), y=(-1, 1, 4), samples=120, batch_size=50,
                              device="cpu", progress=False)
    return {"computed_now": summary["computed_now"], "rank": distributed.rank()}


def test_distributed_surface_equals_single_process(digits_checkpoint, tmp_path):
    from flatness.surface import compute_surface
    from flatness.surface_io import read_surface

    single = tmp_path / "single.h5"
    compute_surface(digits_checkpoint, str(single), x=(-1, 1, 5), y=(-1, 1, 4), samples=120, batch_size=50,
                    device="cpu", progress=False)
    multi = tmp_path / "multi.h5"
    results = run_ranks(_distributed_surface, 2, digits_checkpoint, str(multi))
    assert sorted(r["computed_now"] for r in results) == [10, 10]  # 20 points split evenly over 2 ranks
    a, b = read_surface(str(single)), read_surface(str(multi))
    for key in ("train_loss", "train_acc"):
        assert not torch.isnan(torch.as_tensor(b[key])).any()
        torch.testing.assert_close(torch.as_tensor(b[key]), torch.as_tensor(a[key]), rtol=1e-5, atol=1e-6)
