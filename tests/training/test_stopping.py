"""Training to a fixed training loss (``--stop-loss``): the stop epoch against an independent loss loop,
bitwise resume of an interrupted stopping run, a finished run's resume doing nothing, bad values."""

import os

import pytest
import torch
import torch.nn.functional as F

from flatness.core.errors import FlatnessError
from flatness.data.datasets import get_dataset
from flatness.formats import checkpoint as ckpt
from flatness.training import stopping
from flatness.training.config import TrainConfig
from flatness.training.loop import train

SMALL = dict(width=8, batch_size=64, schedule="step", milestones=[3], seed=1)
STOP_AT = 3  # the epoch the chosen stop loss must stop at (of a cap of CAP)
CAP = 4


def small(**kw):
    return TrainConfig(**dict(SMALL, **kw))


class Killed(Exception):
    """Stands for the run being killed."""


def whole_train_loss(path):
    """Mean cross-entropy over every digits training example, by a plain loop (not flatness.evaluate)."""
    model, _ = ckpt.load_checkpoint(path)
    data = get_dataset("digits", "train")
    total = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(data), 97):  # a batch size unlike the loop's 500
            xs, ys = zip(*(data[i] for i in range(start, min(start + 97, len(data)))))
            logits = model(torch.stack(xs))
            total += F.cross_entropy(logits, torch.as_tensor(ys), reduction="sum").double()
    return float(total) / len(data)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An ERM run of CAP epochs without a stop loss, a snapshot per epoch, and its independent losses."""
    out = str(tmp_path_factory.mktemp("stop") / "reference")
    train(small(epochs=CAP, save_every=1), out, progress=False, verbose=False)
    losses = {e: whole_train_loss(p) for e, p in ckpt.list_snapshots(out) if e > 0}
    before = min(losses[e] for e in range(1, STOP_AT))
    assert losses[STOP_AT] < before, losses  # the test's premise: epoch STOP_AT is the first below the others
    return out, losses, (losses[STOP_AT] + before) / 2


def same_weights(a, b):
    sa, sb = (torch.load(p, weights_only=True)["model_state"] for p in (a, b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def stopping_run(out, stop_loss, **kw):
    return train(small(epochs=CAP, save_every=1, stop_loss=stop_loss, **kw), out, progress=False, verbose=False)


@pytest.fixture(scope="module")
def stopped(reference, tmp_path_factory):
    """The run with the reference's stop loss, uninterrupted."""
    return stopping_run(str(tmp_path_factory.mktemp("stop") / "stopped"), reference[2])


def test_stop_epoch_is_the_first_whose_whole_train_loss_is_at_most_the_target(reference, stopped):
    ref, _, stop_loss = reference
    out = stopped
    state = torch.load(os.path.join(out, ckpt.LAST), weights_only=True)
    assert state["extra"]["stop"] == {"stop_loss": stop_loss, "epoch": STOP_AT, "reached": True}
    assert ckpt.load_checkpoint(out)[1]["stop"]["reached"] is True
    snapshots = dict(ckpt.list_snapshots(out))
    assert max(snapshots) == STOP_AT  # nothing trained after the stop
    # the stop epoch, recomputed from the run's own snapshots by an independent loop
    own = {e: whole_train_loss(p) for e, p in snapshots.items() if e > 0}
    assert own[STOP_AT] <= stop_loss and all(own[e] > stop_loss for e in range(1, STOP_AT))
    for record in ckpt.read_metrics(out):
        assert record["full_train_loss"] == pytest.approx(own[record["epoch"]], rel=1e-5, abs=1e-7)
    # measuring the whole training set draws no random number: the trajectory is the plain run's
    assert same_weights(snapshots[STOP_AT], dict(ckpt.list_snapshots(ref))[STOP_AT])


def test_end_record_only_at_the_target_or_the_cap():
    assert stopping.end_record(0.01, 2, 6, 0.5) is None
    assert stopping.end_record(0.01, 6, 6, 0.5) == {"stop_loss": 0.01, "epoch": 6, "reached": False}
    assert stopping.end_record(0.01, 2, 6, 0.01) == {"stop_loss": 0.01, "epoch": 2, "reached": True}
    assert stopping.end_record(None, 6, 6, 0.0) is None


