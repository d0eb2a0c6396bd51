"""flatness.plot.figures: every kind of figure in every format, 1-D overlays with shared limits written beside the
inputs, no figure replaced without force, and a probe without a density still plotted."""

import os

import numpy as np
import pytest
from plot_helpers import check_file, make_probe, make_surface

from flatness.core.errors import FlatnessError
from flatness.plot.figures import plot_files
from flatness.plot.loading import load_surface
from flatness.plot.style import common_limits


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_every_kind_in_every_format(tmp_path, fmt):
    s2 = make_surface(tmp_path / "two.h5", pca=True)
    s1 = make_surface(tmp_path / "one.h5", two_d=False)
    pr = make_probe(tmp_path / "probe.json")
    out = tmp_path / "figs"
    written = plot_files([s2, s1, pr], out_dir=str(out), fmt=fmt)
    names = sorted(os.path.basename(p) for p in written)
    assert names == sorted(
        [
            f"one-1d.{fmt}",
            f"two-contour.{fmt}",
            f"two-contourf.{fmt}",
            f"two-heatmap.{fmt}",
            f"two-3d.{fmt}",
            f"probe-spectrum.{fmt}",
        ]
    )
    for p in written:
        check_file(p, fmt)


def test_overlay_log_shared_limits_and_default_folder(tmp_path):
    a = make_surface(tmp_path / "a.h5", two_d=False)
    b = make_surface(tmp_path / "b.h5", two_d=False, scale=0.3, fraction_acc=True)
    written = plot_files([a, b], log=True)
    assert written == [str(tmp_path / "overlay-1d.png")]  # beside the input by default
    check_file(written[0], "png")
    # accuracy stored as fractions is read as percent, like the percent files
    assert np.nanmax(load_surface(b)["train_acc"]) > 1.5
    c = make_surface(tmp_path / "c.h5", scale=1.0)
    d = make_surface(tmp_path / "d.h5", scale=5.0)
    lo, hi = common_limits([load_surface(c), load_surface(d)], "train_loss")
    assert lo == pytest.approx(0.01) and hi == pytest.approx(0.01 + 5 * 4)
    written = plot_files([c, d], kinds="heatmap", vmin=0.01, vmax=3.0)
    assert sorted(os.path.basename(p) for p in written) == ["c-heatmap.png", "d-heatmap.png"]


def test_existing_figures_are_not_replaced_without_force(tmp_path):
    s = make_surface(tmp_path / "s.h5")
    plot_files([s], kinds="contour")
    before = os.path.getmtime(tmp_path / "s-contour.png")
    with pytest.raises(FlatnessError, match="--force"):
        plot_files([s], kinds="contour,heatmap")
    assert not (tmp_path / "s-heatmap.png").exists()  # refused before drawing anything
    plot_files([s], kinds="contour", force=True)
    assert os.path.getmtime(tmp_path / "s-contour.png") >= before


def test_probe_without_density_still_plots_eigenvalues(tmp_path):
    pr = make_probe(tmp_path / "p.json", density=False)
    check_file(plot_files([pr])[0], "png")
