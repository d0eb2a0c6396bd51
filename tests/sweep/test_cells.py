"""The numbers of the sweep's cells.csv (sweep/cells.py) against hand values: train and test accuracy
from their own splits (different, so a swap shows), the gap and the test error, and the table's text."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from flatness.sweep import cells as sweep_cells


class Identity(nn.Module):
    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x + self.anchor


def split(logits, labels):
    return torch.utils.data.TensorDataset(torch.tensor(logits), torch.tensor(labels))


def log_softmax_nll(logits, labels):
    """Mean cross-entropy by hand (numpy-free loop): -log(exp(z_y) / sum_k exp(z_k))."""
    import math

    total = 0.0
    for z, y in zip(logits, labels):
        total += math.log(sum(math.exp(v) for v in z)) - z[y]
    return total / len(labels)


TRAIN = ([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0], [5.0, 1.0]], [0, 1, 1, 1])  # 3 of 4 right (75 %)
TEST = ([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0], [5.0, 1.0], [4.0, 0.0]], [1, 0, 0, 0, 0])  # 2 of 5 right (40 %)


def fake_target(splits, asked):
    """What sources.loading.load_target returns, reduced to what _accuracies reads."""

    def probe_data(split, samples, batch_size, device, root=None):
        from flatness.data.convert import as_probe_data

        asked.append((split, samples, root))
        logits, labels = splits[split]
        return as_probe_data((torch.tensor(logits), torch.tensor(labels)), batch_size=batch_size)

    return SimpleNamespace(model=Identity(), probe_data=probe_data, loss_fn=None, output_fn=None)


def test_accuracies_gap_and_test_error_by_hand():
    asked = []
    target = fake_target({"train": TRAIN, "test": TEST}, asked)
    out = sweep_cells._accuracies(target, SimpleNamespace(dataset="digits", data_dir="/d"))
    assert out == {
        "train_acc": pytest.approx(75.0),
        "test_acc": pytest.approx(40.0),
        "train_loss": pytest.approx(log_softmax_nll(*TRAIN), rel=1e-6),
        "test_loss": pytest.approx(log_softmax_nll(*TEST), rel=1e-6),
        "gap": pytest.approx(35.0),  # train − test, in points
        "test_error": pytest.approx(60.0),  # 100 − test accuracy
    }
    assert sorted(asked) == [("test", None, "/d"), ("train", None, "/d")]  # whole splits, the run's data folder


def test_without_accuracy_the_gap_is_test_minus_train_loss():
    def mse(outputs, targets):
        return ((outputs - targets) ** 2).mean()

    splits = {"train": ([[1.0], [2.0]], [[1.0], [1.0]]), "test": ([[3.0], [0.0]], [[1.0], [1.0]])}
    target = fake_target(splits, [])
    target.loss_fn = mse
    out = sweep_cells._accuracies(target, SimpleNamespace(dataset="reg.npz", data_dir=None))
    # train: (0 + 1) / 2 = 0.5; test: (4 + 1) / 2 = 2.5; gap = test − train = 2.0; no error without accuracy
    assert out == {
        "train_acc": None,
        "test_acc": None,
        "train_loss": pytest.approx(0.5),
        "test_loss": pytest.approx(2.5),
        "gap": pytest.approx(2.0),
        "test_error": None,
    }


def test_table_text_writes_each_value_in_its_column_and_reads_back(tmp_path):
    records = [
        {
            "cell": "lr-0.1_seed-0",
            "params": {"lr": 0.1},
            "seed": 0,
            "train_acc": 97.5,
            "test_acc": 91.25,
            "gap": 6.25,
            "test_error": 8.75,
            "stopped_epoch": 4,
            "reached_stop_loss": True,
            "train_loss": 0.125,
            "test_loss": 0.5,
            "status": "done",
            "measures": {"trace": 12.5, "path_norm": None, "margin_p10": float("nan")},
        },
        {"cell": "lr-0.2_seed-0", "params": {"lr": 0.2}, "seed": 0, "status": "failed", "error": "boom"},
    ]
    text = sweep_cells.table_text(records, ["lr"])
    head = (
        "cell,lr,seed,train_acc,test_acc,gap,test_error,stopped_epoch,reached_stop_loss,train_loss,test_loss,"
        "trace,path_norm,margin_p10"
    )
    assert text.splitlines() == [
        head + ",status,error",
        "lr-0.1_seed-0,0.1,0,97.5,91.25,6.25,8.75,4,true,0.125,0.5,12.5,,,done,",
        "lr-0.2_seed-0,0.2,0,,,,,,,,,,,,failed,boom",
    ]
    path = tmp_path / "cells.csv"
    path.write_text(text)
    rows, axes, measures = sweep_cells.read_table(str(path))
    assert (axes, measures) == (["lr"], ["trace", "path_norm", "margin_p10"])
    assert rows[0]["gap"] == 6.25 and rows[0]["test_error"] == 8.75 and rows[0]["reached_stop_loss"] is True
    assert rows[0]["trace"] == 12.5 and rows[0]["path_norm"] is None and rows[1]["error"] == "boom"
