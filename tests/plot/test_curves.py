"""``flatness.plot.curves.plot_1d``: the figure is written and its lines carry the surfaces' numbers."""

from __future__ import annotations

import numpy as np
import pytest
from plot_helpers import check_file, keep_figures, make_surface

from flatness.core.errors import FlatnessError
from flatness.plot import curves
from flatness.plot.loading import load_surface


@pytest.fixture
def drawn(monkeypatch):
    """The figures ``plot_1d`` saves, kept for inspection (they are still written by the real ``save_figure``)."""
    return keep_figures(monkeypatch, curves)


def _lines(ax):
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_one_surface_loss_and_accuracy_lines(tmp_path, drawn):
    surf = load_surface(make_surface(tmp_path / "s.h5", two_d=False, nx=11))
    path = curves.plot_1d([surf], str(tmp_path / "s-1d.png"))
    check_file(path, "png")
    (fig,) = drawn
    ax_loss, ax_acc = fig.axes
    x = np.linspace(-1, 1, 11)
    loss = 0.01 + 3 * x**2  # make_surface's closed form
    acc = np.clip(1 - 0.1 * loss, 0, 1) * 100
    lines = _lines(ax_loss)
    assert set(lines) == {"erm-s0 train", "erm-s0 test"}  # labelled by the checkpoint's run folder
    np.testing.assert_allclose(lines["erm-s0 train"].get_xdata(), x)
    np.testing.assert_allclose(lines["erm-s0 train"].get_ydata(), loss)
    np.testing.assert_allclose(lines["erm-s0 test"].get_ydata(), loss + 0.1)
    assert lines["erm-s0 test"].get_linestyle() == "--"
    np.testing.assert_allclose(_lines(ax_acc)["erm-s0 train"].get_ydata(), acc)
    np.testing.assert_allclose(_lines(ax_acc)["erm-s0 test"].get_ydata(), acc * 0.97)
    assert ax_loss.get_ylabel() == "loss (mean cross-entropy)" and ax_acc.get_ylabel() == "accuracy (%)"
    assert ax_loss.get_yscale() == "linear"


def test_overlaid_surfaces_share_the_axes_with_their_own_colours(tmp_path, drawn):
    a = load_surface(make_surface(tmp_path / "a.h5", two_d=False))
    b = load_surface(make_surface(tmp_path / "b.h5", two_d=False, scale=0.5))
    curves.plot_1d([a, b], str(tmp_path / "o.svg"), log=True, labels=["A", "B"], ylim=(0.001, 10.0))
    (fig,) = drawn
    ax_loss = fig.axes[0]
    lines = _lines(ax_loss)
    np.testing.assert_allclose(lines["B train"].get_ydata(), 0.01 + 0.5 * 3 * np.linspace(-1, 1, 9) ** 2)
    assert lines["A train"].get_color() != lines["B train"].get_color()
    assert lines["A train"].get_color() == lines["A test"].get_color()
    assert ax_loss.get_yscale() == "log" and ax_loss.get_ylim() == pytest.approx((0.001, 10.0))
    assert ax_loss.get_ylabel().endswith(", log scale")
    assert fig._suptitle.get_text().startswith("1D loss surfaces: A, B")


def test_a_surface_without_accuracy_gets_the_loss_panel_only(tmp_path, drawn):
    surf = load_surface(make_surface(tmp_path / "r.h5", two_d=False))
    surf["train_acc"] = surf["test_acc"] = None
    surf["attrs"]["loss"] = "mse"
    curves.plot_1d([surf], str(tmp_path / "r.pdf"))
    (fig,) = drawn
    assert len(fig.axes) == 1 and fig.axes[0].get_ylabel() == "loss (mean squared error)"


def test_an_existing_figure_is_kept_without_force(tmp_path):
    surf = load_surface(make_surface(tmp_path / "s.h5", two_d=False))
    target = tmp_path / "s.png"
    target.write_bytes(b"mine")
    with pytest.raises(FlatnessError, match="--force"):
        curves.plot_1d([surf], str(target))
    assert target.read_bytes() == b"mine"
    curves.plot_1d([surf], str(target), force=True)
    check_file(str(target), "png")
