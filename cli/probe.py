"""``flatness probe CKPT``: loss, accuracy, Hessian spectrum, trace, density and sharpness of one
checkpoint, written as a probe JSON (+ sidecar .h5)."""

from __future__ import annotations

import click

from flatness.cli.settings_options import into_settings, quiet_option
from flatness.cli.source_options import model_source, source_options
from flatness.data.probe_data import DEFAULT_BATCH_SIZE, DEFAULT_SAMPLES
from flatness.plot.style import loss_words
from flatness.sharpness.measure import SharpnessSettings
from flatness.sharpness.oracle import BALLS
from flatness.study.probe import (
    DEFAULT_DENSITY_STEPS,
    DEFAULT_DENSITY_VECTORS,
    DEFAULT_EIG_METHOD,
    DEFAULT_MAX_ITER,
    DEFAULT_TOL,
    DEFAULT_TRACE_SAMPLES,
    DTYPES,
    EIG_METHODS,
    SPLITS,
    TRACE_METHODS,
    ProbeSettings,
    probe_to_file,
)


def _fmt(x, spec=".4g"):
    return "n/a" if x is None else format(x, spec)


@click.command("probe")
@click.argument("checkpoint", type=click.Path(dir_okay=True))
@click.option("--split", default="train", show_default=True, metavar="|".join(SPLITS))
@click.option(
    "--samples",
    default=str(DEFAULT_SAMPLES),
    show_default=True,
    metavar="N|all",
    help="Probe examples: the first N of the split, in dataset order, no augmentation, or all of it.",
)
@click.option(
    "--batch-size",
    type=int,
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Examples per forward pass (memory only: results do not depend on it).",
)
@click.option("--top-k", type=int, default=5, show_default=True, help="Top Hessian eigenvalues (0: none).")
@click.option(
    "--eig-method",
    type=click.Choice(EIG_METHODS),
    default=DEFAULT_EIG_METHOD,
    show_default=True,
    help="lanczos (default): Krylov with full re-orthogonalisation; in benchmarks/README.md it "
    "reaches the top-5 at residual 1e-4 in several times fewer HVPs than power iteration, "
    "whose speed depends on eigenvalue gaps. power: deflated power iteration (largest |λ|).",
)
@click.option(
    "--tol",
    type=float,
    default=DEFAULT_TOL,
    show_default=True,
    help="Relative residual ‖Hv−λv‖/|λ| every eigenpair must reach.",
)
@click.option(
    "--max-iter",
    type=int,
    default=DEFAULT_MAX_ITER,
    show_default=True,
    help="HVP budget: total for lanczos, per eigenvalue for power.",
)
@click.option("--trace/--no-trace", default=False, show_default=True, help="Estimate tr(H).")
@click.option(
    "--trace-samples", type=int, default=DEFAULT_TRACE_SAMPLES, show_default=True, help="HVPs for the trace estimate."
)
@click.option("--trace-method", type=click.Choice(TRACE_METHODS), default=TRACE_METHODS[0], show_default=True)
@click.option(
    "--density/--no-density",
    default=False,
    show_default=True,
    help="Spectral density by stochastic Lanczos quadrature.",
)
@click.option(
    "--density-steps", type=int, default=DEFAULT_DENSITY_STEPS, show_default=True, help="Lanczos steps per SLQ vector."
)
@click.option(
    "--density-vectors", type=int, default=DEFAULT_DENSITY_VECTORS, show_default=True, help="SLQ starting vectors."
)
@click.option(
    "--sharpness",
    "metrics",
    default=None,
    metavar="all|NAME,NAME",
    help="Sharpness metrics to compute as well (default none).",
)
@click.option(
    "--rho", "rhos", default=None, metavar="R,R", help="Radii of the worst-/average-case metrics, e.g. 0.05,0.1."
)
@click.option(
    "--epsilon", "epsilons", default=None, metavar="E,E", help="Box sizes of Keskar's ε-sharpness, e.g. 5e-4,1e-3."
)
@click.option(
    "--ball",
    type=click.Choice(BALLS),
    default=SharpnessSettings.ball,
    show_default=True,
    help="Worst-case ball: per tensor (the AMP reference code) or one global L2 ball.",
)
@click.option("--draws", type=int, default=None, help="Monte-Carlo draws of the average-case metrics.")
@click.option("--ascent-steps", type=int, default=None, help="Gradient steps of the worst-case ascent.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--data-dir", default=None, help="Dataset folder (default ./data).")
@click.option(
    "--out", default=None, metavar="FILE.json", help="Output file (default: CHECKPOINT's name with .probe-SPLIT.json)."
)
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite existing output files (only that: another --model or --dataset than the run "
    "recorded needs --allow-source-change).",
)
@click.option("--save-vectors", is_flag=True, help="Also write the eigenvectors to a sidecar .h5.")
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    default=DTYPES[0],
    show_default=True,
    help="Precision of the Hessian and sharpness computations. float64 is for the rare model "
    "whose float32 HVPs are too inexact for --tol (the probe then says NOT converged), "
    "at about twice the cost on a CPU.",
)
@click.option(
    "--params",
    "params",
    default=None,
    metavar="GLOB[,GLOB]",
    help="Restrict the Hessian (eigenvalues, trace, density) to the parameters whose names match, "
    "e.g. 'layer4.*' or 'features.0.weight': per-layer spectra. Default: all parameters.",
)
@quiet_option
@source_options
@into_settings(ProbeSettings, sharpness=SharpnessSettings)
def command(checkpoint, settings, out, force, **model_options):
    """Measure CHECKPOINT: loss, accuracy, top Hessian eigenvalues, optional trace, density, sharpness.

    CHECKPOINT: a flatness checkpoint or run folder; a plain state_dict (torch.save) or .safetensors file
    with --model; or a .pt2 program (torch.export.save) with --dataset.
    """
    out, written = probe_to_file(checkpoint, out, settings, model_source(**model_options), force=force)
    if written is not None:  # rank 0 writes and reports
        _report(out, written, settings.split, settings.tol)


