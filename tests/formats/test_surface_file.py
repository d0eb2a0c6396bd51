"""flatness.formats.surface_file: the surface HDF5 layout, against the module docstring.

Files are written by ``create_surface`` and ``SurfaceFile`` and read back by ``read_surface`` (values,
coordinates, attributes, directions, PCA extras); files of the older "ij" layout and of loss-landscape
itself are made here with h5py and must read in (ny, nx) order. Every refusal is one line.
"""

import os

import h5py
import numpy as np
import pytest
import torch

from flatness.core.errors import FlatnessError
from flatness.formats.surface_file import (
    FORMAT,
    FORMAT_VERSION,
    SurfaceFile,
    check_matches,
    check_shapes,
    create_surface,
    file_layout,
    read_directions,
    read_surface,
)

X = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])  # nx = 5
Y = np.array([-0.25, 0.0, 0.25])  # ny = 3


def _grid(offset=0.0):
    """Values whose [j, i] says where they are: 10 * x_i + y_j (+ offset)."""
    return 10 * X[None, :] + Y[:, None] + offset


def _direction(seed):
    g = torch.Generator().manual_seed(seed)
    # names deliberately out of alphabetical order: the stored order must be kept
    return {"net.3.weight": torch.randn(3, 5, generator=g), "net.1.bias": torch.randn(5, generator=g)}


def _create(path, y=Y, accuracy=True, **kwargs):
    options = {
        "xcoordinates": X,
        "ycoordinates": y,
        "splits": ("train", "test"),
        "directions": [_direction(1), _direction(2)] if y is not None else [_direction(1)],
        "attrs": {"checkpoint": "run/last.pt", "flatness_version": "0.0-test", "model_args": None, "seed": 3},
        "accuracy": accuracy,
    }
    create_surface(str(path), **{**options, **kwargs})
    return str(path)


def test_a_new_surface_is_complete_with_nan_values_and_its_attributes(tmp_path):
    pca = {"explained_variance_ratio": [0.7, 0.2], "coordinates": [[0.0, 1.0], [2.0, 3.0]], "epochs": [1, 2]}
    path = _create(tmp_path / "s.h5", pca={**pca, "reference": "run/last.pt"})
    out = read_surface(path)
    assert np.array_equal(out["xcoordinates"], X) and np.array_equal(out["ycoordinates"], Y)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert out[key].shape == (3, 5) and np.isnan(out[key]).all(), key
    assert out["computed"].shape == (3, 5) and out["computed"].dtype == bool and not out["computed"].any()
    attrs = out["attrs"]
    assert (attrs["format"], attrs["format_version"], attrs["layout"]) == (FORMAT, FORMAT_VERSION, "xy")
    assert (attrs["missing"], attrs["accuracy_unit"], attrs["seconds"]) == ("nan", "percent", 0.0)
    assert attrs["checkpoint"] == "run/last.pt" and attrs["model_args"] == "" and attrs["seed"] == 3
    assert out["pca"]["explained_variance_ratio"].tolist() == [0.7, 0.2]
    assert out["pca"]["coordinates"].tolist() == [[0.0, 1.0], [2.0, 3.0]]
    assert out["pca"]["epochs"].tolist() == [1, 2] and out["pca"]["reference"] == "run/last.pt"
    assert os.listdir(tmp_path) == ["s.h5"]  # built under a temporary name, renamed into place


def test_attributes_keep_their_kinds(tmp_path):
    attrs = {"flatness_version": "0", "orthogonal": True, "eigenvalues": [3.5, 1.25], "x_num": 5, "norm": "filter"}
    out = read_surface(_create(tmp_path / "s.h5", attrs=attrs))["attrs"]
    assert out["orthogonal"] is True and out["eigenvalues"] == [3.5, 1.25]
    assert out["x_num"] == 5 and type(out["x_num"]) is int and out["norm"] == "filter"


def test_directions_round_trip_as_float32_in_their_own_order(tmp_path):
    path = _create(tmp_path / "s.h5")
    directions = read_directions(path)
    assert len(directions) == 2
    for stored, made in zip(directions, (_direction(1), _direction(2))):
        assert list(stored) == list(made)
        for name in made:
            assert stored[name].dtype == torch.float32 and torch.equal(stored[name], made[name])
    with SurfaceFile(path) as surface:
        assert [list(d) for d in surface.directions] == [list(_direction(1))] * 2


