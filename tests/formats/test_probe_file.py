"""flatness.formats.probe_file: the probe JSON and its ``.h5`` sidecar, against the module docstring.

A result is written and read back (JSON values, sidecar arrays bit for bit); every damaged or foreign
file is a one-line FlatnessError naming what is wrong.
"""

import json
import math

import h5py
import numpy as np
import pytest
import torch

from flatness.core.errors import FlatnessError
from flatness.formats.probe_file import FORMAT, read_probe, read_probe_arrays, sidecar_path, write_probe


def _result(**changes):
    """A probe result with every required key (values as the probe makes them: numpy, tensors, NaN)."""
    result = {
        "flatness_version": "0.0-test",
        "checkpoint": {"path": "run/last.pt", "sha256": "ab" * 32, "dataset": "digits", "epoch": 3, "seed": 0},
        "data": {"dataset": "digits", "split": "train", "samples": 64, "batch_size": 32},
        "loss": np.float32(0.25),
        "accuracy": torch.tensor(96.875),
        "num_params": np.int64(1234),
        "weight_norm": 3.5,
        "distance_from_init": float("nan"),
        "hessian_params": None,
        "hessian_dim": 1234,
        "hessian": {"method": "lanczos", "eigenvalues": np.array([5.0, 2.5]), "residuals": [1e-7, float("inf")]},
        "trace": None,
        "density": None,
        "sharpness": [{"metric": "worst_case", "value": np.float64(0.125), "converged": np.bool_(True)}],
    }
    result.update(changes)
    return result


def test_sidecar_name_replaces_json_and_is_appended_otherwise():
    assert sidecar_path("out/p.json") == "out/p.h5"
    assert sidecar_path("out/P.JSON") == "out/P.h5"
    assert sidecar_path("out/p.result") == "out/p.result.h5"


def test_json_holds_plain_numbers_and_null_for_every_non_finite_float(tmp_path):
    path = tmp_path / "p.json"
    written = write_probe(str(path), _result())
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text and text.endswith("\n")
    data = json.loads(text)
    assert data == written == read_probe(str(path))
    assert data["format"] == FORMAT and data["sidecar"] is None
    assert data["loss"] == 0.25 and data["accuracy"] == 96.875 and data["num_params"] == 1234
    assert type(data["num_params"]) is int and data["distance_from_init"] is None
    assert data["hessian"]["eigenvalues"] == [5.0, 2.5] and data["hessian"]["residuals"] == [1e-7, None]
    assert data["sharpness"] == [{"metric": "worst_case", "value": 0.125, "converged": True}]


def test_vectors_and_density_go_to_the_sidecar_only_and_come_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2, 7))
    density = {"nodes": rng.standard_normal((3, 4)), "weights": rng.random((3, 4)), "grid": np.linspace(0, 1, 5)}
    path = tmp_path / "p.json"
    write_probe(str(path), _result(eigenvectors=vectors, density_arrays=density))
    data = json.loads(path.read_text())
    assert "eigenvectors" not in data and "density_arrays" not in data
    assert data["sidecar"] == "p.h5"
    arrays = read_probe_arrays(str(path))
    assert set(arrays) == {"eigenvectors", "eigenvalues", "density/nodes", "density/weights", "density/grid"}
    assert arrays["eigenvectors"].dtype == np.float32
    assert np.array_equal(arrays["eigenvectors"], vectors.astype(np.float32))
    assert arrays["eigenvalues"].dtype == np.float64 and arrays["eigenvalues"].tolist() == [5.0, 2.5]
    for key, value in density.items():
        assert np.array_equal(arrays[f"density/{key}"], value)
    with h5py.File(tmp_path / "p.h5", "r") as h5:
        assert h5.attrs["format"] == FORMAT + "-sidecar" and h5.attrs["flatness_version"] == "0.0-test"


def test_an_existing_probe_or_sidecar_is_kept_unless_forced(tmp_path):
    path = tmp_path / "p.json"
    write_probe(str(path), _result())
    before = path.read_bytes()
    with pytest.raises(FlatnessError, match="p.json exists; pass --force to overwrite it"):
        write_probe(str(path), _result(loss=1.0))
    assert path.read_bytes() == before
    write_probe(str(path), _result(loss=1.0), force=True)
    assert read_probe(str(path))["loss"] == 1.0
    (tmp_path / "q.h5").write_bytes(b"someone's file")
    with pytest.raises(FlatnessError, match="q.h5 exists; pass --force"):
        write_probe(str(tmp_path / "q.json"), _result(eigenvectors=np.zeros((1, 3))))
    assert not (tmp_path / "q.json").exists() and (tmp_path / "q.h5").read_bytes() == b"someone's file"


