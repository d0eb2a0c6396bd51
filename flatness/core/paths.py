"""The one place where commands check the paths they read and write, before any work.

Two paths name the same file when they lead to the same (device, inode) after following links: a
string comparison misses symlinks, ``..``, bind mounts and hard links, so every check here compares
identities. Every command passes its inputs and outputs through :func:`check_paths` once, before
its first step, so that no output can replace one of its own inputs (``--force`` or not), no two
outputs of one command share a file, a link loop or a name that is not UTF-8 is a one-line error,
and an output's folder exists.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from flatness.core.errors import FlatnessError

FileId = tuple[int, int]


def shown(path: str) -> str:
    r"""``path`` as it can be printed: bytes that are not UTF-8 appear as ``\xNN`` escapes."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def check_name(path: str, label: str) -> str:
    """Refuse an empty path, or one whose name is not valid UTF-8 (formats and messages store names as text).

    Args:
        path: the path as given (str; undecodable bytes arrive as surrogate escapes).
        label: the option or argument it came from, e.g. ``--out``.

    Returns:
        ``path`` unchanged.
    """
    if not str(path).strip():  # "" would mean the current folder to os.path.join: never a default
        raise FlatnessError(f"{label} is empty; name a file or folder")
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise FlatnessError(f"{label} {shown(path)} is not a valid UTF-8 name; rename it") from None
    return path


def file_id(path: str) -> FileId | None:
    """(st_dev, st_ino) of what ``path`` leads to after following links; None when nothing is there.

    Args:
        path: any path.

    Returns:
        The identity pair, or None for a missing path or a dangling link. A link loop raises
        FlatnessError.
    """
    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise FlatnessError(f"{shown(path)} is a loop of symbolic links; remove or fix the link") from None
        return None
    return st.st_dev, st.st_ino


def target_key(path: str) -> tuple[FileId | None, str]:
    """What an output path will write to: the identity of its existing folder plus its final name.

    Two spellings of one future file (through links, ``..``) so compare equal before it exists.

    Args:
        path: an output path (the file may not exist yet).

    Returns:
        (identity of the resolved parent folder or None if missing, resolved file name).
    """
    real = os.path.realpath(path)
    return file_id(os.path.dirname(real) or "."), os.path.basename(real)


def same_file(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` lead to one file or folder (existing or, for outputs, to be written).

    Args:
        a: a path.
        b: another path.

    Returns:
        Whether they share a (device, inode) or, when missing, one resolved place.
    """
    ida, idb = file_id(a), file_id(b)
    if ida is not None and idb is not None:
        return ida == idb
    return target_key(a) == target_key(b)


def check_output(path: str, label: str, folder: bool = False) -> str:
    """One output path: a UTF-8 name, no link loop, a writable place of the right kind.

    Args:
        path: the output path.
        label: its option name, e.g. ``--out``.
        folder: the output is a folder (else a file).

    Returns:
        ``path`` unchanged.
    """
    check_name(path, label)
    if os.path.islink(path) and file_id(path) is None:  # file_id raised for a loop; this is a dangling link
        raise FlatnessError(f"{label} {shown(path)} is a symbolic link to nothing; remove it or choose another path")
    if folder:
        if os.path.exists(path) and not os.path.isdir(path):
            raise FlatnessError(f"{label} {shown(path)} is a file, not a folder")
        return path
    if os.path.isdir(path):
        raise FlatnessError(f"{label} {shown(path)} is a folder; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    file_id(parent)
    if not os.path.isdir(parent):
        raise FlatnessError(f"{label} {shown(path)}: folder {shown(parent)} does not exist")
    return path


def check_input(path: str, label: str, folder_ok: bool = True) -> str:
    """One input path: a UTF-8 name that exists, is readable and is no link loop.

    Args:
        path: the input path.
        label: its option or argument name.
        folder_ok: a folder is acceptable (a run folder), else only a file.

    Returns:
        ``path`` unchanged.
    """
    check_name(path, label)
    if file_id(path) is None:
        raise FlatnessError(f"{label} not found: {shown(path)}")
    if os.path.isdir(path) and not folder_ok:
        raise FlatnessError(f"{label} {shown(path)} is a folder; give a file")
    if not os.access(path, os.R_OK):
        raise FlatnessError(f"{label} {shown(path)} is not readable (permission denied)")
    return path


def check_paths(inputs: dict[str, Iterable[str]], outputs: dict[str, str | None], folders: Iterable[str] = ()) -> None:
    """The one path check of a command, run before its first step.

    Every output is checked by :func:`check_output`; an output file that is the same file as any input is
    refused (``--force`` cannot override it: the command would destroy what it reads), and so are two
    outputs of one command that are one file.

    Args:
        inputs: label -> paths read; a folder stands for itself and the files directly inside it.
        outputs: label -> path written (None: not written).
        folders: labels of outputs that are folders.

    Returns:
        None; raises FlatnessError on the first problem.
    """
    folders = set(folders)
    for label, path in outputs.items():
        if path is not None:
            check_output(path, label, folder=label in folders)
    check_distinct(inputs, {k: v for k, v in outputs.items() if k not in folders})


def check_distinct(inputs: dict[str, Iterable[str]], outputs: dict[str, str | None]) -> None:
    """The identity part of :func:`check_paths`, for output files whose folders are made later (figures).

    No output is an input, no two outputs are one file, no name is a link loop or not UTF-8.

    Args:
        inputs: label -> paths read; a folder stands for itself and the files directly inside it.
        outputs: label -> output file (None: not written).

    Returns:
        None; raises FlatnessError on the first problem.
    """
    given = [(label, path) for label, path in outputs.items() if path is not None]
    for label, path in given:
        check_name(path, label)
        file_id(path)
    read = [(label, path) for label, paths in inputs.items() for path in paths if path is not None]
    for label, path in read:
        check_name(path, label)
        file_id(path)  # a link loop is an error here too; a missing input is its reader's to report
    # A folder input (a run folder) is read through the files directly inside it.
    read += [
        (label, os.path.join(path, name))
        for label, path in list(read)
        if os.path.isdir(path)
        for name in sorted(os.listdir(path))
    ]
    read_ids = {}
    for _, in_path in read:
        ident = file_id(in_path)
        if ident is not None:
            read_ids.setdefault(ident, in_path)
    seen: dict[object, str] = {}
    for label, path in given:
        ident = file_id(path)
        if ident is not None and ident in read_ids:
            raise FlatnessError(
                f"{label} {shown(path)} is the same file as the input {shown(read_ids[ident])}; "
                "writing it would destroy the input, so choose another output path"
            )
        key = ident if ident is not None else target_key(path)
        if key in seen:
            raise FlatnessError(
                f"{seen[key]} and {label} are the same file ({shown(path)}); give each output its own path"
            )
        seen[key] = label


def check_new(paths: Iterable[str], force: bool) -> None:
    """Refuse outputs that exist already unless ``force`` (``--force``): one rule for every command's files.

    Checked before the command's first step, so a refusal writes nothing.

    Args:
        paths: the files the command will write.
        force: ``--force`` was given (replace them).

    Returns:
        None; raises FlatnessError naming the first existing file (and how many more).
    """
    if force:
        return
    existing = [p for p in paths if p is not None and os.path.lexists(p)]
    if existing:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FlatnessError(f"{shown(existing[0])} exists{more}; pass --force to replace it")
