"""Exclusive locks on output files and run folders, so two processes never write one result.

``fcntl.flock`` on a side file: the kernel drops the lock when its process dies, SIGKILL included,
so a crash never leaves a stale lock behind and ``--resume`` can always go on.
"""
from __future__ import annotations

import contextlib
import os

from .errors import FlatnessError

try:  # POSIX; on other systems locking is skipped (documented limitation)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def lock_path_for(path: str) -> str:
    """The lock file guarding ``path``: ``DIR/.lock`` for a folder, ``.NAME.lock`` beside a file."""
    if os.path.isdir(path):
        return os.path.join(path, ".lock")
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.lock")


@contextlib.contextmanager
def exclusive(path: str, what: str = "output"):
    """Hold an exclusive lock on ``path`` for the ``with`` block, or fail at once with a clear error."""
    if fcntl is None:
        yield
        return
    lock_file = lock_path_for(path)
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise FlatnessError(f"cannot create lock file {lock_file}: {err.strerror or err}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FlatnessError(f"another flatness process is writing this {what} ({path}); "
                                "wait for it to finish or stop it first") from None
        yield
    finally:
        os.close(fd)  # closing drops the lock; the side file stays (removing it would race)
