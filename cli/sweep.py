"""``flatness sweep``: train and measure every cell of a hyperparameter grid (see flatness.sweep.run)."""

from __future__ import annotations

import click

from flatness.cli.settings_options import into_settings
from flatness.cli.source_options import loss_options
from flatness.core.errors import FlatnessError
from flatness.sweep.run import (
    DEFAULT_EPOCHS,
    DEFAULT_GRID,
    DEFAULT_SEEDS,
    DEFAULT_STOP_CAP,
    DEFAULT_STOP_LOSS,
    QUICK_GRID,
    STOP_SCHEDULE,
    SweepSettings,
    failure_message,
    run_sweep,
)
from flatness.training.tensorboard_log import LOGGERS


@click.command("sweep")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Sweep folder: one run folder per cell under cells/, and cells.csv. Rerun to resume.",
)
@click.option(
    "--grid",
    default=None,
    help=f'Space-separated KEY=V1,V2 entries over training options (default: "{DEFAULT_GRID}"; '
    f'--quick: "{QUICK_GRID}"). epsilon/inner_lr/inner_iter/ball apply to AMP cells only, '
    "rho/adaptive to SAM cells only.",
)
@click.option("--seeds", default=None, help=f"Seeds, comma-separated (default {DEFAULT_SEEDS}; --quick: 0).")
@click.option("--dataset", default=None, help="Dataset (default: mnist1d where available, else digits).")
@click.option("--model", default=None, help="Model (default: the dataset's own, else convnet).")
@click.option(
    "--epochs",
    type=int,
    default=None,
    help=f"Epochs per cell; with a stop loss, the cap (default: {DEFAULT_STOP_CAP} with a stop loss, "
    f"{DEFAULT_EPOCHS} on a cosine schedule without one; --quick: 2).",
)
@click.option(
    "--stop-loss",
    type=float,
    default=None,
    metavar="X",
    help=f"Train every cell until its cross-entropy over the whole training set is <= X (at most --epochs "
    f"epochs, {STOP_SCHEDULE} learning rate), as Jiang et al. (2020) do, so that underfitting cannot drive "
    f"the correlations; cells.csv records stopped_epoch and reached_stop_loss, and `flatness correlate` "
    f"leaves out the cells that did not get there. Costs one evaluation pass over the training set per "
    f"epoch. [default: {DEFAULT_STOP_LOSS:g} for the default grid; none with --grid or --quick]",
)
@click.option(
    "--workers", type=int, default=None, help="Cells at a time (default: the number of cores; one thread each)."
)
@click.option("--engine", default=SweepSettings.engine, show_default=True, help="local (processes here) or ray.")
@click.option("--address", default=None, help="Ray cluster address (--engine ray; default: a local instance).")
@click.option(
    "--shard",
    default=None,
    help="I/N: run only cells I, I+N, ... (0-based), e.g. a Slurm array task; shards may share --out.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--data-dir", default=None, type=click.Path(), help="Dataset root.")
@click.option("--quick", is_flag=True, help="8 tiny cells (2 epochs, cheap probes) for tests: well under 3 minutes.")
@click.option("--no-progress", "progress", is_flag=True, flag_value=False, default=True, help="Hide the progress bar.")
@click.option(
    "--log",
    "log",
    type=click.Choice(LOGGERS),
    default=SweepSettings.log,
    show_default=True,
    help="tensorboard: each cell's training curves into OUT/cells/CELL/tensorboard (needs "
    "flatness[tensorboard]); `tensorboard --logdir OUT` shows the whole grid.",
)
@loss_options
@into_settings(SweepSettings)
def command(settings):
    """Train every cell of a grid (one normal run folder each), probe it (top Hessian eigenvalues, trace,
    every sharpness metric) and measure the norm/margin baselines; write OUT/cells.csv.

    The default grid trains every cell to the same training loss (--stop-loss 0.01 at the cell's constant
    learning rate, --epochs as the cap), so that no measure can look predictive only because some cells
    under-fit; cells.csv records each cell's stopped_epoch and reached_stop_loss.

    Then `flatness correlate OUT` ranks the measures against the generalisation gap.
    """
    result = run_sweep(settings, echo=lambda m: click.echo(m, err=True))
    click.echo(
        f"{result['ran']} cell(s) run now ({result['done']} done, {result['failed']} failed) of "
        f"{result['cells']} in the grid, {result['seconds']:.0f} s; table: {result['table']}"
    )
    if result["failures"]:  # a sweep with a failed cell is not a success (exit 2, naming them)
        raise FlatnessError(failure_message(result["failures"], result["cells"]))