def test_a_loss_only_1d_surface_has_no_accuracy_and_no_y(tmp_path):
    path = _create(tmp_path / "s.h5", y=None, accuracy=False)
    out = read_surface(path)
    assert "ycoordinates" not in out and "train_acc" not in out and "test_acc" not in out
    assert out["train_loss"].shape == (5,) and "accuracy_unit" not in out["attrs"]
    assert len(read_directions(path)) == 1


def test_written_chunks_land_at_x_i_y_j_and_the_file_is_stored_ny_by_nx(tmp_path):
    path = _create(tmp_path / "s.h5")
    computed = np.zeros((3, 5), dtype=np.uint8)
    computed[1, :] = 1
    values = {"train_loss": _grid(), "test_acc": _grid(100.0)}
    with SurfaceFile(path) as surface:
        surface.make_writable()
        surface.write(values, computed, seconds=2.5)
    out = read_surface(path)
    assert np.array_equal(out["train_loss"], _grid()) and np.array_equal(out["test_acc"], _grid(100.0))
    assert out["train_loss"][2, 0] == 10 * X[0] + Y[2]  # [j, i] at (x_i, y_j)
    assert out["computed"].tolist() == (computed == 1).tolist() and out["attrs"]["seconds"] == 2.5
    with h5py.File(path, "r") as f:
        assert f["train_loss"].shape == (3, 5) and np.array_equal(f["train_loss"][()], _grid())


def _raw_file(path, attrs, values):
    with h5py.File(path, "w") as f:
        f.create_dataset("xcoordinates", data=X)
        f.create_dataset("ycoordinates", data=Y)
        for key, value in values.items():
            f.create_dataset(key, data=value)
        f.create_group("directions")
        for key, value in attrs.items():
            f.attrs[key] = value
    return str(path)


def test_an_old_ij_file_reads_transposed_and_is_written_back_in_its_own_layout(tmp_path):
    attrs = {"format": FORMAT, "format_version": 1, "flatness_version": "0.1", "layout": "ij"}
    ij = {"train_loss": _grid().T, "computed": np.ones((5, 3), dtype=np.uint8)}
    path = _raw_file(tmp_path / "old.h5", attrs, ij)
    assert np.array_equal(read_surface(path)["train_loss"], _grid())
    with SurfaceFile(path) as surface:
        assert surface.layout == "ij" and np.array_equal(surface.values["train_loss"], _grid())
        surface.make_writable()
        surface.write({"train_loss": _grid(1.0)}, np.ones((3, 5), dtype=np.uint8), seconds=1.0)
    with h5py.File(path, "r") as f:
        assert f["train_loss"].shape == (5, 3) and np.array_equal(f["train_loss"][()], _grid(1.0).T)
    # no layout attribute but a flatness_version: an older flatness file, also "ij"
    del attrs["layout"]
    assert np.array_equal(read_surface(_raw_file(tmp_path / "older.h5", attrs, ij))["train_loss"], _grid())


def test_a_loss_landscape_file_reads_its_meshgrid_buffer_as_ny_by_nx(tmp_path):
    # loss-landscape declares (nx, ny) but fills it through ravel() in np.meshgrid(x, y) order
    buffer = _grid().ravel().reshape(5, 3)
    path = _raw_file(tmp_path / "ll.h5", {}, {"train_loss": buffer})
    assert file_layout({}) == "meshgrid-buffer"
    assert np.array_equal(read_surface(path)["train_loss"], _grid())


def test_an_unknown_layout_is_refused():
    with pytest.raises(FlatnessError, match="unknown surface layout 'yx' \\(expected 'xy' or 'ij'\\)"):
        file_layout({"layout": "yx", "flatness_version": "1"})


