"""flatness.plot.maps: the 2-D pictures (contour, heatmap, and the VTP's points) put an off-centre minimum at its (x, y)
in every file layout."""

import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest

from flatness.plot.loading import load_surface
from flatness.plot.style import common_limits
from flatness.plot.vtp import write_vtp


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
