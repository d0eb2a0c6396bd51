"""``flatness.plot.spectra``: the density drawn on a log scale (floored), the top eigenvalues marked."""

from __future__ import annotations

import numpy as np
import pytest
from plot_helpers import check_file, keep_figures, make_probe

from flatness.plot import spectra
from flatness.plot.loading import load_probe


@pytest.fixture
def drawn(monkeypatch):
    return keep_figures(monkeypatch, spectra)


def test_the_density_and_the_eigenvalues_are_drawn(tmp_path, drawn):
    probe = load_probe(make_probe(tmp_path / "p.json", method="sam", seed=3, eig=(40.0, 30.0, 20.0)))
    check_file(spectra.plot_spectrum([probe], str(tmp_path / "p.png")), "png")
    (fig,) = drawn
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    lines = ax.get_lines()
    density = [line for line in lines if line.get_label() == "SAM seed 3 density"]
    assert len(density) == 1
    grid = np.linspace(-5, 50, 200)
    values = np.exp(-((grid / 3) ** 2))  # make_probe's closed form
    floor = max(1e-8, values.max() * 1e-7)  # the smallest drawn: 1e-7 of the peak
    np.testing.assert_allclose(density[0].get_xdata(), grid)
    np.testing.assert_allclose(density[0].get_ydata(), np.maximum(values, floor))
    assert density[0].get_ydata().min() == pytest.approx(1e-7, rel=1e-3)  # the floor is active (peak ~1)
    marks = [line for line in lines if line.get_linestyle() == ":"]
    assert sorted(float(m.get_xdata()[0]) for m in marks) == [20.0, 30.0, 40.0]
    assert [m.get_label() for m in marks if not m.get_label().startswith("_")] == [
        "SAM seed 3 top-3 eigenvalues (λmax = 40)"
    ]


def test_several_probes_get_their_own_colours_and_a_probe_without_density_a_note(tmp_path, drawn):
    a = load_probe(make_probe(tmp_path / "a.json", method="erm", seed=0))
    b = load_probe(make_probe(tmp_path / "b.json", method="amp", seed=0, density=False, eig=(7.0,)))
    spectra.plot_spectrum([a, b], str(tmp_path / "ab.svg"))
    (fig,) = drawn
    (ax,) = fig.axes
    colors = {line.get_label(): line.get_color() for line in ax.get_lines()}
    assert colors["ERM seed 0 density"] != colors["AMP seed 0 top-1 eigenvalues (λmax = 7)"]
    assert "ERM seed 0, AMP seed 0" in ax.get_title()
    spectra.plot_spectrum([b], str(tmp_path / "b.png"))
    assert any("no spectral density" in t.get_text() for t in drawn[-1].axes[0].texts)


def test_density_arrays_and_labels():
    assert spectra.density_arrays({}) is None
    assert spectra.density_arrays({"density": {"grid": [1.0, 2.0], "values": [1.0]}}) is None  # shapes differ
    grid, values = spectra.density_arrays({"density": {"grid": [1, 2], "values": [0.5, 0.25]}})
    assert grid.tolist() == [1.0, 2.0] and values.tolist() == [0.5, 0.25]
    assert spectra.probe_label({"checkpoint": {"method": "amp"}}) == "AMP"
    assert spectra.probe_label({"path": "/x/run-7.json"}) == "run-7"