def test_shape_checks_name_the_array_that_does_not_fit():
    check_shapes("s.h5", X, Y, {"train_loss": np.zeros((3, 5))})
    with pytest.raises(FlatnessError, match=r"s.h5: train_loss has shape \(3, 5\), which does not fit a 1D surface"):
        check_shapes("s.h5", X, None, {"train_loss": np.zeros((3, 5))})
    with pytest.raises(
        FlatnessError, match=r"computed has shape \(5, 3\), which does not fit its coordinates \(3, 5\)"
    ):
        check_shapes("s.h5", X, Y, {"train_loss": np.zeros((3, 5)), "computed": np.zeros((5, 3))})
    with pytest.raises(FlatnessError, match="its coordinates are not 1-D arrays"):
        check_shapes("s.h5", X[None, :], Y, {})


def test_a_surface_whose_arrays_do_not_fit_its_coordinates_is_refused_by_both_readers(tmp_path):
    attrs = {"format": FORMAT, "format_version": 1, "flatness_version": "1", "layout": "xy"}
    path = _raw_file(tmp_path / "bad.h5", attrs, {"train_loss": np.zeros((3, 4)), "computed": np.zeros((3, 5))})
    with pytest.raises(FlatnessError, match=r"train_loss has shape \(3, 4\)"):
        read_surface(path)
    with pytest.raises(FlatnessError, match=r"train_loss has shape \(3, 4\)"):
        SurfaceFile(path)


@pytest.mark.parametrize(
    ("attrs", "values", "message"),
    [
        ({"format": "other"}, {}, f"is not a flatness surface file \\(no '{FORMAT}' marker\\)"),
        ({"format": FORMAT, "format_version": FORMAT_VERSION + 1}, {}, "was written by a newer flatness; upgrade"),
        ({"format": FORMAT, "format_version": 1, "layout": "xy"}, {}, r"is a damaged surface file \(KeyError"),
    ],
    ids=["foreign", "newer", "no-computed"],
)
def test_surface_file_refuses_what_it_cannot_resume_and_leaves_it_untouched(tmp_path, attrs, values, message):
    path = _raw_file(tmp_path / "s.h5", attrs, values)
    before, mtime = open(path, "rb").read(), os.stat(path).st_mtime_ns
    with pytest.raises(FlatnessError, match=message):
        SurfaceFile(path)
    assert open(path, "rb").read() == before and os.stat(path).st_mtime_ns == mtime


def test_unreadable_files_are_one_line_errors(tmp_path):
    (tmp_path / "junk.h5").write_bytes(b"not an hdf5 file")
    with pytest.raises(FlatnessError, match="cannot be opened as a surface file .*move it away, or rerun with --force"):
        SurfaceFile(str(tmp_path / "junk.h5"))
    with pytest.raises(FlatnessError, match="junk.h5 is not a readable surface file"):
        read_surface(str(tmp_path / "junk.h5"))
    with pytest.raises(FlatnessError, match="surface file not found: "):
        read_surface(str(tmp_path / "none.h5"))
    with pytest.raises(FlatnessError, match=r"junk.h5 holds no readable directions \(OSError\)"):
        read_directions(str(tmp_path / "junk.h5"))


def test_resume_checks_compare_numbers_as_numbers_and_name_the_difference():
    stored = {"x_min": -1.0, "samples": 64, "norm": "filter", "checkpoint_sha256": "a" * 64, "model_args": ""}
    same = {"x_min": "-1", "samples": 64, "norm": "filter", "checkpoint_sha256": "a" * 64, "model_args": None}
    check_matches(stored, same, "s.h5", list(stored))
    with pytest.raises(FlatnessError, match=r"s.h5 was made for another norm \(norm filter in the file, layer asked"):
        check_matches(stored, {"norm": "layer"}, "s.h5", ["norm"])
    with pytest.raises(FlatnessError, match=r"another checkpoint \(checkpoint_sha256 aaaaaaaaaaaa… in the file, bbbb"):
        check_matches(stored, {"checkpoint_sha256": "b" * 64}, "s.h5", ["checkpoint_sha256"])
    # files from before precision was recorded were all fp32
    check_matches({}, {"precision": "fp32"}, "s.h5", ["precision"])
    with pytest.raises(FlatnessError, match="precision fp32 in the file, bf16 asked for"):
        check_matches({}, {"precision": "bf16"}, "s.h5", ["precision"])
