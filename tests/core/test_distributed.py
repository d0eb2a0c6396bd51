"""torch.distributed with 2 gloo CPU ranks gives the single-process results."""

import pytest
import torch
from dist_harness import run_ranks

from flatness.core import distributed
from flatness.core.evaluation import evaluate, full_gradient
from flatness.core.params import named_trainable
from flatness.data.probe_data import load_probe_data
from flatness.formats.checkpoint import load_checkpoint


def _sharded_eval(checkpoint):
    model, _ = load_checkpoint(checkpoint)
    data = load_probe_data("digits", "train", 203, 20).shard(distributed.rank(), distributed.world_size())
    loss, acc = evaluate(model, data)
    params = [p for _, p in named_trainable(model)]
    gloss, grads = full_gradient(model, data, params)
    return {
        "loss": loss,
        "acc": acc,
        "gloss": gloss,
        "grads": [g.detach() for g in grads],
        "rank": distributed.rank(),
        "world": distributed.world_size(),
    }


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
    from flatness.landscape.compute import compute_surface

    summary = compute_surface(
        checkpoint, out, x=(-1, 1, 5), y=(-1, 1, 4), samples=120, batch_size=50, device="cpu", progress=False
    )
    return {"computed_now": summary["computed_now"], "rank": distributed.rank()}


def test_distributed_surface_equals_single_process(digits_checkpoint, tmp_path):
    from flatness.formats.surface_file import read_surface
    from flatness.landscape.compute import compute_surface

    single = tmp_path / "single.h5"
    compute_surface(
        digits_checkpoint,
        str(single),
        x=(-1, 1, 5),
        y=(-1, 1, 4),
        samples=120,
        batch_size=50,
        device="cpu",
        progress=False,
    )
    multi = tmp_path / "multi.h5"
    results = run_ranks(_distributed_surface, 2, digits_checkpoint, str(multi))
    assert sorted(r["computed_now"] for r in results) == [10, 10]  # 20 points split evenly over 2 ranks
    a, b = read_surface(str(single)), read_surface(str(multi))
    for key in ("train_loss", "train_acc"):
        assert not torch.isnan(torch.as_tensor(b[key])).any()
        torch.testing.assert_close(torch.as_tensor(b[key]), torch.as_tensor(a[key]), rtol=1e-5, atol=1e-6)


def _train(out_dir, method, epochs, resume, local_perturbation=False):
    from flatness.training.config import TrainConfig
    from flatness.training.loop import train

    config = TrainConfig(
        model="mlp",
        width=32,
        depth=1,
        method=method,
        epochs=epochs,
        batch_size=50,
        seed=0,
        device="cpu",
        epsilon=0.05,
        milestones=[],
        local_perturbation=local_perturbation,
    )
    train(config, out_dir, resume=resume, progress=False, verbose=False)
    return distributed.world_size()


def _weights(run_dir):
    return torch.load(f"{run_dir}/last.pt", weights_only=True)["model_state"]


@pytest.mark.parametrize("method", ["erm", "amp"])
def test_ddp_training_equals_single_process_on_the_same_global_batch(tmp_path, method):
    single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
    _train(single, method, 1, False)
    assert run_ranks(_train, 2, multi, method, 1, False) == [2, 2]
    a, b = _weights(single), _weights(multi)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
    assert any(not torch.equal(a[n], torch.load(f"{single}/init.pt", weights_only=True)["model_state"][n]) for n in a)


def test_local_perturbation_differs_from_global_and_resume_changes_rank_count(tmp_path):
    local, global_ = str(tmp_path / "local"), str(tmp_path / "global")
    run_ranks(_train, 2, local, "amp", 1, False, True)
    run_ranks(_train, 2, global_, "amp", 1, False, False)
    assert any(not torch.allclose(_weights(local)[n], _weights(global_)[n]) for n in _weights(local))
    # one epoch on 2 ranks, then resume to 2 epochs in 1 process == 2 epochs in 1 process
    straight = str(tmp_path / "straight")
    _train(straight, "amp", 2, False)
    _train(global_, "amp", 2, True)
    for name, value in _weights(straight).items():
        torch.testing.assert_close(_weights(global_)[name], value, rtol=1e-4, atol=1e-5)


def _sharded_hvp(checkpoint, v):
    from flatness.hessian import HessianOperator

    model, _ = load_checkpoint(checkpoint)
    data = load_probe_data("digits", "train", 203, 20).shard(distributed.rank(), distributed.world_size())
    return HessianOperator(model, data).matvec(v)


def test_distributed_hvp_equals_single_process(digits_checkpoint):
    from flatness.hessian import HessianOperator

    model, _ = load_checkpoint(digits_checkpoint)
    op = HessianOperator(model, load_probe_data("digits", "train", 203, 20))
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
    expected = op.matvec(v)
    for hv in run_ranks(_sharded_hvp, 2, digits_checkpoint, v):
        torch.testing.assert_close(hv, expected, rtol=1e-4, atol=1e-5)


def test_probe_and_surface_commands_under_torchrun_match_one_process(digits_checkpoint, tmp_path):
    """The real launcher: `torchrun -m flatness.cli probe/surface` with 2 gloo ranks."""
    import json
    import os
    import subprocess
    import sys

    from flatness.formats.surface_file import read_surface

    def run(args, nproc):
        launcher = (
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
            if nproc > 1
            else [sys.executable]
        )
        env = dict(os.environ, OMP_NUM_THREADS="1")
        done = subprocess.run(
            launcher + ["-m", "flatness.cli"] + args, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-2000:]

    for nproc in (1, 2):
        run(
            [
                "probe",
                digits_checkpoint,
                "--samples",
                "150",
                "--batch-size",
                "40",
                "--top-k",
                "2",
                "--trace",
                "--trace-samples",
                "4",
                "--device",
                "cpu",
                "--quiet",
                "--out",
                str(tmp_path / f"p{nproc}.json"),
            ],
            nproc,
        )
        run(
            [
                "surface",
                digits_checkpoint,
                "--x=-1:1:3",
                "--y=-1:1:3",
                "--samples",
                "100",
                "--device",
                "cpu",
                "--quiet",
                "--out",
                str(tmp_path / f"s{nproc}.h5"),
            ],
            nproc,
        )
    one, two = (json.load(open(tmp_path / f"p{n}.json")) for n in (1, 2))
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)
    assert two["hessian"]["eigenvalues"] == pytest.approx(one["hessian"]["eigenvalues"], rel=1e-3)
    assert two["trace"]["estimate"] == pytest.approx(one["trace"]["estimate"], rel=1e-3)
    a, b = read_surface(str(tmp_path / "s1.h5")), read_surface(str(tmp_path / "s2.h5"))
    torch.testing.assert_close(torch.as_tensor(b["train_loss"]), torch.as_tensor(a["train_loss"]), rtol=1e-5, atol=1e-6)