def test_interrupted_stopping_run_resumes_to_the_same_result(reference, stopped, tmp_path, monkeypatch):
    out = str(tmp_path / "killed")
    real = stopping.end_record

    def interrupt_at_epoch_2(stop_loss, epoch, cap, loss):
        if epoch == 2:  # epoch 2 trained and measured, its checkpoint not yet written: as a kill there
            raise Killed
        return real(stop_loss, epoch, cap, loss)

    monkeypatch.setattr(stopping, "end_record", interrupt_at_epoch_2)
    with pytest.raises(Killed):
        stopping_run(out, reference[2])
    monkeypatch.setattr(stopping, "end_record", real)
    assert torch.load(os.path.join(out, ckpt.LAST), weights_only=True)["epoch"] == 1
    train(small(epochs=CAP, save_every=1, stop_loss=reference[2]), out, resume=True, progress=False, verbose=False)
    a, b = (torch.load(os.path.join(d, ckpt.LAST), weights_only=True) for d in (out, stopped))
    assert a["epoch"] == b["epoch"] == STOP_AT and a["extra"]["stop"] == b["extra"]["stop"]
    assert same_weights(os.path.join(out, ckpt.LAST), os.path.join(stopped, ckpt.LAST))
    for k, state in a["optimizer_state"]["state"].items():
        assert all(torch.equal(t, b["optimizer_state"]["state"][k][n]) for n, t in state.items() if torch.is_tensor(t))
    strip = lambda ms: [{k: v for k, v in m.items() if k != "seconds"} for m in ms]  # noqa: E731
    assert strip(a["metrics"]) == strip(b["metrics"])


def test_a_run_that_reached_its_stop_loss_resumes_to_nothing(stopped, tmp_path, cli):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(stopped, out)
    before = {name: (out / name).read_bytes() for name in os.listdir(out) if not name.startswith(".")}
    result = cli(["train", "--out", out, "--resume", "--epochs", str(CAP + 4), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "reached the stop loss at epoch 3; nothing to do" in result.output
    after = {name: (out / name).read_bytes() for name in os.listdir(out) if not name.startswith(".")}
    assert after.keys() == before.keys()
    for name in (ckpt.LAST, ckpt.METRICS, ckpt.snapshot_name(STOP_AT)):
        assert after[name] == before[name], name


def test_a_cap_reached_first_is_recorded_and_extending_the_cap_goes_on(reference, stopped, tmp_path):
    out = str(tmp_path / "capped")
    train(small(epochs=2, save_every=1, stop_loss=reference[2]), out, progress=False, verbose=False)
    assert torch.load(os.path.join(out, ckpt.LAST), weights_only=True)["extra"]["stop"] == {
        "stop_loss": reference[2],
        "epoch": 2,
        "reached": False,
    }
    # the step schedule does not depend on the cap, so a larger cap continues the same trajectory
    train(small(epochs=CAP, save_every=1, stop_loss=reference[2]), out, resume=True, progress=False, verbose=False)
    assert torch.load(os.path.join(out, ckpt.LAST), weights_only=True)["extra"]["stop"]["epoch"] == STOP_AT
    assert same_weights(os.path.join(out, ckpt.LAST), os.path.join(stopped, ckpt.LAST))


@pytest.mark.parametrize("value", ["0", "-0.5", "nan", "inf"])
def test_bad_stop_loss_is_one_line_and_starts_nothing(tmp_path, cli, value):
    out = tmp_path / "out"
    result = cli(["train", "--out", out, "--no-progress", "--stop-loss", value])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: stop_loss must be a finite number > 0 (a training cross-entropy), got {float(value)!r}"
    ]
    assert not out.exists()
    with pytest.raises(FlatnessError, match="stop_loss"):
        TrainConfig(stop_loss=True).checked()


def test_training_cost_orders_runs_as_their_passes_and_steps_do():
    from flatness.training.config import TrainConfig
    from flatness.training.cost import training_cost

    fixed = [TrainConfig(method=m, epochs=10, batch_size=64, inner_iter=2) for m in ("erm", "sam", "amp")]
    assert [training_cost(c) for c in fixed] == [10 / 64, 20 / 64, 30 / 64]  # 1, 2, 1 + inner_iter passes
    assert training_cost(TrainConfig(epochs=10, batch_size=32)) == 2 * training_cost(
        TrainConfig(epochs=10, batch_size=64)
    )
    # to a stop loss: steps scale as 1 / lr whatever the cap and the batch size
    slow, fast = TrainConfig(stop_loss=0.01, lr=0.01, epochs=800), TrainConfig(stop_loss=0.01, lr=0.04, epochs=800)
    assert training_cost(slow) == 4 * training_cost(fast) == 100.0
    assert training_cost(TrainConfig(stop_loss=0.01, lr=0.01, batch_size=512, epochs=5)) == training_cost(slow)


# --------------------------------------------------------------------------- the stop rule's data


class Augmented(torch.utils.data.Dataset):
    """A training split whose every read is a fresh random augmentation (as a torchvision transform is)."""

    def __init__(self, plain):
        self.plain = plain

    def __len__(self):
        return len(self.plain)

    def __getitem__(self, i):
        x, y = self.plain[i]
        return x + torch.randn_like(x), y


def test_whole_train_loss_is_measured_on_the_split_without_augmentation(monkeypatch):
    from types import SimpleNamespace

    plain = torch.utils.data.TensorDataset(torch.arange(10.0).reshape(5, 2), torch.tensor([0, 1, 0, 1, 1]))
    asked = []

    def fake_get_dataset(name, split, root=None, augment=False, download=False):
        asked.append((name, split, root, augment))
        return plain

    monkeypatch.setattr(stopping, "get_dataset", fake_get_dataset)  # where whole_train_data looks it up
    config = SimpleNamespace(stop_loss=0.01, augment=True, dataset="cifar10", data_dir="/somewhere")
    data = stopping.whole_train_data(config, Augmented(plain), torch.device("cpu"), batch_size=2)
    assert asked == [("cifar10", "train", "/somewhere", False)]
    assert [len(y) for _, y in data] == [2, 2, 1]  # every example, in order, in batches of 2
    assert torch.equal(torch.cat([x for x, _ in data]), plain.tensors[0])
    assert torch.equal(torch.cat([y for _, y in data]), plain.tensors[1])
    # a run without augmentation measures the split it trains on; a run without a stop loss measures nothing
    own = torch.utils.data.TensorDataset(torch.ones(3, 2), torch.tensor([1, 1, 0]))
    config = SimpleNamespace(stop_loss=0.01, augment=False, dataset="cifar10", data_dir="/somewhere")
    data = stopping.whole_train_data(config, own, torch.device("cpu"), batch_size=500)
    assert len(asked) == 1 and torch.equal(data.batches[0][1], own.tensors[1])
    assert stopping.whole_train_data(SimpleNamespace(stop_loss=None), own, torch.device("cpu"), 500) is None


def test_measure_is_the_exact_mean_loss_and_accuracy_over_every_example():
    from flatness.data.probe_data import ProbeData

    model = torch.nn.Linear(2, 2).double()
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, -1.0], [-2.0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1])
    data = ProbeData([(x[:2], y[:2]), (x[2:], y[2:])])  # unequal batches: a mean of batch means would differ
    logits = model(x).detach()
    out = stopping.measure(model, data)
    assert out["full_train_loss"] == pytest.approx(float(F.cross_entropy(logits, y)))
    assert out["full_train_acc"] == pytest.approx(float((logits.argmax(1) == y).double().mean()))
    assert stopping.measure(model, None) == {}


