"""The ``flatness`` command line: a thin click layer over the ``flatness`` library."""

from flatness.cli.main import main

__all__ = ["main"]
