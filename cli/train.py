"""``flatness train``: train a model with ERM, AMP or SAM into a run folder (thin layer over
``flatness.training.loop.train``)."""

from __future__ import annotations

import click

from flatness.cli.source_options import loss_options
from flatness.cli.train_options import D, training_options
from flatness.core import distributed
from flatness.training.launch import needs_relaunch, relaunch_under_torchrun, train_from_options
from flatness.training.tensorboard_log import LOGGERS

MAX_PROCESSES = 1024  # far beyond one node's GPUs or cores; a larger N is a typo, not a plan


@click.command("train")
@click.option(
    "--dataset",
    type=str,
    default=None,
    help=f"Dataset: digits (offline, bundled), mnist1d (offline, generated), cifar10, cifar100, svhn, "
    f"gtsrb, mnist, fashion-mnist; or your own: FILE.npz (x_train, y_train, x_test, y_test), "
    f"package.module:callable or FILE.py:callable returning (train_dataset, test_dataset), "
    f"imagefolder:DIR (DIR/train, DIR/test). "
    f"[default: {D.dataset}; the AMP paper: cifar10/cifar100/svhn]",
)
@click.option(
    "--model",
    type=str,
    default=None,
    help=f"Model: mlp, convnet, preactresnet18, wrn-DEPTH-WIDEN (e.g. wrn-28-10), vgg16, mlp1d, conv1d; "
    f"or "
    f"your own: package.module:callable or FILE.py:callable returning an nn.Module (with "
    f"--model-args), torchvision:NAME. [default: the dataset's (mnist1d: mlp1d), else {D.model}; "
    f"the paper: preactresnet18, wrn-28-10, vgg16]",
)
@click.option(
    "--model-args",
    type=str,
    default=None,
    metavar="JSON",
    help="Keyword arguments of a --model callable or torchvision model, as a JSON object, "
    "e.g. '{\"width\": 64}'. Recorded in the run.",
)
@click.option(
    "--normalize",
    is_flag=True,
    default=None,
    help="Your own data: standardise each channel with the training split's mean and std (recorded in "
    "the run). Without it the data is used exactly as given.",
)
@click.option(
    "--method",
    type=str,
    default=None,
    help=f"Training objective: erm (plain loss), amp (adversarial model perturbation, "
    f"1+inner-iter passes per step), sam (sharpness-aware minimisation, 2 passes). [default: {D.method}]",
)
@click.option(
    "--seed", type=int, default=None, help=f"Seed of the initial weights and the data order. [default: {D.seed}]"
)
@click.option("--device", type=str, default=None, help="auto (CUDA when present), cpu, cuda or cuda:N. [default: auto]")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where datasets live: <data-dir>/<dataset>/... [default: ./data]",
)
@click.option(
    "--download",
    is_flag=True,
    default=False,
    help="Download a missing dataset, or torchvision weights named in --model-args (needs the internet).",
)
@click.option(
    "--out",
    type=click.Path(),
    default=None,
    help="Run folder (config.json, init.pt, last.pt, epoch-NNN.pt, metrics.jsonl). An existing non-empty "
    "folder is refused unless --resume. [default: checkpoints/<dataset>-<model>-<method>-s<seed>]",
)
@click.option(
    "--save-every",
    type=int,
    default=None,
    help="Also keep epoch-NNN.pt every K epochs (and epoch-000.pt = init), e.g. for PCA trajectories; "
    "0 = none. [default: 0]",
)
@click.option(
    "--resume",
    is_flag=True,
    default=False,
    help="Continue the run in --out from its last finished epoch (options other than --epochs, "
    "--save-every, --device, --data-dir, --download must match the stored run).",
)
@click.option(
    "--recipe",
    type=str,
    default=None,
    help="Start from a named preset; options given explicitly override it: amp-paper (the AMP paper's "
    "CIFAR/SVHN recipe), amp-paper-vgg (eps 0.1, inner-lr 0.2), digits-default (the defaults), "
    "mnist1d-default (used by --dataset mnist1d unless another is named).",
)
@click.option(
    "--local-perturbation",
    is_flag=True,
    default=None,
    help="Multi-process runs: build AMP/SAM's perturbation from each rank's own share of the batch "
    "(cheaper; a different method) instead of the global batch's all-reduced gradient.",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1, max=MAX_PROCESSES),
    default=1,
    show_default=True,
    help="Train on N processes (one per GPU, or N CPU processes with gloo) by relaunching this command "
    "under torchrun; the global batch (--batch-size) is split across them.",
)
@training_options
@click.option("--progress/--no-progress", default=True, help="Show a progress bar per epoch. [default: on]")
@click.option(
    "--log",
    "logger",
    type=click.Choice(LOGGERS),
    default=LOGGERS[0],
    show_default=True,
    help="tensorboard: also write each epoch's metrics.jsonl record (losses, accuracies, lr, the whole-train "
    "loss of --stop-loss, AMP/SAM's perturbation norm) as TensorBoard scalars into OUT/tensorboard (needs "
    "flatness[tensorboard]); `tensorboard --logdir DIR` then shows every run under DIR.",
)
@loss_options
def command(out, resume, recipe, progress, nproc, compile_, logger, **options):
    """Train a model with ERM, AMP or SAM and save its checkpoints into a run folder.

    With no options: the convnet on the bundled digits set (offline, under a minute on a laptop CPU).
    Several GPUs: `flatness train --nproc 4 ...`, or `torchrun --nproc_per_node=4 -m flatness.cli train ...`.
    """
    if needs_relaunch(nproc):  # torchrun's exit code, not an error
        click.get_current_context().exit(relaunch_under_torchrun(nproc, logger))
    options["compile"] = compile_
    out_dir = train_from_options(options, out, resume=resume, recipe=recipe, progress=progress, logger=logger)
    if distributed.is_main():
        click.echo(f"Saved run to {out_dir}")
