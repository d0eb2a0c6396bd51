"""``flatness correlate``: rank a sweep's measures against generalisation (see flatness.generalization)."""

from __future__ import annotations

import click

from flatness.core.validation import check_count
from flatness.sweep.correlate import TARGETS, correlate


@click.command("correlate")
@click.argument("folder", type=click.Path())
@click.option("--target", default="gap", show_default=True, help=f"What to predict: {' or '.join(TARGETS)}.")
@click.option("--draws", type=int, default=1000, show_default=True, help="Bootstrap resamples per interval.")
@click.option(
    "--min-train-acc",
    type=float,
    default=None,
    metavar="PCT",
    help="Only the cells that fit their training set to at least PCT % (e.g. 99): underfit cells have small "
    "gaps and small norms for the same reason, which can make any measure look predictive.",
)
@click.option(
    "--include-unreached",
    is_flag=True,
    help="Also use the cells that did not reach the sweep's --stop-loss within its epoch cap (left out by "
    "default: they are compared at another training loss; the report says how many).",
)
@click.option("--no-figures", is_flag=True, help="Skip the figures.")
@click.option("--force", is_flag=True, help="Replace the outputs of an earlier correlate in FOLDER.")
def command(folder, target, draws, min_train_acc, include_unreached, no_figures, force):
    """Kendall's τ-b, bootstrap intervals, the granulated Ψ and Holm-adjusted p-values of every measure
    in FOLDER/cells.csv against the target; writes correlation.{json,csv,md}, figures and report.html."""
    check_count(draws, "--draws", minimum=10)
    result = correlate(
        folder,
        target.lower(),
        draws=draws,
        figures=not no_figures,
        min_train_acc=min_train_acc,
        include_unreached=include_unreached,
        force=force,
    )
    for sentence in result["verdict"]:
        click.echo(sentence.replace("**", ""))
    click.echo(f"Report: {result['files']['html']}")
