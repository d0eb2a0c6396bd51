"""The ``flatness`` command group and its error policy.

Errors a user can cause (``FlatnessError``, bad files, full disks, Ctrl-C) print one line and exit
non-zero; ``flatness --debug CMD`` shows the full traceback instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import warnings

import click

from flatness.cli import compare, correlate, experiment, plot, probe, surface, sweep, train
from flatness.core import distributed
from flatness.core.devices import describe_runtime
from flatness.core.errors import FlatnessError, Signalled, single_line, without_unsafe_advice
from flatness.core.fileio import os_error_reason
from flatness.models.references import one_line
from flatness.version import __version__

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 1

# What an interrupted command has kept, and how to go on (one line each).
RESUME_HINTS = {
    "train": "finished epochs are saved; rerun the same command with --resume to continue",
    "surface": "finished points are saved; rerun the same command with --resume to continue",
    "experiment": "finished steps are saved; rerun the same command (same --out) to continue",
    "probe": "nothing was written; rerun the command",
    "plot": "finished figures are saved; rerun with --force to redraw all",
    "compare": "nothing was written; rerun the command",
    "sweep": "finished cells are saved; rerun the same command (same --out) to continue",
}


class Terminated(Signalled):
    """SIGTERM (kill, a scheduler's time limit, torchrun stopping a rank), raised where the process is,
    so that it unwinds exactly like Ctrl-C: the same cleanup, the same one-line message."""


class Interrupted(Signalled):
    """SIGINT (Ctrl-C): a real signal, unlike a ``KeyboardInterrupt`` that some code raises itself."""


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Turn SIGTERM into :class:`Terminated` and SIGINT into :class:`Interrupted` for the duration of a
    command (main thread only: Python delivers signals there), restoring the previous handlers afterwards.
    A SIGINT that the process ignores (started in the background) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)


class FlatnessGroup(click.Group):
    """A click group that turns expected failures into one-line errors."""

    def invoke(self, ctx):
        try:
            with sigterm_as_interrupt(), held_warnings(not _debug(ctx)) as caught:
                result = super().invoke(ctx)
            _show_warnings(caught)
            _leave_process_group(clean=True)
            return result
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except click.ClickException as err:
            if not isinstance(err, click.UsageError) or _debug(ctx):
                raise
            # a bad option value or name: one line, like every other error
            where = err.ctx.command_path if err.ctx is not None else ctx.command_path
            click.echo(f"Error: {err.format_message()} (see `{where} --help`)", err=True)
            ctx.exit(err.exit_code)
        except (Exception, KeyboardInterrupt, SystemExit, GeneratorExit) as err:
            if _debug(ctx):
                raise
            ctx.exit(_report(ctx, err))


def _report(ctx, err: BaseException) -> int:
    """Say on stderr, in one line, why the command failed; the exit code."""
    if isinstance(err, FlatnessError):
        click.echo(f"Error: {without_unsafe_advice(single_line(str(err)))}", err=True)
        return err.exit_code
    if isinstance(err, Signalled):
        name = ctx.invoked_subcommand or ""
        hint = RESUME_HINTS.get(name, "finished work is saved; rerun the same command with --resume to continue")
        signum = err.signum if isinstance(err, Terminated) else signal.SIGINT
        cause = "Terminated (SIGTERM)." if isinstance(err, Terminated) else "Interrupted."
        click.echo(f"{cause} {hint[0].upper()}{hint[1:]}.", err=True)
        return 128 + int(signum)
    if isinstance(err, OSError):
        where = f" ({err.filename})" if getattr(err, "filename", None) else ""
        reason = os_error_reason(err)
        if err.errno == errno.ENOSPC or reason == os.strerror(errno.ENOSPC):
            reason = f"disk full: {reason}"
        click.echo(f"Error: {reason}{where}", err=True)
        return 2
    if isinstance(err, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        # raised by code the command ran, not by a signal (those are Signalled): user code does not
        # decide the exit code, and nothing here says "interrupted" when no one interrupted
        click.echo(f"Error: the command stopped on {one_line(err)} raised by code it ran, not by a signal", err=True)
        return 2
    # a bug: one line by default, the traceback with --debug
    click.echo(
        f"Internal error: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
        "(rerun with `flatness --debug ...` for the traceback, and please report it)",
        err=True,
    )
    return EXIT_INTERNAL


@contextlib.contextmanager
def held_warnings(enabled: bool = True):
    """Hold back the warnings a command's libraries emit (torch, PIL, numpy), so that a failing
    command prints its one ``Error:`` line and nothing before it; a command that succeeds shows each
    distinct one afterwards, in one line (``--debug`` shows them as they come)."""
    if not enabled:
        yield []
        return
    with warnings.catch_warnings(record=True) as caught:
        yield caught


def _show_warnings(caught) -> None:
    seen = set()
    for item in caught:
        line = f"Warning: {single_line(str(item.message))}"
        if line not in seen:
            seen.add(line)
            click.echo(line, err=True)


def _leave_process_group(clean: bool) -> None:
    """Under torchrun: wait for every rank, then close the process group before the process exits
    (a rank exiting while a peer still talks to it makes gloo abort the peer)."""
    if distributed.is_distributed() and clean:
        distributed.barrier()
    distributed.shutdown()


def _debug(ctx) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("debug")) if root.params else False


def _print_version(ctx, _param, value) -> None:
    """``--version``: flatness's version, then torch's and the device (the first things a bug report needs)."""
    if not value or ctx.resilient_parsing:
        return
    click.echo(f"flatness {__version__} ({describe_runtime()})")
    ctx.exit()


@click.group(cls=FlatnessGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show flatness's version, torch's and the device, and exit.",
)
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """flatness: loss-landscape analysis of neural networks.

    Train with ERM, AMP or SAM (`train`), measure a checkpoint's Hessian spectrum and sharpness
    (`probe`), compute 1D/2D loss surfaces (`surface`), draw them (`plot`), put runs side by side
    (`compare`), or run the whole ERM-versus-AMP study in one go (`experiment`).
    """


# The order of the commands in the docs (docs/reference/cli.md); --help lists them alphabetically.
for _command in (
    train.command,
    probe.command,
    surface.command,
    plot.command,
    compare.command,
    experiment.command,
    sweep.command,
    correlate.command,
):
    main.add_command(_command)

COMMANDS = tuple(main.commands)