def test_measure_takes_rank_zeros_numbers_when_distributed(monkeypatch):
    from flatness.core.evaluation import evaluate
    from flatness.data.probe_data import ProbeData

    sent = []

    def rank_zero(obj, src=0):  # stands for torch.distributed: every rank gets rank 0's pair
        sent.append((obj, src))
        return (0.25, 0.5)

    monkeypatch.setattr(stopping.distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(stopping.distributed, "broadcast_object", rank_zero)
    model = torch.nn.Linear(2, 2)
    data = ProbeData([(torch.ones(3, 2), torch.tensor([0, 1, 1]))])
    assert stopping.measure(model, data) == {"full_train_loss": 0.25, "full_train_acc": 0.5}
    ((pair, src),) = sent  # this rank's own measurement went out, from rank 0
    assert src == 0 and pair == pytest.approx(evaluate(model, data))


def test_end_record_at_exactly_the_target_and_describe_both_ends():
    assert stopping.end_record(0.5, 1, 6, 0.5) == {"stop_loss": 0.5, "epoch": 1, "reached": True}
    assert stopping.end_record(0.5, 7, 6, None) == {"stop_loss": 0.5, "epoch": 7, "reached": False}
    assert stopping.end_record(0.5, 5, 6, None) is None
    assert stopping.describe({"stop_loss": 0.01, "epoch": 3, "reached": True}) == (
        "reached the stop loss 0.01 at epoch 3: stopped"
    )
    assert stopping.describe({"stop_loss": 0.01, "epoch": 6, "reached": False}) == (
        "the cap of 6 epochs came first: the training loss is still above 0.01"
    )
    assert stopping.stored_record({"extra": {"stop": {"epoch": 2}}}) == {"epoch": 2}
    assert stopping.stored_record({"extra": {"stop": "junk"}}) is None
    assert stopping.stored_record({}) is None


@pytest.mark.parametrize("value", [0, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_check_stop_loss_refuses_all_but_finite_positive_numbers(value):
    with pytest.raises(FlatnessError, match="stop_loss must be a finite number > 0"):
        stopping.check_stop_loss(value)


def test_check_stop_loss_accepts_none_integers_and_floats():
    for value in (None, 1, 0.01):
        stopping.check_stop_loss(value)
