"""cli/main.py: the command group's error policy, on a group of test commands that fail in every way.

Each expected failure is one line on stderr with its exit code (never 0 on a failure, never a traceback
unless ``--debug``); warnings are held back until a command has succeeded. Then the real group: every
command is registered, ``--version`` names the version.
"""

import errno
import signal
import warnings

import click
import pytest
from click.testing import CliRunner

from flatness.cli.main import EXIT_INTERNAL, FlatnessGroup, Interrupted, Terminated, main
from flatness.core.errors import SAFE_REPLACEMENT, DivergedError, FlatnessError
from flatness.version import __version__

FAILURES = {
    "flatness": FlatnessError("bad input:\n  line two"),
    "diverged": DivergedError("the loss is NaN at epoch 3"),
    "advice": FlatnessError(
        "cannot read x.pt: Weights only load failed. Re-running with weights_only=False will work."
    ),
    "disk": OSError(errno.ENOSPC, "No space left on device", "/out/s.h5"),
    "denied": OSError(errno.EACCES, "Permission denied", "/out/p.json"),
    "sigterm": Terminated(signal.SIGTERM),
    "sigint": Interrupted(signal.SIGINT),
    "raised-interrupt": KeyboardInterrupt(),
    "exit-zero": SystemExit(0),
    "bug": RuntimeError("index out of range\ndetails"),
}


@click.group(cls=FlatnessGroup)
@click.option("--debug", is_flag=True)
def group(debug):
    pass


@group.command()
@click.argument("kind")
def boom(kind):
    raise FAILURES[kind]


@group.command()
@click.option("--count", type=int, required=True)
@click.option("--fail", is_flag=True)
def warns(count, fail):
    for _ in range(count):
        warnings.warn("a library's warning\nsecond line", UserWarning, stacklevel=1)
    click.echo("done")
    if fail:
        raise FlatnessError("it failed")


@group.command()
def train():
    raise Interrupted(signal.SIGINT)


def _run(*args):
    return CliRunner().invoke(group, list(args))


@pytest.mark.parametrize(
    ("kind", "code", "line"),
    [
        ("flatness", 2, "Error: bad input: line two"),
        ("diverged", 3, "Error: the loss is NaN at epoch 3"),
        ("advice", 2, f"Error: cannot read x.pt: Weights only load failed. {SAFE_REPLACEMENT}"),
        ("disk", 2, "Error: disk full: No space left on device (/out/s.h5)"),
        ("denied", 2, "Error: Permission denied (/out/p.json)"),
        (
            "sigterm",
            128 + signal.SIGTERM,
            "Terminated (SIGTERM). Finished work is saved; rerun the same command with --resume to continue.",
        ),
        ("sigint", 130, "Interrupted. Finished work is saved; rerun the same command with --resume to continue."),
        (
            "raised-interrupt",
            2,
            "Error: the command stopped on KeyboardInterrupt raised by code it ran, not by a signal",
        ),
        ("exit-zero", 2, "Error: the command stopped on SystemExit"),
        (
            "bug",
            EXIT_INTERNAL,
            "Internal error: RuntimeError: index out of range (rerun with `flatness --debug ...` for the traceback, "
            "and please report it)",
        ),
    ],
)
def test_every_failure_is_one_line_with_its_exit_code(kind, code, line):
    result = _run("boom", kind)
    assert result.exit_code == code
    assert result.stdout == "" and result.stderr.startswith(line) and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output


def test_a_signal_names_what_the_interrupted_command_kept():
    result = _run("train")
    assert result.exit_code == 130
    assert (
        result.stderr == "Interrupted. Finished epochs are saved; rerun the same command with --resume to continue.\n"
    )


def test_a_usage_error_is_one_line_pointing_at_the_help():
    result = _run("warns", "--count", "x")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: Invalid value for '--count': 'x' is not a valid integer")
    assert result.stderr.endswith("(see `group warns --help`)\n") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("kind", ["flatness", "diverged", "disk", "bug"])
def test_debug_lets_the_exception_through(kind):
    result = _run("--debug", "boom", kind)
    assert result.exception is FAILURES[kind]


def test_warnings_wait_for_success_and_each_shows_once_in_one_line():
    result = _run("warns", "--count", "3")
    assert result.exit_code == 0 and result.stdout == "done\n"
    assert result.stderr == "Warning: a library's warning second line\n"
    failed = _run("warns", "--count", "2", "--fail")
    assert failed.exit_code == 2 and failed.stderr == "Error: it failed\n"  # nothing printed before the error


def test_the_real_group_registers_every_command_and_reports_its_version():
    runner = CliRunner()
    help_text = runner.invoke(main, ["--help"]).output
    for name in ("train", "probe", "surface", "plot", "compare", "experiment", "sweep", "correlate"):
        assert name in main.commands and f"  {name}" in help_text
    version = runner.invoke(main, ["--version"])
    assert version.exit_code == 0 and version.output.startswith(f"flatness {__version__} (")
