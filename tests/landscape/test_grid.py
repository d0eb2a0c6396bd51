"""flatness.landscape.grid: grid specs, coordinates, direction specs and the default file name.

(``coarse_to_fine_order`` is tested in landscape/test_compute.py, to be moved here.)
"""

import os

import numpy as np
import pytest
import torch

from flatness.core.errors import FlatnessError
from flatness.landscape.grid import (
    MAX_AXIS_POINTS,
    axis_coordinates,
    default_surface_path,
    grid_coordinates,
    parse_direction,
    parse_grid,
)


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        (" -1:1:21 ", (-1.0, 1.0, 21)),
        ("0:2.5:2", (0.0, 2.5, 2)),
        ((-0.5, 0.5, 3.0), (-0.5, 0.5, 3)),
        ("-1e3:1e3:5", (-1000.0, 1000.0, 5)),
    ],
)
def test_grid_specs_parse_to_numbers(spec, parsed):
    lo, hi, n = parse_grid(spec)
    assert (lo, hi, n) == parsed and type(n) is int


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("-1:1", r"--y must be MIN:MAX:N \(e.g. -1:1:21\), got '-1:1'"),
        ((-1, 1), r"y grid must be \(min, max, n\)"),
        ("a:1:3", "--y must be MIN:MAX:N with numbers"),
        ("-inf:1:3", "--y: MIN and MAX must be finite numbers"),
        ("nan:1:3", "--y: MIN and MAX must be finite numbers"),
        ("-1:1:2.5", "--y: N must be a whole number of points, got '2.5'"),
        ("-1:1:1", "--y: N must be at least 2 points, got 1"),
        (f"-1:1:{MAX_AXIS_POINTS + 1}", f"--y: N must be at most {MAX_AXIS_POINTS} points"),
        ("1:1:3", "--y: MIN must be below MAX, got 1 >= 1"),
        ("1e39:2e39:3", r"--y: MIN and MAX must lie within ±3.4e\+38 \(float32 weights\)"),
    ],
)
def test_bad_grid_specs_are_one_line_naming_the_axis(spec, message):
    with pytest.raises(FlatnessError, match=message):
        parse_grid(spec, "y")


def test_coordinates_are_linspace_with_the_centre_exactly_zero():
    assert np.linspace(-0.3, 0.1, 5)[3] != 0.0  # about 5.6e-17: linspace misses the centre
    coords = grid_coordinates(-0.3, 0.1, 5)
    assert coords.dtype == np.float64 and coords[3] == 0.0
    expected = np.linspace(-0.3, 0.1, 5)
    expected[3] = 0.0
    assert np.array_equal(coords, expected)
    assert grid_coordinates(0.0, 1.0, 3).tolist() == [0.0, 0.5, 1.0]


def test_axis_coordinates_take_a_spec_or_an_array_as_given():
    assert axis_coordinates("-1:1:5").tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert axis_coordinates((0, 1, 3)).tolist() == [0.0, 0.5, 1.0]
    given = [0.3, -2.0, 0.1]  # used as given: not sorted, not checked for spacing
    assert axis_coordinates(given).tolist() == given
    tensor = torch.tensor([1.5, 2.5], dtype=torch.float32)
    assert axis_coordinates(tensor).dtype == np.float64 and axis_coordinates(tensor).tolist() == [1.5, 2.5]
    array = np.array([1.0, 2.0])
    copy = axis_coordinates(array)
    copy[0] = 9.0
    assert array[0] == 1.0  # a copy: the caller's array is not changed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ([], r"x coordinates must be a non-empty 1-D array, got shape \(0,\)"),
        ([[0.0, 1.0]], r"got shape \(1, 2\)"),
        ([0.0, float("nan")], "x coordinates must be finite numbers"),
        (["a", "b"], "x must be 'MIN:MAX:N', \\(min, max, n\\) or an array of coordinates, got list"),
        (np.zeros(MAX_AXIS_POINTS + 1), f"x: at most {MAX_AXIS_POINTS} points"),
    ],
)
def test_bad_coordinate_arrays_are_refused(spec, message):
    with pytest.raises(FlatnessError, match=message):
        axis_coordinates(spec)


def test_direction_specs_split_into_kind_and_source():
    assert parse_direction(" Random ") == ("random", None) and parse_direction("eigen") == ("eigen", None)
    assert parse_direction("interp:runs/b/last.pt") == ("interp", "runs/b/last.pt")
    assert parse_direction("pca:C:/runs/a") == ("pca", "C:/runs/a")  # only the first colon splits
    for spec, message in [
        ("hessian", "unknown direction 'hessian'; use random, eigen, interp:CKPT_B or pca:RUN_DIR"),
        ("", "unknown direction ''"),
        ("interp", "--dir interp needs a path: interp:CKPT_B"),
        ("pca:", "--dir pca needs a path: pca:RUN_DIR"),
        ("eigen:x.pt", "--dir eigen takes no path, got 'eigen:x.pt'"),
    ]:
        with pytest.raises(FlatnessError, match=message):
            parse_direction(spec)


def test_the_default_surface_name_says_what_makes_two_surfaces_differ(tmp_path):
    ckpt = str(tmp_path / "run" / "last.pt")
    x, y = (-1.0, 1.0, 21), (-0.5, 0.5, 11)
    name = default_surface_path(ckpt, "random", None, "filter", 0, x, y, "train", "eval")
    assert name == os.path.join(str(tmp_path / "run"), "last.surface-random-filter-s0-x-1_1_21-y-0.5_0.5_11-train.h5")
    one_d = default_surface_path(ckpt, "interp", "other/run/b.pt", "filter", 0, x, None, "both", "recalibrate")
    assert os.path.basename(one_d) == "last.surface-interp-b-x-1_1_21-both-bnrecal.h5"
    assert os.path.basename(default_surface_path(ckpt, "pca", "runs/a/", "layer", 5, x, None, "test", "eval")) == (
        "last.surface-pca-x-1_1_21-test.h5"
    )
    assert os.path.basename(default_surface_path(ckpt, "eigen", None, "layer", 5, x, None, "test", "eval")) == (
        "last.surface-eigen-x-1_1_21-test.h5"
    )
    names = {
        default_surface_path(ckpt, "random", None, norm, seed, x, None, "train", "eval")
        for norm in ("filter", "layer")
        for seed in (0, 1)
    }
    assert len(names) == 4  # seed and normalisation each change the name
