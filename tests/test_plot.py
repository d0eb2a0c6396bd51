"""flatness plot: figures of every kind from synthetic surface files and probe JSONs, VTP export, bad input."""

import json
import os
import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest

from flatness.core.errors import FlatnessError
from flatness.plot.figures import plot_files
from flatness.plot.loading import load_surface
from flatness.plot.style import common_limits
from flatness.plot.vtp import write_vtp

MAGIC = {"png": b"\x89PNG", "pdf": b"%PDF", "svg": b"<?xml"}


def make_surface(path, two_d=True, scale=1.0, nx=9, ny=7, pca=False, fraction_acc=False):
    x = np.linspace(-1, 1, nx)
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = x
        if two_d:
            y = np.linspace(-1, 1, ny)
            f["ycoordinates"] = y
            X, Y = np.meshgrid(x, y, indexing="ij")
            loss = 0.01 + scale * (3 * X**2 + Y**2)
        else:
            loss = 0.01 + scale * 3 * x**2
        acc = np.clip(1 - 0.1 * loss, 0, 1) * (1 if fraction_acc else 100)
        f["train_loss"], f["train_acc"] = loss, acc
        f["test_loss"], f["test_acc"] = loss + 0.1, acc * 0.97
        if two_d:
            f["train_loss"][0, 0] = np.nan  # a point not computed
        f.attrs["flatness_version"] = "0.1.0"  # an old flatness file: [i, j] order, no layout attribute
        f.attrs["checkpoint"] = "/runs/erm-s0/last.pt"
        f.attrs["direction"] = "random"
        f.attrs["norm"] = "filter"
        f.attrs["split"] = "both"
        f.attrs["samples"] = 100
        if not fraction_acc:
            f.attrs["accuracy_unit"] = "percent"
        if pca:
            g = f.create_group("pca")
            g["explained_variance_ratio"] = np.array([0.7, 0.2])
            g["coordinates"] = np.stack([np.linspace(-0.8, 0, 6), np.linspace(0.5, 0, 6)], axis=1)
            g["epochs"] = np.arange(6)
    return str(path)


def make_probe(path, method="amp", seed=0, eig=(40.0, 30.0, 20.0, 10.0, 5.0), density=True, **extra):
    grid = np.linspace(-5, 50, 200)
    probe = {
        "format": "flatness-probe",
        "flatness_version": "0.1.0",
        "weight_norm": 10.0,
        "distance_from_init": 3.0,
        "sidecar": None,
        "checkpoint": {"path": "/r/last.pt", "method": method, "seed": seed, "dataset": "digits", "epoch": 3},
        "data": {"dataset": "digits", "split": "train", "samples": 100, "batch_size": 50},
        "loss": 0.05,
        "accuracy": 0.99,
        "num_params": 1000,
        "hessian": {
            "method": "lanczos",
            "eigenvalues": list(eig),
            "residuals": [0.0] * len(eig),
            "hvps": 10,
            "seconds": 1.0,
        },
        "trace": {"estimate": 100.0, "stderr": 5.0, "hvps": 10},
    }
    if density:
        probe["density"] = {
            "grid": grid.tolist(),
            "values": np.exp(-((grid / 3) ** 2)).tolist(),
            "nodes": [],
            "weights": [],
        }
    probe.update(extra)
    with open(path, "w") as f:
        json.dump(probe, f)
    return str(path)


def check_file(path, fmt):
    assert os.path.isfile(path) and os.path.getsize(path) > 1000, path
    with open(path, "rb") as f:
        head = f.read(64)
    assert head.startswith(MAGIC[fmt]) or (fmt == "svg" and b"<svg" in head + f.read(2000)), path


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


