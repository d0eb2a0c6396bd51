"""`flatness correlate` warns, in its verdict (and so its report), when the cells it ranks are underfit."""

from flatness.sweep.correlate import underfit_cells, verdict


def _summary(cells):
    return {"measures": [], "target": "gap", "cells": len(cells), "axes": ["lr"], **underfit_cells(cells)}


def test_underfit_cells_are_counted_by_train_accuracy_and_unreached_stop_loss():
    cells = [
        {"train_acc": 100.0, "reached_stop_loss": True},
        {"train_acc": 98.9},
        {"train_acc": 47.0},
        {"train_acc": 99.5, "reached_stop_loss": False},
    ]
    counts = underfit_cells(cells)
    assert counts == {"underfit_cells": 3, "underfit_lowest_train_acc": 47.0, "unreached_used": 1}
    sentences = verdict(_summary(cells))
    assert sentences[0].startswith("**Warning: 3 of 4 cells are underfit**") and "47" in sentences[0]


def test_no_warning_when_every_cell_fits():
    cells = [{"train_acc": 100.0, "reached_stop_loss": True}, {"train_acc": 99.0}]
    assert underfit_cells(cells)["underfit_cells"] == 0
    assert not any("underfit" in s for s in verdict(_summary(cells)))
