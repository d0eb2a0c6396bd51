"""``flatness train`` from its options: the run's config, its folder, and the torchrun relaunch of ``--nproc``.

``train_from_options`` turns what the user typed into a checked config (defaults < recipe < typed; on
``--resume``, the stored run's config) and trains it; ``relaunch_under_torchrun`` runs the same command
line again under torchrun with N processes.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from flatness.core import distributed
from flatness.core.paths import check_paths
from flatness.models.references import parse_model_args
from flatness.training.config import build_config, default_out_dir
from flatness.training.loop import train
from flatness.training.run_folder import resume_config
from flatness.training.tensorboard_log import check_logger, epoch_logger

NPROC_FLAG = "--nproc"


def needs_relaunch(nproc: int) -> bool:
    """Whether ``nproc`` processes are asked for and this process is not already one of torchrun's."""
    return nproc > 1 and not distributed.launched_by_torchrun()


def relaunch_under_torchrun(nproc: int, logger: str = "none", argv: list[str] | None = None) -> int:
    """Run this same command line under torchrun with ``nproc`` processes; returns torchrun's exit code.

    Args:
        nproc: processes per node.
        logger: the ``--log`` choice, checked first (a missing package is refused before any process starts).
        argv: the command line after the program name (default ``sys.argv[1:]``: the subcommand, or a
            global option such as ``--debug`` before it); its ``--nproc N`` is left out.
    """
    check_logger(logger)
    args, skip = [], False
    for arg in sys.argv[1:] if argv is None else argv:
        if skip:
            skip = False
        elif arg == NPROC_FLAG:
            skip = True
        elif not arg.startswith(NPROC_FLAG + "="):
            args.append(arg)
    command_line = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "flatness.cli",
        *args,
    ]
    return subprocess.call(command_line)


def train_from_options(
    options: dict[str, Any],
    out: str | None = None,
    *,
    resume: bool = False,
    recipe: str | None = None,
    progress: bool = True,
    logger: str = "none",
) -> str:
    """Train the run that ``flatness train``'s options describe; returns its folder.

    Args:
        options: ``TrainConfig`` fields as typed (None: not given; ``download`` False: not given).
        out: the run folder (None: ``default_out_dir`` of the config).
        resume: continue the run in ``out`` (its stored config, with the resumable changes typed).
        recipe: a named preset the typed options override.
        progress: a progress bar per epoch.
        logger: ``flatness.training.tensorboard_log.LOGGERS``.
    """
    check_logger(logger)  # a missing package is refused before anything is trained
    if out is not None:  # before resume_config reads the folder
        check_paths({}, {"--out": out}, folders=["--out"])
    explicit = {k: v for k, v in options.items() if v is not None}
    if "model_args" in explicit:  # a JSON object, checked (one line) before anything is trained
        explicit["model_args"] = parse_model_args(explicit["model_args"])
    if not explicit.get("download"):
        explicit.pop("download", None)
    config = build_config(explicit, recipe)
    if resume:
        out = out or default_out_dir(config)
        config = resume_config(out, explicit)
    out = out or default_out_dir(config)
    with epoch_logger(logger, out) as on_epoch:
        return train(config, out_dir=out, resume=resume, progress=progress, verbose=True, on_epoch=on_epoch)
