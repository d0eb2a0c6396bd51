"""``flatness.plot.loading``: what kind of input a path is, and surfaces and probes read for drawing."""

from __future__ import annotations

import numpy as np
import pytest
from plot_helpers import make_probe, make_surface

from flatness.core.errors import FlatnessError
from flatness.plot.loading import file_type, load_probe, load_surface


def test_file_types(tmp_path):
    assert file_type(make_surface(tmp_path / "s.h5")) == "surface"
    assert file_type(make_probe(tmp_path / "p.JSON")) == "probe"
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    assert file_type(str(run)) == "run"
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    for name, says in [
        ("missing.h5", "file not found"),
        ("empty", "is a folder without metrics.jsonl"),
        ("notes.txt", "unknown file type '.txt'"),
    ]:
        with pytest.raises(FlatnessError, match=says):
            file_type(str(tmp_path / name))


def test_accuracy_in_fractions_is_read_as_percent(tmp_path):
    percent = load_surface(make_surface(tmp_path / "a.h5", two_d=False))
    fraction = load_surface(make_surface(tmp_path / "b.h5", two_d=False, fraction_acc=True))
    x = np.linspace(-1, 1, 9)
    expected = np.clip(1 - 0.1 * (0.01 + 3 * x**2), 0, 1) * 100
    np.testing.assert_allclose(percent["train_acc"], expected)
    np.testing.assert_allclose(fraction["train_acc"], expected)
    np.testing.assert_allclose(fraction["test_acc"], expected * 0.97)
    np.testing.assert_allclose(fraction["train_loss"], 0.01 + 3 * x**2)  # losses untouched
    assert fraction["path"] == str(tmp_path / "b.h5") and fraction["pca"] is None


def test_a_probe_is_read_with_its_path(tmp_path):
    path = make_probe(tmp_path / "p.json", eig=(3.0, 2.0))
    probe = load_probe(path)
    assert probe["path"] == path and probe["hessian"]["eigenvalues"] == [3.0, 2.0]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(FlatnessError):
        load_probe(str(tmp_path / "bad.json"))
