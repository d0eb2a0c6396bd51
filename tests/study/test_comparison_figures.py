"""``flatness.study.comparison_figures``: which runs each figure shows, and the mean ± std curves over seeds."""

from __future__ import annotations

import os

import numpy as np
import pytest
from plot_helpers import check_file, keep_figures, make_probe, make_surface

from flatness.plot.loading import load_probe
from flatness.study import comparison_figures as cf
from flatness.study.run_record import RunRecord


@pytest.fixture
def drawn(monkeypatch):
    return keep_figures(monkeypatch, cf)


def _epochs(losses, accs):
    return [{"epoch": e, "train_loss": lo, "test_loss": lo + 0.1, "train_acc": a, "test_acc": a - 0.05}
            for e, (lo, a) in enumerate(zip(losses, accs), 1)]  # fmt: skip


RUNS = [
    RunRecord("e0", "erm", 0, epochs=_epochs([1.0, 0.5, 0.2], [0.5, 0.7, 0.9])),
    RunRecord("e1", "erm", 1, epochs=_epochs([1.2, 0.7, 0.4, 0.1], [0.4, 0.6, 0.8, 0.95])),  # one epoch longer
    RunRecord("a0", "amp", 0, epochs=_epochs([0.9, 0.3, 0.1], [0.6, 0.8, 0.9])),
    RunRecord("p", "sam", 0),  # no training log: left out
]


def test_the_training_curves_are_the_mean_and_std_over_seeds(tmp_path, drawn):
    check_file(cf.figure_training(RUNS, str(tmp_path / "t.png")), "png")
    (fig,) = drawn
    ax_loss, ax_acc = fig.axes[:2]
    lines = {line.get_label(): line for line in ax_loss.get_lines()}
    assert set(lines) == {"ERM train (n=2)", "ERM test (n=2)", "AMP train (n=1)", "AMP test (n=1)"}
    erm = np.array([[1.0, 0.5, 0.2], [1.2, 0.7, 0.4]])  # cut to the shortest run's 3 epochs
    np.testing.assert_allclose(lines["ERM train (n=2)"].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(lines["ERM train (n=2)"].get_ydata(), erm.mean(0))
    np.testing.assert_allclose(lines["ERM test (n=2)"].get_ydata(), erm.mean(0) + 0.1)
    acc = {line.get_label(): line for line in ax_acc.get_lines()}
    np.testing.assert_allclose(acc["AMP train (n=1)"].get_ydata(), [60.0, 80.0, 90.0])  # percent
    # the band is ±1 sample std (ddof 1): its upper edge, from the filled polygon
    band = ax_loss.collections[0].get_paths()[0].vertices
    top = erm.mean(0) + erm.std(0, ddof=1)
    for x, y in zip([1, 2, 3], top):
        assert np.isclose(band[:, 1][np.isclose(band[:, 0], x)], y).any()
    assert ax_loss.get_yscale() == "log"


def test_which_runs_each_figure_shows(tmp_path, drawn, monkeypatch):
    shown = {}
    real_spectrum, real_1d = cf.plot_spectrum, cf.plot_1d
    monkeypatch.setattr(
        cf,
        "plot_spectrum",
        lambda probes, path, **kw: shown.setdefault("spectra", probes) and real_spectrum(probes, path, **kw),
    )
    monkeypatch.setattr(
        cf, "plot_1d", lambda surfs, path, **kw: shown.setdefault("slices", kw["labels"]) and real_1d(surfs, path, **kw)
    )
    for seed in (1, 0):  # the lowest seed's files are shown, whatever the order given
        make_probe(tmp_path / f"erm{seed}.json", method="erm", seed=seed, eig=(10.0 + seed,))
    make_probe(tmp_path / "amp0.json", method="amp", seed=0, eig=(3.0,), density=False)
    s1 = make_surface(tmp_path / "s1.h5", two_d=False)
    s2 = make_surface(tmp_path / "s2.h5", two_d=True, scale=2.0)
    records = [
        RunRecord("e1", "erm", 1, probe=load_probe(str(tmp_path / "erm1.json")), surfaces=[s1]),
        RunRecord("e0", "erm", 0, probe=load_probe(str(tmp_path / "erm0.json")), surfaces=[s1, s2]),
        RunRecord("a0", "amp", 0, probe=load_probe(str(tmp_path / "amp0.json")), surfaces=[s2]),
    ]
    written = cf.compare_figures(records, str(tmp_path / "out"), fmt="svg", prefix="c")
    assert sorted(written) == ["contours-2d", "slices-1d", "spectra"]  # no training log: no training figure
    assert all(os.path.basename(p) == f"c-{k}.svg" for k, p in written.items())
    for p in written.values():
        check_file(p, "svg")
    assert [p["hessian"]["eigenvalues"] for p in shown["spectra"]] == [[10.0], [3.0]]  # ERM seed 0, then AMP
    assert shown["slices"] == ["ERM seed 0"]
    (contours,) = drawn  # the only figure saved here directly; the others through flatness.plot
    assert [ax.get_title() for ax in contours.axes[:2]] == ["ERM seed 0", "AMP seed 0"]
    assert cf.figure_slices(records[2:], str(tmp_path / "none.png")) is None  # AMP has no 1D surface
    assert cf.figure_spectra([RunRecord("x", "erm", 0)], str(tmp_path / "none.png")) is None
