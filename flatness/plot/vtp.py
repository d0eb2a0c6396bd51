"""ParaView export: a surface as VTK XML PolyData (.vtp)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from flatness.core.errors import FlatnessError
from flatness.core.fileio import atomic_write_text
from flatness.plot.style import VALUES, pick_value


def write_vtp(
    surf: dict[str, Any],
    path: str,
    value: str | None = None,
    log: bool = False,
    zscale: float = 1.0,
    force: bool = False,
) -> str:
    """Write ``surf`` as VTK XML PolyData (ParaView).

    One point per grid node at (x, y, loss), the loss (and the other values present) as point data,
    quads between neighbours (a polyline for a 1D surface). Non-finite values are written at the
    largest finite value and flagged in the ``finite`` array.

    Args:
        surf: a loaded surface (``flatness.plot.loading.load_surface``).
        path: the .vtp file.
        value: the height (default: train_loss, else test_loss).
        log: height log10(value).
        zscale: height multiplier.
        force: replace an existing file.

    Returns:
        ``path``.
    """
    if os.path.exists(path) and not force:
        raise FlatnessError(f"{path} exists; pass --force to replace it")
    value = pick_value(surf, value)
    x = np.asarray(surf["xcoordinates"], float)
    two_d = surf.get("ycoordinates") is not None and np.asarray(surf[value]).ndim == 2
    if two_d:
        y = np.asarray(surf["ycoordinates"], float)
        X, Y = np.meshgrid(x, y)  # (ny, nx), the values' order
        nx, ny = x.size, y.size
    else:
        X, Y = x[None, :], np.zeros((1, x.size))
        nx, ny = x.size, 1
    z = np.asarray(surf[value], float).reshape(ny, nx)
    finite = np.isfinite(z)
    fill = z[finite].max() if finite.any() else 0.0
    z = np.where(finite, z, fill)
    height = np.log10(np.maximum(z, 1e-12)) if log else z
    # VTK point order: y (j) outer, x (i) inner, as the arrays are stored: point id = j * nx + i.
    pts = np.stack([X.ravel(), Y.ravel(), zscale * height.ravel()], axis=1)
    npts = pts.shape[0]
    arrays = {value: z.ravel(), "finite": finite.ravel().astype(float)}
    for other in VALUES:
        if other != value and surf.get(other) is not None and np.asarray(surf[other]).size == npts:
            arrays[other] = np.asarray(surf[other], float).ravel()
    if two_d and nx > 1 and ny > 1:
        jj, ii = np.meshgrid(np.arange(ny - 1), np.arange(nx - 1), indexing="ij")
        a = (jj * nx + ii).ravel()
        quads = np.stack([a, a + 1, a + nx + 1, a + nx], axis=1)
        cells = ("Polys", quads.ravel(), 4 * np.arange(1, len(quads) + 1), len(quads))
    else:
        cells = ("Lines", np.arange(npts), np.array([npts]), 1)
    arrays = {name: np.where(np.isfinite(arr), arr, fill) for name, arr in arrays.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, _polydata_xml(pts, arrays, value, cells))
    return path


def _ascii(arr, floats: bool = True) -> str:
    arr = np.asarray(arr).ravel()
    return " ".join(repr(float(v)) if floats else str(int(v)) for v in arr)


def _polydata_xml(pts: np.ndarray, arrays: dict[str, np.ndarray], value: str, cells) -> str:
    """The VTK XML text: points, point data (``value`` the active scalars), cells.

    ``cells`` is ``(tag, connectivity, offsets, count)``.
    """
    cells_tag, conn, offsets, ncells = cells
    npts = pts.shape[0]
    fmt = _ascii
    lines = [
        '<?xml version="1.0"?>',
        '<VTKFile type="PolyData" version="0.1" byte_order="LittleEndian">',
        "  <PolyData>",
        f'    <Piece NumberOfPoints="{npts}" NumberOfVerts="0" '
        f'NumberOfLines="{ncells if cells_tag == "Lines" else 0}" NumberOfStrips="0" '
        f'NumberOfPolys="{ncells if cells_tag == "Polys" else 0}">',
        f'      <PointData Scalars="{value}">',
    ]
    for name, arr in arrays.items():
        lines.append(f'        <DataArray type="Float64" Name="{name}" format="ascii">{fmt(arr)}</DataArray>')
    lines += [
        "      </PointData>",
        "      <Points>",
        f'        <DataArray type="Float64" NumberOfComponents="3" format="ascii">{fmt(pts)}</DataArray>',
        "      </Points>",
        f"      <{cells_tag}>",
        f'        <DataArray type="Int64" Name="connectivity" format="ascii">{fmt(conn, False)}</DataArray>',
        f'        <DataArray type="Int64" Name="offsets" format="ascii">{fmt(offsets, False)}</DataArray>',
        f"      </{cells_tag}>",
        "    </Piece>",
        "  </PolyData>",
        "</VTKFile>",
        "",
    ]
    return "\n".join(lines)