def test_writing_into_a_missing_folder_or_unserialisable_values_is_refused(tmp_path):
    with pytest.raises(FlatnessError, match="folder .*nowhere does not exist"):
        write_probe(str(tmp_path / "nowhere" / "p.json"), _result())
    with pytest.raises(ValueError, match="probe result is not JSON-serialisable"):
        write_probe(str(tmp_path / "p.json"), _result(extra=object()))
    assert not (tmp_path / "p.json").exists()


def _written(tmp_path, **changes):
    data = json.loads(json.dumps({"format": FORMAT, **write_probe(str(tmp_path / "ok.json"), _result())}))
    data.update(changes)
    path = tmp_path / "p.json"
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not ...}))
    return str(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "flatness-surface"}, "is not a flatness probe file"),
        ({"loss": ...}, "'loss' is missing"),
        ({"sidecar": ...}, "'sidecar' is missing"),
        ({"checkpoint": "run/last.pt"}, "'checkpoint' is not an object"),
        ({"hessian": {"method": "lanczos"}}, "'hessian.eigenvalues' is missing"),
        ({"hessian": {"eigenvalues": [1.0, "2"]}}, "'hessian.eigenvalues' holds '2', not a number"),
        ({"hessian": {"eigenvalues": [1.0], "residuals": [True]}}, "'hessian.residuals' holds True"),
        ({"accuracy": True}, "'accuracy' holds True, not a number"),
        ({"trace": [1.0]}, "'trace' is not an object"),
        ({"density": {"nodes": 3}}, "'density.nodes' is not a list"),
        ({"density": {"grid": [0.0, None, "x"]}}, "'density.grid' holds 'x'"),
        ({"sharpness": {"metric": "x"}}, "'sharpness' is not a list of objects"),
        ({"sidecar": "../elsewhere.h5"}, "'sidecar' must be a file name beside it"),
        ({"sidecar": "sub/p.h5"}, "'sidecar' must be a file name beside it"),
        ({"sidecar": ".."}, "'sidecar' must be a file name beside it"),
        ({"sidecar": 3}, "'sidecar' must be a file name beside it"),
    ],
)
def test_a_damaged_probe_file_names_the_key_at_fault(tmp_path, changes, message):
    path = _written(tmp_path, **changes)
    with pytest.raises(FlatnessError, match=message) as err:
        read_probe(path)
    assert str(err.value).startswith(path) and "\n" not in str(err.value)


def test_a_file_without_format_marker_is_read_as_a_probe(tmp_path):
    path = _written(tmp_path, format=...)  # files of earlier versions have no marker
    assert "format" not in json.loads(open(path).read())
    assert read_probe(path)["hessian"]["eigenvalues"] == [5.0, 2.5]


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "probe file not found: "), (b'{"loss": 0.2', "is not a readable probe file"), (b"\xff\xfe", "readable")],
    ids=["missing", "truncated", "not-utf8"],
)
def test_missing_or_unreadable_probe_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "p.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(FlatnessError, match=message):
        read_probe(str(path))


def test_sidecar_problems_are_one_line_errors(tmp_path):
    path = tmp_path / "p.json"
    write_probe(str(path), _result())
    with pytest.raises(FlatnessError, match=r"has no sidecar; rerun `flatness probe --save-vectors`"):
        read_probe_arrays(str(path))
    write_probe(str(path), _result(eigenvectors=np.ones((1, 2))), force=True)
    (tmp_path / "p.h5").write_bytes(b"not hdf5")
    with pytest.raises(FlatnessError, match="cannot read the sidecar .*p.h5"):
        read_probe_arrays(str(path))
    (tmp_path / "p.h5").unlink()
    with pytest.raises(FlatnessError, match=r"the sidecar .*p.h5 of .*p.json is missing"):
        read_probe_arrays(str(path))


def test_non_finite_eigenvalues_stay_null_in_json_but_exact_in_the_sidecar(tmp_path):
    path = tmp_path / "p.json"
    hessian = {"method": "power", "eigenvalues": [float("nan"), 1.5]}
    write_probe(str(path), _result(hessian=hessian), vectors=np.eye(2))
    assert read_probe(str(path))["hessian"]["eigenvalues"] == [None, 1.5]
    stored = read_probe_arrays(str(path))["eigenvalues"]
    assert math.isnan(stored[0]) and stored[1] == 1.5
