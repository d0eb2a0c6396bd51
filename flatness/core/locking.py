"""Exclusive locks on output files and run folders, so two processes never write one result.

``fcntl.flock``: the kernel drops the lock when its process dies, SIGKILL included, so a crash never
leaves a stale lock and ``--resume`` can always go on. The lock lives where every process that can
write the output sees it, whatever its ``$TMPDIR`` or the path it was given (a symlink, ``..``, a bind
mount): a folder is locked on the folder itself (its inode), a file through a small hidden lock file
``.NAME.lock`` in the file's own (resolved) folder, removed again when the lock is released. Locks
guard processes that share a kernel; on a cluster's shared file system, give each job its own output.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from flatness.core.errors import FlatnessError

try:  # POSIX; on other systems locking is skipped (documented limitation)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_SUFFIX = ".lock"


class LockBusy(FlatnessError):
    """Another process holds the lock.

    The only lock failure worth waiting on: one that cannot be taken at all (a name too long, a
    read-only folder, no flock) is a plain ``FlatnessError``.
    """


def lock_path_for(path: str, folder: bool | None = None) -> str:
    """What is locked to guard ``path``: the folder itself, or the hidden lock file beside a file.

    Args:
        path: an output file or folder (existing or not).
        folder: whether ``path`` is a folder; None: whether it is one now.

    Returns:
        The resolved path of the folder or lock file.
    """
    real = os.path.realpath(path)
    if folder is None:
        folder = os.path.isdir(real)
    if folder:
        return real
    return os.path.join(os.path.dirname(real), "." + os.path.basename(real) + LOCK_SUFFIX)


def _same(fd: int, path: str) -> bool:
    """Whether the open ``fd`` is still what ``path`` names.

    A released lock file may have been unlinked, or a folder removed and made again, between our open
    and our flock.
    """
    try:
        st = os.stat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


# A process that was just killed (and the worker processes it had started, which the kernel kills
# with it) releases its locks within milliseconds; a live writer holds its lock for its whole run. So
# a busy lock is retried this long before it counts as another writer: a rerun right after a kill then
# starts instead of failing on the dying processes' locks.
BUSY_GRACE_SECONDS = 2.0


def _flock_within_grace(fd: int) -> bool:
    """Take the exclusive flock, waiting up to ``BUSY_GRACE_SECONDS``; False when it stays busy."""
    deadline = time.monotonic() + BUSY_GRACE_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _open_locked(target: str, folder: bool, path: str, what: str) -> int:
    """Open ``target`` and flock it (within the grace period); retries while the name moved under us."""
    for _ in range(100):
        try:
            fd = os.open(target, os.O_RDONLY if folder else os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:  # the place cannot take the lock file, so it cannot take the output either
            raise FlatnessError(f"cannot write {path}: {err.strerror or err}") from None
        try:
            if not _flock_within_grace(fd):
                os.close(fd)
                raise LockBusy(
                    f"another flatness process is writing this {what} ({path}); wait for it to finish or stop it first"
                )
        except OSError as err:  # a file system without flock: the lock cannot hold, say so
            os.close(fd)
            raise FlatnessError(f"cannot lock {path}: {err.strerror or err}") from None
        if _same(fd, target):
            return fd
        os.close(fd)
    raise FlatnessError(f"cannot lock {path}: its lock keeps being replaced")


@contextlib.contextmanager
def exclusive(path: str, what: str = "output") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the ``with`` block, or fail at once with a clear error.

    Args:
        path: the output file or folder. A folder (``what`` ending in "folder", or an existing one)
            is made if missing, locked on itself, and removed again on exit when this call made it
            and it is still empty.
        what: words for the error message, e.g. "run folder", "surface file".

    Returns:
        A context manager; raises FlatnessError when another process holds the lock.
    """
    if fcntl is None:
        yield
        return
    folder = what.endswith("folder") or os.path.isdir(path)
    made = False
    if folder and not os.path.isdir(path):
        try:
            os.makedirs(path)
            made = True
        except FileExistsError:
            if not os.path.isdir(path):
                raise FlatnessError(f"{path} is a file, not a {what}") from None
        except OSError as err:
            raise FlatnessError(f"cannot create {path}: {err.strerror or err}") from None
    target = lock_path_for(path, folder)
    if not folder and not os.path.isdir(os.path.dirname(target)):
        yield  # no folder, so nothing can be written there either: the writer reports it
        return
    fd = _open_locked(target, folder, path, what)
    try:
        yield
    finally:
        # Released in this order (unlink, then close) so that a waiter that opened the old name sees
        # it gone in its check and retries on the new one.
        with contextlib.suppress(OSError):
            if folder:
                if made and not os.listdir(target):
                    os.rmdir(target)
            else:
                os.unlink(target)
        os.close(fd)
