"""``flatness compare RUN_OR_PROBE...``: ERM vs AMP (vs SAM) table and figures."""

from __future__ import annotations

import click

from flatness.plot.style import FORMATS
from flatness.study.compare import compare_inputs


@click.command("compare")
@click.argument("inputs", nargs=-1, type=click.Path())
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for comparison.md and the figures (training curves, spectra, 1D slices, 2D "
    "contours). Without it the table is only printed.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the full summary (per-run values, means, stds, p-values) as JSON.",
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write a CSV: one row per run (then mean/std per method), one column per quantity.",
)
@click.option("--figures/--no-figures", default=True, show_default=True, help="Draw the figure grid (with --out).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="png", show_default=True)
@click.option("--baseline", default="erm", show_default=True, help="Method the others are compared with.")
@click.option("--force", is_flag=True, help="Replace output files that exist already.")
def command(inputs, out_dir, json_path, csv_path, figures, fmt, baseline, force):
    """Compare training methods over seeds.

    INPUTS are run folders (config.json, metrics.jsonl, and a probe JSON inside such as probe.json;
    surface .h5 files inside feed the figures) or probe JSON files. Runs are grouped by method; each
    quantity is shown as mean ± std over seeds, with each method's difference from the baseline and
    Welch's t-test p-value (lower = flatter for every flatness measure). With 3 seeds, p-values are
    weak evidence.
    """
    result = compare_inputs(
        list(inputs),
        out_dir=out_dir,
        json_path=json_path,
        csv_path=csv_path,
        figures=figures,
        fmt=fmt,
        force=force,
        baseline=baseline.lower(),
    )
    click.echo(result["markdown"])
    for name, path in result["files"].items():
        click.echo(f"{name}: {path}", err=True)
