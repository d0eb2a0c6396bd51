"""``flatness experiment``: the whole ERM-versus-AMP study (train, probe, surfaces, plots, report)."""

from __future__ import annotations

import click

from flatness.cli.source_options import loss_options
from flatness.cli.train_options import explicit_training_values, training_options
from flatness.core.engines import ENGINES
from flatness.data.probe_data import DEFAULT_SAMPLES
from flatness.models.references import parse_model_args
from flatness.study.experiment import run_experiment
from flatness.study.experiment_config import DEFAULT_GRID, DEFAULT_SEEDS, ExperimentConfig
from flatness.training.config import METHODS


@click.command("experiment")
@click.option(
    "--out",
    default=None,
    type=click.Path(file_okay=False),
    help="Study folder (default: checkpoints/experiment-<dataset>-<model>). Rerunning with the same "
    "folder resumes: finished steps are skipped.",
)
@click.option(
    "--methods",
    default=",".join(METHODS),
    show_default=True,
    help="Methods to train and compare (erm and any of amp, sam); SAM is the control perturbation method.",
)
@click.option(
    "--seeds",
    default=",".join(str(s) for s in DEFAULT_SEEDS),
    show_default=True,
    help="Seeds, one run per method and seed; every method runs every seed (same initial weights and data "
    "order), so methods are compared seed by seed. 8: the fewest at which the paired rank test can reach "
    "significance after Holm over the 6 primary measures.",
)
@click.option(
    "--dataset",
    default="mnist1d",
    show_default=True,
    help="A built-in dataset (digits, mnist1d, ...) or your own: FILE.npz, package.module:callable, "
    "FILE.py:callable, imagefolder:DIR (see `flatness train --help`).",
)
@click.option(
    "--model",
    default=None,
    help="A built-in model, package.module:callable, FILE.py:callable or torchvision:NAME. "
    "[default: the dataset's own (mnist1d: mlp1d), else convnet]",
)
@click.option(
    "--model-args", default=None, metavar="JSON", help="Keyword arguments of a --model callable (JSON object)."
)
@click.option(
    "--normalize",
    is_flag=True,
    default=False,
    help="Your own data: standardise it with the training split's statistics.",
)
@click.option(
    "--recipe",
    default=None,
    help="Training recipe (see `flatness train --help`); options given explicitly override it. Default: the "
    "dataset's own (mnist1d: mnist1d-default); for your own data (FILE.npz, FILE.py:callable, ...) "
    "mnist1d-default's optimiser (lr 0.1, cosine, 100 epochs), which fits MNIST-1D's training set; else "
    "`flatness train`'s defaults.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--samples",
    type=int,
    default=None,
    help=f"Probe/surface examples from the training split (default {DEFAULT_SAMPLES}).",
)
@click.option(
    "--grid", type=int, default=None, help=f"Surface resolution N: 2D N×N, 1D 2N−1 points (default {DEFAULT_GRID})."
)
@click.option("--data-dir", default=None, type=click.Path(), help="Dataset root for torchvision datasets.")
@click.option("--download", is_flag=True, help="Allow downloading the dataset.")
@click.option("--quick", is_flag=True, help="Tiny settings (1 epoch, 128 samples, 5×5 grid, cheap probes) for tests.")
@click.option(
    "--threads",
    type=int,
    default=None,
    help="CPU threads for PyTorch. Default: 1 for digits on the CPU (the tiny default model gains "
    "nothing from more, and loses a lot on a busy machine), else PyTorch's choice.",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Steps run at once (train+probe per run, the costliest first; each surface once its runs are "
    "done), each in its own process. "
    "Default: the number of CPU cores on the CPU, 1 on a GPU. The same numbers for any value "
    "(at the same --threads).",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="local",
    show_default=True,
    help="Where the steps run: local processes, or Ray tasks (pip install 'flatness[ray]').",
)
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@loss_options
@training_options
# click passes every option as a parameter; the function only builds ExperimentConfig from them.
def command(
    out,
    methods,
    seeds,
    dataset,
    model,
    model_args,
    normalize,
    recipe,
    device,
    samples,
    grid,
    data_dir,
    download,
    quick,
    threads,
    workers,
    engine,
    no_progress,
    loss,
    output,
    **training,
):
    """Train ERM, AMP and SAM over paired seeds, probe every run twice (at the end of the budget and at
    its first checkpoint with a whole-training-set loss <= --match-loss: the two protocols), with
    top-5 Hessian eigenvalues, trace, spectral density, every sharpness metric and sharpness against
    radius; compute 1D/2D surfaces and the ERM→other interpolations, draw the figures, compare the
    methods seed by seed and write REPORT.md and report.html, with the verdict on the primary measures
    under both protocols.

    Every training option of `flatness train` (--lr, --schedule, --epochs, --epsilon, --rho, ...) is
    accepted here with the same meaning, applies to every method's runs and is recorded in each run's
    config.json.

    With no options it runs the offline default, MNIST-1D (generated offline) with its recipe
    (mnist1d-default) and model (mlp1d), in a few minutes on a 2-core CPU (docs/validation.md).
    """
    # A user's model and data go to every training run; the probes and surfaces name them again.
    overrides = {"model_args": parse_model_args(model_args)} if model_args is not None else {}
    if normalize:
        overrides["normalize"] = True
    overrides.update({k: v for k, v in (("loss", loss), ("output", output)) if v is not None})
    given = explicit_training_values(training)
    epochs = given.pop("epochs", None)  # the study's own setting (the recipe's epochs otherwise)
    match_loss = given.pop("match_loss", None)  # the study's protocol: None is its default, not "off"
    overrides.update(given)
    cfg = ExperimentConfig(
        out=out,
        dataset=dataset,
        model=model,
        methods=methods,
        seeds=seeds,
        recipe=recipe,
        epochs=epochs,
        device=device,
        samples=samples,
        grid=grid,
        data_dir=data_dir,
        download=download,
        quick=quick,
        train_overrides=overrides,
        match_loss=match_loss,
        workers=workers,
        engine=engine,
        threads=threads,
    )
    _run(cfg, no_progress)


def _run(cfg, no_progress):
    result = run_experiment(cfg, progress=not no_progress, echo=lambda m: click.echo(m, err=True))
    for v in result["verdict"]:
        for sentence in v["sentences"]:
            click.echo(sentence.replace("**", ""))
    for name, path in sorted(result.get("figures", {}).items()):
        if name.startswith("profile-"):
            click.echo(f"Sharpness against radius ({name[8:]}): {path}")
    done = sum(1 for s in result["steps"] if not s.get("skipped") and not s.get("earlier"))
    click.echo(f"Report: {result['report']}  and  {result['html']}  ({result['seconds']:.0f} s, {done} step(s) run)")
