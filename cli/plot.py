"""``flatness plot FILE...``: surfaces (.h5), Hessian spectra (probe .json) and training curves (run folders)."""

from __future__ import annotations

import click

from flatness.plot.figures import PlotSettings, plot_files
from flatness.plot.style import FORMATS, VALUES


@click.command("plot")
@click.argument("files", nargs=-1, type=click.Path())
@click.option(
    "--kind",
    "kinds",
    default="all",
    show_default=True,
    metavar="LIST",
    help="2D pictures to draw: comma-separated from contour, contourf, heatmap, 3d, or all.",
)
@click.option(
    "--value",
    type=click.Choice(VALUES),
    default=None,
    help="Quantity of a 2D surface to draw (default: train_loss, else test_loss).",
)
@click.option(
    "--log/--linear",
    "log",
    default=None,
    help="Log scale for the loss (1D: the loss axis; 2D: colours and levels). Default: linear in 1D; "
    "in 2D log when the loss spans more than a factor of 20.",
)
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="png", show_default=True, help="Figure file format."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the figures (default: beside each input).",
)
@click.option("--vmin", type=float, default=None, help="Lower colour limit of 2D pictures (shared by all files).")
@click.option(
    "--vmax",
    type=float,
    default=None,
    help="Upper colour limit of 2D pictures. Without --vmin/--vmax, several 2D files share the "
    "common min and max over all of them.",
)
@click.option("--vtp", is_flag=True, help="Also export each surface as ParaView XML PolyData (.vtp).")
@click.option(
    "--force",
    is_flag=True,
    help="Replace figures that exist already (without it, nothing is overwritten and the command "
    "stops before drawing).",
)
def command(files, kinds, value, log, fmt, out_dir, vmin, vmax, vtp, force):
    """Draw surfaces and spectra.

    A 1D surface .h5 gives loss and accuracy curves (several 1D files are overlaid on shared axes in
    overlay-1d.FMT); a 2D surface gives a contour plot with labelled levels, a filled contour, a
    heatmap and a 3D surface (--kind), with the PCA training trajectory on top when the file has one;
    a probe .json gives the Hessian spectral density on a log scale with the top eigenvalues marked;
    a run folder gives its training curves from metrics.jsonl (loss, accuracy, learning rate: what
    `train --log tensorboard` shows in TensorBoard) as RUN/training.FMT (--out: OUT/RUN-training.FMT).
    Output names: STEM-1d, STEM-contour, STEM-contourf, STEM-heatmap, STEM-3d, STEM-spectrum (.FMT).
    """
    settings = PlotSettings(
        out_dir=out_dir, kinds=kinds, fmt=fmt, log=log, vmin=vmin, vmax=vmax, vtp=vtp, value=value, force=force
    )
    written = plot_files(list(files), settings)
    for path in written:
        click.echo(path)
    click.echo(f"{len(written)} file(s) written.", err=True)
