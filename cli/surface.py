"""``flatness surface CKPT --x=MIN:MAX:N [--y=MIN:MAX:N] ...``: a 1D/2D loss surface as HDF5."""

from __future__ import annotations

import click

from flatness.cli.settings_options import into_settings, quiet_option
from flatness.cli.source_options import model_source, source_options
from flatness.core import distributed
from flatness.data.probe_data import DEFAULT_BATCH_SIZE, DEFAULT_SAMPLES
from flatness.landscape.compute import BN_MODES, SPLIT_CHOICES, SurfaceSettings, compute_surface
from flatness.landscape.directions import IGNORES, NORMS
from flatness.landscape.surface import PRECISIONS


@click.command("surface")
@click.argument("checkpoint", type=click.Path(dir_okay=True))
@click.option(
    "--x",
    "x",
    default="-1:1:21",
    show_default=True,
    metavar="MIN:MAX:N",
    help="Grid along the first direction: N points from MIN to MAX.",
)
@click.option("--y", "y", default=None, metavar="MIN:MAX:N", help="Grid along a second direction (2D surface).")
@click.option(
    "--dir",
    "direction",
    default="random",
    show_default=True,
    metavar="random|eigen|interp:CKPT_B|pca:RUN_DIR",
    help="Directions: filter-normalised random ones, the top Hessian eigenvectors, the line to "
    "checkpoint B (A at 0, B at 1), or a run's trajectory PCA.",
)
@click.option(
    "--norm",
    type=click.Choice(NORMS),
    default=SurfaceSettings.norm,
    show_default=True,
    help="Normalisation of random directions.",
)
@click.option(
    "--ignore",
    type=click.Choice(IGNORES),
    default=SurfaceSettings.ignore,
    show_default=True,
    help="Random directions: zero biases and BatchNorm parameters (biasbn) or copy them from the weights.",
)
@click.option("--orthogonal", is_flag=True, help="Make the second random direction orthogonal to the first.")
@click.option("--split", type=click.Choice(SPLIT_CHOICES), default=SurfaceSettings.split, show_default=True)
@click.option(
    "--samples",
    default=str(DEFAULT_SAMPLES),
    show_default=True,
    metavar="N|all",
    help="Probe examples: the first N of the split, or all of it.",
)
@click.option("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option(
    "--bn",
    type=click.Choice(BN_MODES),
    default=SurfaceSettings.bn,
    show_default=True,
    help="BatchNorm statistics: as stored, or re-estimated on training data at every point.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random directions.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--data-dir", default=None, help="Dataset folder (default ./data).")
@click.option("--download", is_flag=True, help="Download the dataset if it is missing.")
@click.option("--out", default=None, metavar="FILE.h5", help="Output file (default: beside the checkpoint).")
@click.option("--resume", is_flag=True, help="Continue an interrupted surface: compute only the missing points.")
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite an existing output file (only that: another --model or --dataset than the run "
    "recorded needs --allow-source-change, which --resume accepts too).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=SurfaceSettings.precision,
    show_default=True,
    help="bf16 evaluates under bfloat16 autocast: about 2x faster on recent GPUs, ~3 significant "
    "digits of loss (fine for pictures, not for tiny differences near the minimum).",
)
@click.option(
    "--channels-last",
    is_flag=True,
    help="Run conv nets in NHWC memory layout: same values up to rounding (~1e-6), often much "
    "faster on CPUs (the default digits convnet: about 27% less time per point).",
)
@quiet_option
@source_options
@into_settings(SurfaceSettings)
def command(checkpoint, settings, out, **model_options):
    """Loss and accuracy on a grid around CHECKPOINT (loss-landscape compatible HDF5).

    CHECKPOINT: a flatness checkpoint or run folder; a plain state_dict (torch.save) or .safetensors file
    with --model; or a .pt2 program (torch.export.save) with --dataset.

    Under `torchrun --nproc_per_node=N -m flatness.cli surface ...` the grid points are shared out
    among the N processes (gloo on CPU, NCCL on GPU) and rank 0 writes the file; --resume works with
    any number of processes.
    """
    source = model_source(**model_options, download=settings.download)
    summary = compute_surface(checkpoint, out, settings, source=source)
    if not distributed.is_main():
        return  # rank 0 writes and reports
    shape = "x".join(str(s) for s in reversed(summary["shape"]))  # x points by y points
    rate = summary["points_per_second"]
    click.echo(
        f"surface {shape} ({summary['direction']}, bn {summary['bn']}): {summary['computed_now']} points "
        f"computed{' (resumed)' if summary['resumed'] else ''}"
        f"{f', {rate:.1f} points/s' if rate else ''}, {summary['seconds']:.1f} s of grid time in all"
    )
    if summary["centre"]:
        for split_name, (loss, acc) in summary["centre"].items():
            accuracy = f", accuracy {acc:.2f}%" if acc is not None else ""  # none for a regression loss
            click.echo(f"  centre {split_name}: loss {loss:.4f}{accuracy}")
    for split_name, value in summary["min_loss"].items():
        if value is not None:
            click.echo(f"  lowest {split_name} loss on the grid: {value:.4f}")
    if summary["remaining"]:
        click.echo(f"  {summary['remaining']} points still missing; rerun with --resume")
    click.echo(f"wrote {summary['out']}")
