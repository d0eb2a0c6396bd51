"""``flatness.plot.style``: saving, colour limits and levels, and the words of titles and labels."""

from __future__ import annotations

import numpy as np
import pytest
from plot_helpers import check_file

from flatness.core.errors import FlatnessError
from flatness.plot import style


def test_save_writes_the_format_of_the_extension_and_keeps_a_users_file(tmp_path):
    fig = style.new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [1, 0])
    for fmt in style.FORMATS:
        check_file(style.save_figure(fig, str(tmp_path / "sub" / f"f.{fmt}")), fmt)
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"keep")
    with pytest.raises(FlatnessError, match="exists; pass --force"):
        style.save_figure(fig, str(mine))
    assert mine.read_bytes() == b"keep"
    with pytest.raises(FlatnessError, match="unknown figure format 'jpg'"):
        style.save_figure(fig, str(tmp_path / "f.jpg"))
    assert not (tmp_path / "f.jpg").exists()


def test_common_limits_and_levels():
    a = {"train_loss": np.array([[0.5, np.nan], [2.0, 1.0]])}
    b = {"train_loss": np.array([3.0, np.inf, 0.2])}
    assert style.common_limits([a, b], "train_loss") == (0.2, 3.0)  # non-finite points ignored
    assert style.common_limits([a, b], "train_loss", vmin=0.1) == (0.1, 3.0)
    assert style.common_limits([{"train_loss": np.array([2.0, 2.0])}], "train_loss") == (2.0, 2.002)  # flat: widened
    assert style.common_limits([{}], "train_loss") == (0.0, 1.0)
    np.testing.assert_allclose(style.contour_levels(1.0, 1000.0, True, n=4), [1.0, 10.0, 100.0, 1000.0])
    np.testing.assert_allclose(style.contour_levels(0.0, 3.0, False, n=4), [0.0, 1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    ("value", "lo", "hi", "log", "expected"),
    [
        ("train_loss", 0.1, 2.1, None, True),  # 21x
        ("train_loss", 0.1, 1.9, None, False),  # 19x
        ("train_acc", 0.1, 100.0, None, False),  # accuracies: linear unless asked
        ("train_acc", 0.1, 100.0, True, True),
        ("train_loss", 0.0, 5.0, True, False),  # log of zero: never
        ("train_loss", 0.1, 50.0, False, False),
    ],
)
def test_use_log(value, lo, hi, log, expected):
    assert style.use_log(value, lo, hi, log) is expected


def test_words_of_labels_and_titles():
    surf = {
        "path": "/x/s.h5",
        "attrs": {
            "checkpoint": "/runs/amp-s1/last.pt",
            "direction": "random",
            "norm": "filter",
            "split": "both",
            "samples": 100,
            "train_samples": 60,
            "test_samples": 40,
        },
    }
    assert style.surface_label(surf) == "amp-s1"
    assert style.surface_title(surf, "2D") == (
        "2D\namp-s1/last.pt | direction: random, filter-normalised | split: train + test (60 + 40 samples)"
    )
    interp = {"attrs": {"direction": "interp:/runs/sam-s0/last.pt"}, "path": "i.h5"}
    assert style.surface_title(interp) == "i.h5 | direction: interp → sam-s0"
    assert style.axis_name(interp, "x").startswith("α (0 = the checkpoint")
    assert style.axis_name(surf, "y") == "step along direction η (filter-normalised units)"
    assert style.axis_name({"attrs": {"direction": "pca"}}, "y") == "PC2 coordinate"
    assert style.value_name("test_loss", "mse") == "test loss (mean squared error)"
    assert style.value_name("train_acc") == "train accuracy"
    assert style.loss_words(None) == "mean cross-entropy" and style.loss_words("mine.py:f") == "mine.py:f"


def test_pick_value():
    surf = {"path": "s.h5", "train_loss": None, "test_loss": np.zeros(2), "test_acc": np.zeros(2)}
    assert style.pick_value(surf, None) == "test_loss"
    assert style.pick_value(surf, "test_acc") == "test_acc"
    with pytest.raises(FlatnessError, match=r"s.h5 has no 'train_acc' \(it has: test_loss, test_acc\)"):
        style.pick_value(surf, "train_acc")
    with pytest.raises(FlatnessError, match="holds no loss values"):
        style.pick_value({"path": "s.h5"}, None)