def _report(out: str, written, split: str, tol: float) -> None:
    """A few lines summarising the probe file just written."""
    ck = written["checkpoint"]
    run = f" ({ck['method']}, epoch {ck['epoch']})" if ck.get("method") is not None else ""  # not for foreign files
    click.echo(
        f"{ck['model']} on {ck['dataset']}{run}, "
        f"{written['data']['samples']} {split} examples, {written['num_params']} parameters"
    )
    acc = written.get("accuracy")
    click.echo(
        f"  loss {_fmt(written['loss'])} ({loss_words(written['data'].get('loss'))}), "
        + (f"accuracy {100 * acc:.2f}%, " if acc is not None else "")
        + f"weight norm {_fmt(written['weight_norm'])}, distance from init {_fmt(written['distance_from_init'])}"
    )
    hess = written["hessian"]
    block = written.get("hessian_params")
    if block:
        click.echo(
            f"  Hessian restricted to {len(block)} tensor(s), {written['hessian_dim']} parameters: "
            + ", ".join(block[:6])
            + (", ..." if len(block) > 6 else "")
        )
    if hess:
        values = ", ".join(_fmt(v, ".5g") for v in hess["eigenvalues"])
        worst = max((r for r in hess["residuals"] if r is not None), default=None)
        click.echo(f"  top-{len(hess['eigenvalues'])} eigenvalues ({hess['method']}): {values}")
        click.echo(
            f"    {hess['hvps']} HVPs, {hess['seconds']:.1f} s, max residual {_fmt(worst, '.2e')}"
            f"{'' if hess['converged'] else f' (NOT converged to tol {tol:g}; raise --max-iter)'}"
        )
        if any(hess.get("negative") or []):
            click.echo("    note: some eigenvalues are negative (power iteration finds the largest |λ|)")
    if written.get("trace"):
        t = written["trace"]
        click.echo(
            f"  trace ({t['method']}): {_fmt(t['estimate'], '.5g')} ± {_fmt(t['stderr'], '.2g')} ({t['hvps']} HVPs)"
        )
    if written.get("density"):
        click.echo(f"  density: {len(written['density']['nodes'])} SLQ nodes ({written['density']['hvps']} HVPs)")
    for row in written.get("sharpness") or []:
        radius = row.get("rho", row.get("epsilon"))
        click.echo(
            f"  sharpness {row.get('metric')}{f' @ {radius:g}' if radius is not None else ''}: {_fmt(row.get('value'))}"
        )
    click.echo(f"wrote {out}" + (f" (+ {written['sidecar']})" if written.get("sidecar") else ""))
