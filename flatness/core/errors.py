"""User-facing errors.

Anything a user can cause (a bad option, a missing or foreign file, a diverging run) raises
``FlatnessError`` with a one-line message; the CLI prints that line and exits non-zero instead of a
traceback. Bugs stay ordinary exceptions so they keep their traceback.
"""


class FlatnessError(Exception):
    """An error caused by the user's input or environment, reported as one line."""

    exit_code = 2


class DivergedError(FlatnessError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""

    exit_code = 3