def test_vtp_is_xml_polydata_with_one_point_per_grid_node(tmp_path):
    s2 = make_surface(tmp_path / "s2.h5", nx=9, ny=7)
    s1 = make_surface(tmp_path / "s1.h5", two_d=False, nx=11)
    for path, npts, ncells, tag in ((s2, 63, 8 * 6, "Polys"), (s1, 11, 1, "Lines")):
        out = write_vtp(load_surface(path), path.replace(".h5", ".vtp"))
        root = ET.parse(out).getroot()
        assert root.tag == "VTKFile" and root.get("type") == "PolyData"
        piece = root.find("PolyData/Piece")
        assert int(piece.get("NumberOfPoints")) == npts
        pts = piece.find("Points/DataArray").text.split()
        assert len(pts) == 3 * npts and all(np.isfinite(float(v)) for v in pts)
        loss = piece.find("PointData/DataArray[@Name='train_loss']").text.split()
        assert len(loss) == npts
        offsets = piece.find(f"{tag}/DataArray[@Name='offsets']").text.split()
        assert len(offsets) == ncells
    assert plot_files([s2], kinds="contour", vtp=True, force=True)[-1].endswith("s2.vtp")


def test_probe_without_density_still_plots_eigenvalues(tmp_path):
    pr = make_probe(tmp_path / "p.json", density=False)
    check_file(plot_files([pr])[0], "png")


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "no input"),
        (["missing.h5"], "not found"),
        (["notes.txt"], "unknown file type"),
        (["bad.json"], "not"),
        (["bad.h5"], "not"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, cli, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all")
    result = cli(["plot", *args])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and message in lines[0], result.output


def test_cli_plot_writes_files_and_kind_validation(tmp_path, cli):
    s = make_surface(tmp_path / "s.h5")
    result = cli(["plot", s, "--kind", "contour,3d", "--format", "svg", "--out", tmp_path / "o"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "s-contour.svg").exists() and (tmp_path / "o" / "s-3d.svg").exists()
    result = cli(["plot", s, "--kind", "pie"])
    assert result.exit_code != 0 and "unknown plot kind" in result.output


@pytest.mark.parametrize("layout", ["xy", "ij", None, "loss-landscape"])
def test_2d_pictures_put_the_minimum_at_its_x_y(tmp_path, layout):
    """A non-square grid and a function with its minimum off-centre, at (0.5, -0.5): the contour's
    innermost ring, the heatmap's darkest cell and the VTP's lowest point all lie there, whether the
    file is in the current layout ([j, i], "xy"), an old flatness one ([i, j]: "ij" or no attribute),
    or one written by loss-landscape (meshgrid order in a buffer declared (nx, ny))."""
    from flatness.plot.maps import draw_2d
    from flatness.plot.style import new_figure

    x, y = np.linspace(-1, 2, 13), np.linspace(-1.5, 1, 6)
    X, Y = np.meshgrid(x, y)
    Z = 0.1 + (X - 0.5) ** 2 + 3 * (Y + 0.5) ** 2
    path = str(tmp_path / "s.h5")
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = x, y
        if layout == "loss-landscape":
            f["train_loss"] = Z.reshape(len(x), len(y))  # same buffer, the shape it declares
        else:
            f["train_loss"] = Z if layout == "xy" else Z.T
            f.attrs["flatness_version"] = "0.1.0"
        if layout in ("xy", "ij"):
            f.attrs["layout"] = layout
    surf = load_surface(path)
    np.testing.assert_array_equal(surf["train_loss"], Z)
    lo, hi = common_limits([surf], "train_loss")
    ax = new_figure().add_subplot()
    contour = draw_2d(ax, surf, "contour", "train_loss", lo, hi, False, colorbar=False)
    ring = contour.allsegs[1][0]  # the first level above the minimum: a small closed curve around it
    assert np.allclose(ring.mean(axis=0), (0.5, -0.5), atol=0.05), ring.mean(axis=0)
    mesh = draw_2d(ax, surf, "heatmap", "train_loss", lo, hi, False, colorbar=False)
    values = np.asarray(mesh.get_array()).reshape(6, 13)
    corners = mesh.get_coordinates()  # (ny + 1, nx + 1, 2) cell corners around each (x_i, y_j)
    j, i = np.unravel_index(np.argmin(values), values.shape)
    assert np.allclose(corners[j : j + 2, i : i + 2].reshape(-1, 2).mean(axis=0), (0.5, -0.5))
    root = ET.parse(write_vtp(surf, str(tmp_path / "s.vtp"))).getroot()
    pts = np.array(root.find("PolyData/Piece/Points/DataArray").text.split(), float).reshape(-1, 3)
    assert np.allclose(pts[np.argmin(pts[:, 2]), :2], (0.5, -0.5))
    assert np.allclose(pts[:, 2], Z.ravel())
