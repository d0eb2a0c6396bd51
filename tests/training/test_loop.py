"""Training loop: bitwise resume (also after SIGKILL), run folder contents, divergence, bad input."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import pytest
import torch
from holds import hold_env, wait_for_hold

import flatness
from flatness.core.errors import DivergedError, FlatnessError
from flatness.data.datasets import get_dataset
from flatness.data.tensor_data import TensorImageDataset
from flatness.formats import checkpoint as ckpt
from flatness.training.config import TrainConfig, build_config, lr_at
from flatness.training.feeding import EpochBatches, device_flags, to_device
from flatness.training.loop import train

SMALL = dict(width=8, batch_size=64, schedule="step", milestones=[3], seed=1)


def small(**kw):
    return TrainConfig(**dict(SMALL, **kw))


def weights(path):
    return torch.load(path, weights_only=True)


def assert_same_state(a, b):
    sa, sb = weights(a), weights(b)
    assert sa["epoch"] == sb["epoch"]
    for k in sa["model_state"]:
        assert torch.equal(sa["model_state"][k], sb["model_state"][k]), k
    oa, ob = sa["optimizer_state"], sb["optimizer_state"]
    for k in oa["state"]:
        for name, t in oa["state"][k].items():
            if torch.is_tensor(t):
                assert torch.equal(t, ob["state"][k][name])
    strip = lambda ms: [{k: v for k, v in m.items() if k != "seconds"} for m in ms]  # noqa: E731
    assert strip(sa["metrics"]) == strip(sb["metrics"])


@pytest.mark.parametrize("method", ["erm", "amp"])
def test_resume_is_bitwise(tmp_path, method):
    straight = train(small(method=method, epochs=4), str(tmp_path / "a"), progress=False, verbose=False)
    train(small(method=method, epochs=2), str(tmp_path / "b"), progress=False, verbose=False)
    assert weights(tmp_path / "b" / ckpt.LAST)["epoch"] == 2
    resumed = train(small(method=method, epochs=4), str(tmp_path / "b"), resume=True, progress=False, verbose=False)
    assert_same_state(os.path.join(straight, ckpt.LAST), os.path.join(resumed, ckpt.LAST))
    lines = pathlib.Path(resumed, ckpt.METRICS).read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4]


def test_resume_refuses_changed_options(tmp_path):
    train(small(epochs=1), str(tmp_path / "r"), progress=False, verbose=False)
    with pytest.raises(FlatnessError, match="cannot change lr"):
        train(small(epochs=2, lr=0.2), str(tmp_path / "r"), resume=True, progress=False, verbose=False)


def test_sigkill_mid_epoch_then_resume_is_bitwise(tmp_path, cli):
    run = tmp_path / "killed"
    args = [
        "train",
        "--width",
        "8",
        "--batch-size",
        "16",
        "--epochs",
        "4",
        "--milestones",
        "3",
        "--seed",
        "2",
        "--out",
        str(run),
        "--no-progress",
    ]
    # held (tests/holds.py) 10 steps into epoch 2 (90 steps of 16 per epoch): the kill lands mid-epoch
    env = hold_env(dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads())), "train-step", 100, tmp_path / "held")
    log = tmp_path / "train.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flatness.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=handle
        )
    wait_for_hold(proc, tmp_path / "held", log)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert weights(run / ckpt.LAST)["epoch"] == 1
    assert len((run / ckpt.METRICS).read_text().splitlines()) == 1
    result = cli(args + ["--resume"])
    assert result.exit_code == 0, result.output
    straight = train(
        TrainConfig(width=8, batch_size=16, epochs=4, milestones=[3], seed=2),
        str(tmp_path / "s"),
        progress=False,
        verbose=False,
    )
    assert_same_state(run / ckpt.LAST, os.path.join(straight, ckpt.LAST))


def test_run_folder_contents(tmp_path):
    out = train(small(epochs=2, save_every=2, method="sam"), str(tmp_path / "run"), progress=False, verbose=False)
    names = set(os.listdir(out))
    assert {ckpt.CONFIG, ckpt.INIT, ckpt.LAST, ckpt.METRICS, "epoch-000.pt", "epoch-002.pt"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    for name in (ckpt.INIT, ckpt.LAST, "epoch-000.pt", "epoch-002.pt"):
        torch.load(os.path.join(out, name), weights_only=True)
    model, info = flatness.load_checkpoint(out)
    assert info["epoch"] == 2 and info["method"] == "sam" and info["dataset"] == "digits"
    assert not model.training
    init = weights(os.path.join(out, ckpt.INIT))
    snap0 = weights(os.path.join(out, "epoch-000.pt"))
    assert all(torch.equal(init["model_state"][k], snap0["model_state"][k]) for k in init["model_state"])
    rows = [json.loads(line) for line in pathlib.Path(out, ckpt.METRICS).read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        keys = {"epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "perturbation_norm", "seconds"}
        assert set(r) == keys
        assert 0 <= r["test_acc"] <= 1
        # SAM's δ = ρ g/‖g‖ at every step: the epoch's mean ‖δ‖ is ρ
        assert r["perturbation_norm"] == pytest.approx(small().rho, rel=1e-6)
    assert json.loads(pathlib.Path(out, ckpt.CONFIG).read_text())["method"] == "sam"
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()


def test_divergence_stops_and_keeps_last_good(tmp_path, cli):
    out = tmp_path / "div"
    result = cli(["train", "--width", "8", "--lr", "1e30", "--epochs", "2", "--out", out, "--no-progress"])
    assert result.exit_code == DivergedError.exit_code
    line = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert line and "epoch 1, step" in line[0] and "Traceback" not in result.output
    model, info = flatness.load_checkpoint(str(out))  # finite, epoch 0
    assert info["epoch"] == 0


def _error_line(result):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--dataset", "nope"], "unknown dataset"),
        (["--model", "nope"], "unknown model"),
        (["--method", "nope"], "unknown method"),
        (["--method", "amp", "--epsilon", "0"], "epsilon"),
        (["--method", "amp", "--epsilon", "-1"], "epsilon"),
        (["--inner-iter", "0"], "inner_iter"),
        (["--epochs", "0"], "epochs"),
        (["--schedule", "linear"], "schedule"),
        (["--milestones", "a,b"], "milestones"),
        (["--recipe", "nope"], "unknown recipe"),
        (["--dataset", "cifar10", "--data-dir", "{tmp}/nodata"], "--download"),
    ],
)
def test_bad_input(tmp_path, cli, args, needle):
    out = tmp_path / "out"
    result = cli(["train", "--no-progress", "--out", out] + [a.format(tmp=tmp_path) for a in args])
    assert needle in _error_line(result)
    assert not out.exists()


def test_bad_out_and_resume(tmp_path, cli):
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    assert "is a file" in _error_line(cli(["train", "--out", a_file, "--no-progress"]))
    assert "is a file" in _error_line(cli(["train", "--out", a_file, "--resume", "--no-progress"]))
    assert a_file.read_text() == "keep me"
    assert "nothing to resume" in _error_line(cli(["train", "--out", tmp_path / "none", "--resume"]))
    assert not (tmp_path / "none").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert "--resume" in _error_line(cli(["train", "--out", busy, "--no-progress"]))
    assert "nothing to resume" in _error_line(cli(["train", "--out", busy, "--resume"]))
    assert os.listdir(busy) == ["notes.txt"] and (busy / "notes.txt").read_text() == "mine"


def test_help_mentions_every_option(cli):
    text = cli(["train", "--help"]).output
    for opt in (
        "--dataset",
        "--model",
        "--width",
        "--depth",
        "--method",
        "--epochs",
        "--batch-size",
        "--lr",
        "--momentum",
        "--nesterov",
        "--weight-decay",
        "--schedule",
        "--milestones",
        "--grad-clip",
        "--seed",
        "--device",
        "--epsilon",
        "--inner-lr",
        "--inner-iter",
        "--ball",
        "--rho",
        "--adaptive",
        "--augment",
        "--data-dir",
        "--download",
        "--out",
        "--save-every",
        "--resume",
        "--recipe",
        "--stop-loss",
    ):
        assert opt in text


def test_recipes_and_overrides():
    paper = build_config({}, "amp-paper")
    assert (paper.lr, paper.momentum, paper.nesterov, paper.weight_decay, paper.batch_size, paper.epochs) == (
        0.1,
        0.9,
        True,
        1e-4,
        50,
        200,
    )
    assert paper.milestones == [100, 150] and paper.grad_clip == 50
    assert (paper.epsilon, paper.inner_lr, paper.inner_iter, paper.ball, paper.augment) == (0.5, 1.0, 1, "tensor", True)
    vgg = build_config({"epochs": 3}, "amp-paper-vgg")
    assert (vgg.epsilon, vgg.inner_lr, vgg.model, vgg.epochs) == (0.1, 0.2, "vgg16", 3)
    default = build_config({}, "digits-default")
    assert dict(default.to_dict(), recipe=None) == TrainConfig().to_dict()
    assert lr_at(paper, 100) == pytest.approx(0.1) and lr_at(paper, 101) == pytest.approx(0.01)
    assert lr_at(paper, 151) == pytest.approx(0.001)
    cos = TrainConfig(schedule="cosine", epochs=4, lr=1.0)
    assert [lr_at(cos, e) for e in (1, 3)] == [pytest.approx(1.0), pytest.approx(0.5)]


def test_device_flags_cuda_branch_on_cpu():
    cuda = device_flags(torch.device("cuda"), cpu_count=8)
    assert cuda.pin_memory and cuda.non_blocking and cuda.num_workers == 4 and not cuda.autocast
    assert device_flags(torch.device("cuda:1"), cpu_count=1).num_workers == 0
    cpu = device_flags(torch.device("cpu"))
    assert not (cpu.pin_memory or cpu.non_blocking) and cpu.num_workers == 0
    x, y = to_device((torch.ones(2, 3), torch.zeros(2, dtype=torch.long)), torch.device("cpu"), cpu)
    assert x.shape == (2, 3)


def test_dataloader_path_and_device_path_match_fast_path():
    data = get_dataset("digits", "train")
    slow = TensorImageDataset(data.images, data.labels, transform=lambda t: t)  # forces the DataLoader path
    flags = device_flags(torch.device("cpu"))
    fast_b, slow_b = EpochBatches(data, 100, flags), EpochBatches(slow, 100, flags)
    # the CUDA fast path's code (dataset materialised on the device, on-device augmentation hook),
    # run here on the CPU device so that its logic is tested without a GPU
    dev_b = EpochBatches(slow, 100, flags, device=torch.device("cpu"), on_device=True)
    assert (slow_b.mode, fast_b.mode, dev_b.mode) == ("loader", "tensor", "device")
    assert len(fast_b) == len(slow_b) == len(dev_b) == 15
    for (xa, ya, na), (xb, yb, nb), (xc, yc, nc) in zip(
        fast_b.epoch(torch.Generator().manual_seed(0)),
        slow_b.epoch(torch.Generator().manual_seed(0)),
        dev_b.epoch(torch.Generator().manual_seed(0)),
    ):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and na == nb == ya.shape[0]
        assert torch.equal(xa, xc) and torch.equal(ya, yc) and nc == na


def test_rank_shares_partition_each_global_batch():
    data = get_dataset("digits", "train")
    batches = EpochBatches(data, 100, device_flags(torch.device("cpu")))
    whole = list(batches.epoch(torch.Generator().manual_seed(1)))
    parts = [list(batches.epoch(torch.Generator().manual_seed(1), rank=r, world=3)) for r in range(3)]
    for k, (x, y, n) in enumerate(whole):
        assert all(p[k][2] == n for p in parts)  # every rank knows the global batch size
        assert torch.equal(torch.cat([p[k][0] for p in parts]), x) and torch.equal(
            torch.cat([p[k][1] for p in parts]), y
        )


def test_cuda_fast_path_decisions_without_a_gpu(monkeypatch):
    """The choices the CUDA path makes, checked with torch.device('cuda') objects on a CPU machine."""
    from flatness.models.registry import build_model
    from flatness.training.config import TrainConfig
    from flatness.training.feeding import cpu_threads_for, device_flags, keep_data_on_device

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    flags = device_flags(cuda, cpu_count=8)
    assert flags.pin_memory and flags.non_blocking and flags.num_workers == 4
    assert not device_flags(cpu).pin_memory and device_flags(cpu).num_workers == 0
    data = get_dataset("digits", "train")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * 2**20, 16 * 2**30))
    assert keep_data_on_device(TrainConfig(), cuda, data)  # 0.4 MB of digits < 10 MB / 4
    assert not keep_data_on_device(TrainConfig(), cpu, data)  # never on the CPU
    assert not keep_data_on_device(TrainConfig(data_on_device="no"), cuda, data)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**20, 16 * 2**30))
    assert not keep_data_on_device(TrainConfig(), cuda, data)  # does not fit in a quarter of 1 MB
    assert keep_data_on_device(TrainConfig(data_on_device="yes"), cuda, data)
    small, big = build_model("convnet", 1, 8, 10), build_model("preactresnet18", 3, 32, 10)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert cpu_threads_for(small, cpu) == 1 and cpu_threads_for(big, cpu) is None
    assert cpu_threads_for(small, cuda) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu_threads_for(small, cpu) is None  # the user's explicit setting wins


def test_fast_path_options_run_on_the_cpu_and_change_what_they_should(tmp_path, monkeypatch):
    """bf16 autocast and channels_last run through the real loop on the CPU; compile wraps the
    forward module (torch.compile itself replaced by a marker: compiling is slow and needs no test)."""
    import flatness.training.loop as training_module

    plain = train(small(epochs=1), str(tmp_path / "fp32"), progress=False, verbose=False)
    fast = train(
        small(epochs=1, precision="bf16", channels_last=True), str(tmp_path / "bf16"), progress=False, verbose=False
    )
    a, b = weights(os.path.join(plain, ckpt.LAST)), weights(os.path.join(fast, ckpt.LAST))
    assert all(v.dtype == a["model_state"][k].dtype for k, v in b["model_state"].items())  # weights stay fp32
    assert any(not torch.equal(a["model_state"][k], b["model_state"][k]) for k in a["model_state"])
    assert b["metrics"][-1]["test_acc"] > 0.5  # bf16 still trains
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    train(small(epochs=1, compile=True), str(tmp_path / "compiled"), progress=False, verbose=False)
    assert len(compiled) == 1 and isinstance(compiled[0], torch.nn.Module)
    assert (
        training_module._forward_module(torch.nn.Linear(2, 2), small(), torch.device("cpu")).__class__
        is torch.nn.Linear
    )


def test_config_is_frozen_and_checked_returns_the_canonical_copy():
    """checked() canonicalises names and parses milestones in a copy; the dict form (config.json) keeps
    its keys and values."""
    import dataclasses

    given = TrainConfig.from_dict({"model": "ConvNet", "milestones": "9,6"})
    checked = given.checked()
    assert (given.model, checked.model, checked.milestones) == ("ConvNet", "convnet", [6, 9])
    with pytest.raises(dataclasses.FrozenInstanceError):
        checked.epochs = 3
    assert checked.to_dict() == TrainConfig().to_dict()  # what config.json stores
    assert TrainConfig.from_dict(checked.to_dict()).checked() == checked
    with pytest.raises(FlatnessError, match="epochs must be an integer >= 1"):
        dataclasses.replace(checked, epochs=0).checked()
