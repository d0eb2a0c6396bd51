"""flatness.plot.vtp: a surface as XML PolyData, one point per grid node (polygons for 2-D, a line for 1-D)."""

import xml.etree.ElementTree as ET

import numpy as np
from plot_helpers import make_surface

from flatness.plot.figures import plot_files
from flatness.plot.loading import load_surface
from flatness.plot.vtp import write_vtp


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
