"""Exclusive locks on output files and run folders, so two processes never write one result.

``fcntl.flock`` on a small lock file: the kernel drops the lock when its process dies, SIGKILL
included, so a crash never leaves a stale lock behind and ``--resume`` can always go on. The lock
files live in one folder of their own under the system's temporary directory (named by a hash of the
guarded path), so nothing appears beside the user's files. Locks guard processes of one machine; on
a cluster's shared file system, give each job its own output.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile

from flatness.core.errors import FlatnessError

try:  # POSIX; on other systems locking is skipped (documented limitation)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def lock_dir() -> str:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"flatness-locks-{uid}")


def lock_path_for(path: str) -> str:
    """The lock file guarding ``path`` (a file or a folder, existing or not)."""
    key = hashlib.sha256(os.path.realpath(path).encode("utf-8")).hexdigest()[:32]
    return os.path.join(lock_dir(), f"{key}.lock")


@contextlib.contextmanager
def exclusive(path: str, what: str = "output"):
    """Hold an exclusive lock on ``path`` for the ``with`` block, or fail at once with a clear error."""
    if fcntl is None:
        yield
        return
    lock_file = lock_path_for(path)
    try:
        os.makedirs(lock_dir(), mode=0o700, exist_ok=True)
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
        os.close(fd)  # closing drops the lock; the lock file stays (removing it would race)
