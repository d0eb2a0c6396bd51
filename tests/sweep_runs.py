"""The tiny sweep the tests of flatness sweep share (4 cells on digits: ERM and SAM at two learning rates,
one seed, 2 epochs, the quick probe), run as the command in a child process, and its uninterrupted cells.csv."""

import subprocess
import sys

# 4 tiny cells on digits: ERM and SAM at two learning rates, one seed, 2 epochs, the quick probe.
TINY = ["--quick", "--dataset", "digits", "--grid", "method=erm,sam lr=0.02,0.1", "--seeds", "0"]


def sweep_cmd(out, *extra):
    entry = "from flatness.cli.main import main; main()"
    return [sys.executable, "-c", entry, "sweep", "--out", str(out), "--no-progress", *TINY, *extra]


def run_cli(out, *extra):
    subprocess.run(sweep_cmd(out, *extra), check=True, capture_output=True, text=True, timeout=300)


def uninterrupted_cells(tmp_path_factory):
    """The uninterrupted sweep's cells.csv, on two local worker processes (the tests' ``reference``)."""
    out = tmp_path_factory.mktemp("sweep") / "reference"
    run_cli(out, "--workers", "2")
    return (out / "cells.csv").read_text()
