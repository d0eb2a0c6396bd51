"""The model and data options that probe, surface and experiment share with train (one definition)."""

from __future__ import annotations

import click

from flatness.sources.loading import ALLOW_SOURCE_CHANGE_FLAG, ModelSource

MODEL_HELP = (
    "The model, when CHECKPOINT does not say it all: a built-in name, package.module:callable or "
    "FILE.py:callable returning an nn.Module, or torchvision:NAME. Needed for a plain state_dict or "
    ".safetensors file, and for a run trained with a callable (named again: a checkpoint never makes "
    "flatness run code); a .pt2 program needs none."
)
ALLOW_SOURCE_CHANGE_HELP = (
    "Accept a --model or --dataset callable other than the one the run was trained with, a factory file "
    "that changed since (its sha256 differs), or another --model for a built-in model's weights. "
    "(--force only overwrites outputs.)"
)
DATASET_HELP = (
    "Measure on this dataset instead of the one CHECKPOINT records (needed where it records none): a "
    "built-in name, FILE.npz, package.module:callable, FILE.py:callable or imagefolder:DIR."
)


LOSS_HELP = (
    "The loss: ce (cross-entropy, the default), mse, bce (on logits), nll, l1, huber, or "
    "package.module:callable / FILE.py:callable naming loss_fn(outputs, targets) -> the batch mean "
    "(or an nn.Module loss class). Recorded in the run; later commands on it reuse a recorded name, "
    "and a recorded callable must be named again. Accuracy exists only for ce and nll."
)
OUTPUT_HELP = (
    "What of the model's output the loss sees: a KEY of a dict or Hugging Face ModelOutput (e.g. "
    "start_logits), or package.module:callable / FILE.py:callable (output -> tensor). Default: the "
    "output itself, the first element of a tuple, or .logits. Recorded like --loss."
)


def loss_options(function):
    """Add --loss and --output (the one definition: train, probe, surface, experiment and sweep)."""
    options = [
        click.option("--loss", "loss", default=None, metavar="NAME|MODULE:CALLABLE|FILE.py:CALLABLE", help=LOSS_HELP),
        click.option("--output", "output", default=None, metavar="KEY|MODULE:CALLABLE", help=OUTPUT_HELP),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def source_options(function):
    """Add --model, --model-args, --dataset, --image-size, --normalize, --loss, --output and
    --allow-source-change to a command."""
    options = [
        click.option(
            "--model", "model", default=None, metavar="NAME|MODULE:CALLABLE|FILE.py:CALLABLE", help=MODEL_HELP
        ),
        click.option(
            "--model-args",
            default=None,
            metavar="JSON",
            help="Keyword arguments of a --model callable or torchvision:NAME, as a JSON object (default: those "
            "the run records). Not for a built-in model, which its checkpoint rebuilds as trained.",
        ),
        click.option(
            "--dataset",
            "dataset",
            default=None,
            metavar="NAME|FILE.npz|MODULE:CALLABLE|imagefolder:DIR",
            help=DATASET_HELP,
        ),
        click.option("--image-size", type=int, default=None, help="imagefolder data: resize images to this size."),
        click.option(
            "--normalize/--no-normalize",
            default=None,
            help="Your own data: standardise with the training split's statistics (default: as the run was trained).",
        ),
        click.option(ALLOW_SOURCE_CHANGE_FLAG, "allow_source_change", is_flag=True, help=ALLOW_SOURCE_CHANGE_HELP),
    ]
    for option in reversed(options):
        function = option(function)
    return loss_options(function)


def model_source(
    model, model_args, dataset, image_size, normalize, allow_source_change, loss=None, output=None, download=False
):
    """The ``ModelSource`` for these options (None when none is given: the checkpoint says everything).

    Args:
        model, model_args, dataset, image_size, normalize, allow_source_change, loss, output: the
            options ``source_options`` added, as click passes them.
        download: the command's --download, where it has one.

    Returns:
        A ``ModelSource`` or None.
    """
    given = (model, model_args, dataset, image_size, normalize, loss, output)
    if all(value is None for value in given):
        return None
    return ModelSource(
        model=model,
        model_args=model_args,
        dataset=dataset,
        image_size=image_size,
        normalize=normalize,
        download=download,
        allow_source_change=allow_source_change,
        loss=loss,
        output=output,
    )
