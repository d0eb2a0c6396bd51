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


class Signalled(KeyboardInterrupt):
    """A signal delivered to the process (SIGINT, SIGTERM), raised where the process is.

    Only these end a command with "Interrupted": a ``KeyboardInterrupt`` that code raises by itself (a
    user's factory, say) is not a signal and is reported as an error like anything else it raises.
    """

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
