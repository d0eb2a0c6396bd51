"""``flatness.study.runs``: reading run folders and probe files into runs, and refusing runs that do not pool."""

from __future__ import annotations

import json
import os

import pytest
from plot_helpers import make_probe, make_surface

from flatness.core.errors import FlatnessError
from flatness.study.run_record import RunRecord
from flatness.study.runs import (
    check_poolable,
    collect_runs,
    in_method_order,
    load_probe_file,
    load_run_dir,
    sorted_methods,
)


def _run_folder(path, method="erm", seed=0, epochs=3, test_acc=0.9, probe=True, **config):
    os.makedirs(path, exist_ok=True)
    values = {"method": method, "seed": seed, "epochs": epochs, "lr": 0.1, **config}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(values, f)
    with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for e in range(1, epochs + 1):
            f.write(json.dumps({"epoch": e, "test_acc": test_acc - 0.1 * (epochs - e), "train_acc": 0.95}) + "\n")
    if probe:
        make_probe(os.path.join(path, "probe.json"), method=method, seed=seed, eig=(8.0 + seed, 4.0, 2.0, 1.0, 0.5))
    return str(path)


def test_method_order():
    assert sorted_methods(["sam", "zeta", "erm", "amp", "sam", "alpha"]) == ["erm", "amp", "sam", "alpha", "zeta"]
    assert in_method_order(["zeta", "sam", "alpha", "erm"]) == ["erm", "sam", "zeta", "alpha"]


def test_a_run_folder_is_read_whole(tmp_path):
    folder = _run_folder(tmp_path / "amp-s2", method="AMP ", seed=2, test_acc=0.8)
    make_surface(tmp_path / "amp-s2" / "surface.h5")
    (tmp_path / "amp-s2" / "notes.h5").write_bytes(b"not hdf5")
    rec = load_run_dir(folder)
    assert (rec.method, rec.seed, rec.run_dir, rec.label) == ("amp", 2, folder, "AMP seed 2")
    assert [e["epoch"] for e in rec.epochs] == [1, 2, 3]
    assert rec.probe_path == os.path.join(folder, "probe.json") and rec.probe["hessian"]["eigenvalues"][0] == 10.0
    assert rec.surfaces == [os.path.join(folder, "surface.h5")]


def test_a_probe_file_finds_its_training_log(tmp_path):
    folder = _run_folder(tmp_path / "run", probe=False, seed=4)
    outside = make_probe(tmp_path / "p.json", method="sam", seed=4)
    with open(outside) as f:
        probe = json.load(f)
    probe["checkpoint"]["path"] = os.path.join(folder, "last.pt")
    with open(outside, "w") as f:
        json.dump(probe, f)
    rec = load_probe_file(outside)
    assert (rec.method, rec.seed, rec.run_dir) == ("sam", 4, folder)
    assert len(rec.epochs) == 3 and rec.config["lr"] == 0.1
    alone = load_probe_file(make_probe(tmp_path / "alone.json", method="erm", seed=1))
    assert alone.run_dir is None and alone.epochs == [] and alone.config == {}


def test_collect_fills_the_values(tmp_path):
    a = _run_folder(tmp_path / "erm-0", seed=0, test_acc=0.9)
    b = _run_folder(tmp_path / "erm-1", seed=1, test_acc=0.7)
    surface = make_surface(tmp_path / "s.h5")
    records, surfaces = collect_runs([a, b, surface])
    assert surfaces == [surface]
    assert [r.values["test_acc"] for r in records] == pytest.approx([90.0, 70.0])  # the last epoch, in percent
    assert [r.values["lambda_1"] for r in records] == [8.0, 9.0]


@pytest.mark.parametrize(
    ("inputs", "says"),
    [
        ([], "no inputs"),
        (["missing"], "not found: "),
        (["notes.txt"], "unknown input type '.txt'"),
        (["empty"], "is not a run folder (no config.json) and holds no probe JSON"),
        (["a", "a"], "the same run (ERM seed 0) is given twice"),
        (["a", "copy"], "are both ERM seed 0: one seed counts once"),
        (["a", "longer"], "differ in epochs (3 vs 5)"),
    ],
)
def test_refusals(tmp_path, inputs, says):
    _run_folder(tmp_path / "a")
    _run_folder(tmp_path / "copy")
    _run_folder(tmp_path / "longer", seed=1, epochs=5)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FlatnessError) as err:
        collect_runs([str(tmp_path / name) for name in inputs])
    assert says in str(err.value) and "\n" not in str(err.value)


def test_seeds_may_differ_in_where_they_ran_not_in_how():
    base = {"method": "erm", "epochs": 3, "lr": 0.1}
    runs = [RunRecord(f"r{s}", "erm", s, config={**base, "seed": s, "device": d}) for s, d in ((0, "cpu"), (1, "cuda"))]
    check_poolable(runs)  # seed and device are poolable differences
    runs.append(RunRecord("r2", "erm", 2, config={**base, "seed": 2, "lr": 0.2}))
    with pytest.raises(FlatnessError, match=r"differ in lr \(0.1 vs 0.2\)"):
        check_poolable(runs)
    check_poolable([RunRecord("x", "amp", 0, config={**base, "lr": 0.5}), runs[0]])  # other methods: other settings
