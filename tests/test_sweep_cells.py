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


def test_accuracies_gap_and_test_error_by_hand(monkeypatch):
    import flatness.data.datasets as datasets

    # train: 3 of 4 right (75 %); test: 2 of 5 right (40 %)
    splits = {
        "train": split([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0], [5.0, 1.0]], [0, 1, 1, 1]),
        "test": split([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0], [5.0, 1.0], [4.0, 0.0]], [1, 0, 0, 0, 0]),
    }
    asked = []

    def fake(name, which, root=None, augment=False, download=False):
        asked.append((name, which, root))
        return splits[which]

    monkeypatch.setattr(datasets, "get_dataset", fake)
    out = sweep_cells._accuracies(Identity(), SimpleNamespace(dataset="digits", data_dir="/d"))
    assert out == {
        "train_acc": pytest.approx(75.0),
        "test_acc": pytest.approx(40.0),
        "gap": pytest.approx(35.0),  # train − test, in points
        "test_error": pytest.approx(60.0),  # 100 − test accuracy
    }
    assert sorted(asked) == [("digits", "test", "/d"), ("digits", "train", "/d")]


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
            "status": "done",
            "measures": {"trace": 12.5, "path_norm": None, "margin_p10": float("nan")},
        },
        {"cell": "lr-0.2_seed-0", "params": {"lr": 0.2}, "seed": 0, "status": "failed", "error": "boom"},
    ]
    text = sweep_cells.table_text(records, ["lr"])
    head = "cell,lr,seed,train_acc,test_acc,gap,test_error,stopped_epoch,reached_stop_loss,trace,path_norm,margin_p10"
    assert text.splitlines() == [
        head + ",status,error",
        "lr-0.1_seed-0,0.1,0,97.5,91.25,6.25,8.75,4,true,12.5,,,done,",
        "lr-0.2_seed-0,0.2,0,,,,,,,,,,failed,boom",
    ]
    path = tmp_path / "cells.csv"
    path.write_text(text)
    rows, axes, measures = sweep_cells.read_table(str(path))
    assert (axes, measures) == (["lr"], ["trace", "path_norm", "margin_p10"])
    assert rows[0]["gap"] == 6.25 and rows[0]["test_error"] == 8.75 and rows[0]["reached_stop_loss"] is True
    assert rows[0]["trace"] == 12.5 and rows[0]["path_norm"] is None and rows[1]["error"] == "boom"
