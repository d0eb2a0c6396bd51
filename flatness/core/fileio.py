"""Safe file writing: a temporary file beside the target, fsynced and renamed.

So a crash never leaves a half-written file under the real name, and an existing file is replaced
only in one atomic step.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Callable
from typing import Any

from flatness.core.errors import FlatnessError


def os_error_reason(err: BaseException) -> str:
    """A short one-line reason for an OSError.

    Also for h5py's long multi-line ones, which carry the C errno only inside their text.
    """
    code = getattr(err, "errno", None)
    if code:
        return os.strerror(code)
    text = str(err)
    found = re.search(r"errno = (\d+)", text)
    if found and int(found.group(1)):
        return os.strerror(int(found.group(1)))
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first[:200]


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _target_mode(path: str) -> int:
    """The mode a file written to ``path`` gets: an existing file's own, else 0666 less the umask.

    ``mkstemp`` creates its temporary file 0600 whatever the umask; without this every output would
    stay unreadable to the group and others after the rename.
    """
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        pass
    mask = os.umask(0)  # the only way to read the umask; set back at once
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside ``path`` to write the whole file to.

    On success it is fsynced and renamed over ``path`` in one step, on any failure removed. For
    writers that need a file name (h5py) as well as for ``atomic_write``. The file gets the mode an
    ordinary write would give it: an overwritten file keeps its own, a new one honours the umask.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
        os.close(fd)
    except OSError as err:
        raise FlatnessError(f"cannot write {path}: {os_error_reason(err)}") from None
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _target_mode(path))
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise FlatnessError(f"cannot write {path}: {os_error_reason(err)}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def atomic_write(path: str, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` through ``write(fileobj)`` atomically (temp file, fsync, rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            write(handle)


@contextlib.contextmanager
def atomic_h5py(path: str):
    """Yield a new ``h5py.File`` to fill; on success its bytes are written to ``path`` atomically.

    The file is built in memory and written with plain file I/O, so HDF5's C library never meets a
    full disk: on one, its failed writes and closes (``RuntimeError``s, and even crashes when a
    half-flushed file is freed) become this module's one-line ``FlatnessError`` and no file at all.
    """
    import h5py  # noqa: PLC0415 - h5py is heavy; only surface and probe array files need it

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as handle:
        yield handle
    atomic_write(path, lambda out: out.write(buffer.getbuffer()))


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see ``atomic_write``).

    Args:
        path: the file written.
        text: its whole content.
    """
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON (keys in their order, one final newline) to ``path`` atomically.

    Args:
        path: the file written.
        obj: any JSON-serialisable object.
    """
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n")


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file, read in chunks so that large files need little memory.

    Args:
        path: the file hashed.
        chunk: bytes read at a time.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
