"""The skeleton's shared pieces: flat parameter vectors, probe data weighting, checkpoint format."""

import contextlib
import pickle

import pytest
import torch

from flatness.core.errors import FlatnessError
from flatness.core.evaluation import evaluate
from flatness.core.params import get_flat_params, named_trainable, perturbed, set_flat_params_, unflatten
from flatness.data.probe_data import ProbeData, load_probe_data
from flatness.formats.checkpoint import load_checkpoint, read_checkpoint
from flatness.models.registry import build_model


def test_flat_vector_round_trip_and_perturbation_restores_bitwise():
    model = build_model("convnet", 1, 8, 10)
    theta = get_flat_params(model)
    assert theta.numel() == sum(p.numel() for _, p in named_trainable(model))
    delta = torch.randn_like(theta)
    with perturbed(model, delta):
        assert torch.allclose(get_flat_params(model), theta + delta)
    assert torch.equal(get_flat_params(model), theta)
    set_flat_params_(model, theta * 2)
    assert torch.equal(get_flat_params(model), theta * 2)
    parts = unflatten(theta, [p for _, p in named_trainable(model)])
    assert [p.shape for p in parts] == [p.shape for _, p in named_trainable(model)]


def test_probe_data_is_first_n_in_order_and_batch_weights_give_the_full_mean():
    data = load_probe_data("digits", "train", 100, 30)  # batches of 30, 30, 30, 10: uneven on purpose
    assert data.n == 100 and [y.shape[0] for _, y in data] == [30, 30, 30, 10]
    assert abs(sum(data.weights()) - 1.0) < 1e-12
    whole = load_probe_data("digits", "train", 100, 100)
    assert torch.equal(torch.cat([x for x, _ in data]), whole.batches[0][0])
    model = build_model("mlp", 1, 8, 10, width=8, depth=1).eval()
    loss_batched, acc_batched = evaluate(model, data)
    loss_whole, acc_whole = evaluate(model, whole)
    assert loss_batched == pytest.approx(loss_whole, rel=1e-6) and acc_batched == acc_whole


def test_evaluate_uses_eval_mode_and_restores_each_modules_own_mode(digits_checkpoint):
    model, _ = load_checkpoint(digits_checkpoint)
    data = load_probe_data("digits", "train", 64, 32)
    expected = evaluate(model, data)  # already in eval mode: nothing switched
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bns[0].eval()  # a mixed state, as a user freezing one BN layer would leave it
    modes = [m.training for m in model.modules()]
    assert evaluate(model, data) == expected  # BN ran on running statistics, not batch statistics
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())  # no statistics updated


def test_checkpoint_round_trip_with_weights_only(digits_checkpoint):
    payload = torch.load(digits_checkpoint, weights_only=True)
    assert payload["format"] == "flatness-checkpoint"
    model, info = load_checkpoint(digits_checkpoint)
    assert not model.training and info["dataset"] == "digits" and info["model"] == "convnet"
    for k, v in model.state_dict().items():
        assert torch.equal(v, payload["model_state"][k])


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/flatness-pwned",))


def test_checkpoint_with_code_is_refused_and_never_runs(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": "flatness-checkpoint", "x": _Evil()}, handle)
    with pytest.raises(FlatnessError, match="refusing|not a readable"):
        read_checkpoint(str(path))
    import os

    assert not os.path.exists("/tmp/flatness-pwned")


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_foreign_or_broken_files_are_one_line_errors(tmp_path, content, digits_checkpoint):
    path = tmp_path / "bad.pt"
    if content is None:  # truncated real checkpoint
        data = open(digits_checkpoint, "rb").read()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(FlatnessError):
        load_checkpoint(str(path))


def test_unrelated_torch_file_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(FlatnessError, match="not a flatness checkpoint"):
        load_checkpoint(str(path))


def test_non_finite_weights_are_refused(tmp_path):
    from flatness.formats.checkpoint import save_checkpoint
    from flatness.models.registry import model_spec

    spec = model_spec("mlp", 1, 8, 10, width=4, depth=1)
    model = build_model("mlp", 1, 8, 10, width=4, depth=1)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    save_checkpoint(str(path), model, model_spec=spec, config={"dataset": "digits"}, epoch=1)
    with pytest.raises(FlatnessError, match="not finite"):
        load_checkpoint(str(path))


def test_unknown_names_are_one_line_errors():
    from flatness.data.datasets import get_dataset

    with pytest.raises(FlatnessError, match="unknown dataset"):
        get_dataset("imagenet", "train")
    with pytest.raises(FlatnessError, match="unknown split"):
        get_dataset("digits", "val")
    with pytest.raises(FlatnessError, match="unknown model"):
        build_model("resnet9000", 1, 8, 10)
    with pytest.raises(FlatnessError):
        ProbeData([])


class LockClock:
    """``flatness.core.locking``'s clock in these tests: time passes only when the lock waits (each
    retry's sleep adds its seconds), so the grace period is a number of retries, not a race with the
    machine's speed. ``on_retry(n)`` runs at the n-th retry, before the next attempt."""

    def __init__(self, on_retry=None):
        self.now = 0.0
        self.retries = 0
        self.on_retry = on_retry

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.retries += 1
        if self.on_retry is not None:
            self.on_retry(self.retries)
        self.now += seconds


# Holds the lock until the test kills it (reading stdin, which the test never writes or closes).
LOCK_HOLDER = (
    "import sys; from flatness.core.locking import exclusive\n"
    "with exclusive(sys.argv[1]):\n    print('held', flush=True); sys.stdin.read()\n"
)


@contextlib.contextmanager
def lock_holder(target):
    """A process holding the lock on ``target`` from the start of the block until it is killed."""
    import subprocess
    import sys

    with subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, target], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout.readline().strip() == "held"
            yield proc
        finally:
            proc.kill()  # SIGKILL: the kernel drops the lock with the process
            proc.wait()


def test_exclusive_lock_refuses_a_second_holder_and_is_released(tmp_path, monkeypatch):
    import os

    from flatness.core import locking
    from flatness.core.locking import BUSY_GRACE_SECONDS, exclusive, lock_path_for

    target = str(tmp_path / "out.h5")
    # issue 15: the lock lives beside the file (every process sees it, whatever its TMPDIR) and goes with it
    assert os.path.dirname(lock_path_for(target)) == os.path.realpath(str(tmp_path))
    clock = LockClock()
    with lock_holder(target):
        monkeypatch.setattr(locking, "time", clock)
        with pytest.raises(FlatnessError, match="another flatness process"):
            with exclusive(target):
                pass
        assert clock.now >= BUSY_GRACE_SECONDS  # refused only once the whole grace period had passed
    monkeypatch.undo()
    with exclusive(target):
        pass
    assert os.listdir(tmp_path) == []


def test_a_lock_of_a_process_that_dies_within_the_grace_period_is_taken(tmp_path, monkeypatch):
    """A rerun right after a kill: the dying process (or its workers) still holds the lock for a moment."""
    from flatness.core import locking
    from flatness.core.locking import BUSY_GRACE_SECONDS, exclusive

    target = str(tmp_path / "out.h5")
    with lock_holder(target) as proc:

        def kill_holder_at_the_fifth_retry(retry):
            if retry == 5:
                proc.kill()
                proc.wait()  # gone: the kernel has dropped its lock

        clock = LockClock(kill_holder_at_the_fifth_retry)
        monkeypatch.setattr(locking, "time", clock)
        with exclusive(target):  # taken at the attempt after the holder died, inside the grace period
            assert clock.retries == 5
        assert 0 < clock.now < BUSY_GRACE_SECONDS
