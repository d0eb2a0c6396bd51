"""The training options of ``flatness train``, shared by ``flatness experiment`` (one definition).

Every option here means the same in both commands: its value goes into the training config of the
run (``flatness.training.config.TrainConfig``, same name with ``-`` as ``_``; ``--compile`` is passed as
``compile_``), and an option left out keeps the recipe's or ``TrainConfig``'s default.
"""

from __future__ import annotations

import click

from flatness.training.config import DATA_ON_DEVICE, PRECISIONS, TrainConfig

D = TrainConfig()


def _ms(values) -> str:
    return ",".join(str(v) for v in values) or "none"


#: How the run is trained (not where, nor which run): model size, optimiser, schedule, AMP/SAM, speed.
TRAINING_OPTIONS = [
    click.option(
        "--width",
        type=int,
        default=None,
        help="Width of convnet (first conv channels, default 16) or mlp "
        "(hidden units, default 128); other models ignore it.",
    ),
    click.option("--depth", type=int, default=None, help="Hidden layers of mlp (default 2); other models ignore it."),
    click.option(
        "--epochs", type=int, default=None, help=f"Passes over the training set. [default: {D.epochs}; paper: 200]"
    ),
    click.option(
        "--batch-size", type=int, default=None, help=f"Examples per step. [default: {D.batch_size}; paper: 50]"
    ),
    click.option("--lr", type=float, default=None, help=f"Initial learning rate of SGD. [default: {D.lr}; paper: 0.1]"),
    click.option("--momentum", type=float, default=None, help=f"SGD momentum. [default: {D.momentum}; paper: 0.9]"),
    click.option(
        "--nesterov/--no-nesterov",
        default=None,
        help=f"Nesterov momentum. [default: {'on' if D.nesterov else 'off'}; paper: on]",
    ),
    click.option(
        "--weight-decay",
        type=float,
        default=None,
        help=f"L2 weight decay (SGD's, coupled). [default: {D.weight_decay}; paper: 1e-4]",
    ),
    click.option(
        "--schedule",
        type=str,
        default=None,
        help=f"Learning-rate schedule per epoch: step (x0.1 at each milestone), cosine (to 0 at the last "
        f"epoch), constant. [default: {D.schedule}; paper: step]",
    ),
    click.option(
        "--milestones",
        type=str,
        default=None,
        help=f"Comma-separated epochs after which the step schedule multiplies lr by 0.1. "
        f"[default: {_ms(D.milestones)}; paper: 100,150]",
    ),
    click.option(
        "--grad-clip",
        type=float,
        default=None,
        help="Clip the global L2 norm of the gradient used by the optimizer's (base) step to this value; "
        "AMP/SAM's perturbation uses unclipped gradients. [default: no clipping; paper: 50]",
    ),
    click.option(
        "--stop-loss",
        type=float,
        default=None,
        metavar="X",
        help="Train to a fixed training loss: stop after the first epoch whose cross-entropy over the whole "
        "training set (eval mode, no augmentation) is <= X; --epochs is then the cap. Costs one evaluation "
        "pass over the training set per epoch. Jiang et al. (2020) use 0.01. [default: off]",
    ),
    click.option(
        "--match-loss",
        type=float,
        default=None,
        metavar="X",
        help="Also keep matched.pt: the weights after the first epoch whose cross-entropy over the whole "
        "training set (eval mode, as --stop-loss measures it) is <= X; training goes on. One evaluation pass "
        "over the training set per epoch. [default: off; flatness experiment: 0.01, its matched-loss protocol]",
    ),
    click.option(
        "--epsilon",
        type=float,
        default=None,
        help=f"AMP: L2 radius of the perturbation ball. [default: {D.epsilon} (tuned for digits); paper: 0.5, "
        "VGG16: 0.1]",
    ),
    click.option(
        "--inner-lr",
        type=float,
        default=None,
        help=f"AMP: step size of the inner ascent on the perturbation. [default: {D.inner_lr}; paper: 1, VGG16: 0.2]",
    ),
    click.option(
        "--inner-iter",
        type=int,
        default=None,
        help=f"AMP: inner ascent steps per training step. [default: {D.inner_iter}; paper: 1]",
    ),
    click.option(
        "--ball",
        type=str,
        default=None,
        help=f"AMP: tensor (each parameter tensor in its own L2 ball of radius epsilon, as the published code) "
        f"or global (one L2 ball over all parameters, as the paper writes it). [default: {D.ball}]",
    ),
    click.option("--rho", type=float, default=None, help=f"SAM: radius of the ascent step. [default: {D.rho}]"),
    click.option(
        "--adaptive/--no-adaptive",
        default=None,
        help="SAM: adaptive (ASAM) scaling of the ascent by |theta|. [default: off]",
    ),
    click.option(
        "--augment/--no-augment",
        default=None,
        help="Training augmentation: random crop (+ horizontal flip on CIFAR / Fashion-MNIST). digits has "
        "none. [default: off; paper: on]",
    ),
    click.option("--image-size", type=int, default=None, help="imagefolder data: resize images to this square size."),
    click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default=None,
        help="bf16: bfloat16 autocast for the forward/backward passes (weights, optimizer and checkpoints stay "
        "fp32); the GPU fast path. [default: fp32]",
    ),
    click.option(
        "--channels-last/--no-channels-last",
        default=None,
        help="NHWC memory layout for conv nets (faster with tensor cores). [default: off]",
    ),
    click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model. [default: off]"),
    click.option(
        "--data-on-device",
        type=click.Choice(DATA_ON_DEVICE),
        default=None,
        help="Keep the whole training set on the GPU and augment it there (auto: when it takes under a "
        "quarter of free GPU memory; never on the CPU). [default: auto]",
    ),
]

#: The parameter names these options give a command (``compile_`` for ``--compile``).
TRAINING_PARAMETERS = (
    "width",
    "depth",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "schedule",
    "milestones",
    "grad_clip",
    "stop_loss",
    "match_loss",
    "epsilon",
    "inner_lr",
    "inner_iter",
    "ball",
    "rho",
    "adaptive",
    "augment",
    "image_size",
    "precision",
    "channels_last",
    "compile_",
    "data_on_device",
)


def training_options(function):
    """Add every option of ``TRAINING_OPTIONS`` to a click command, in that order in its --help."""
    for option in reversed(TRAINING_OPTIONS):
        function = option(function)
    return function


def explicit_training_values(values: dict) -> dict:
    """The training options the user gave, as ``TrainConfig`` field names (``compile_`` -> ``compile``).

    Args:
        values: the command's parameters (any extra names are ignored).

    Returns:
        ``{field: value}`` for every training option that is not None (None: left to the defaults).
    """
    out = {}
    for name in TRAINING_PARAMETERS:
        if values.get(name) is not None:
            out["compile" if name == "compile_" else name] = values[name]
    return out
