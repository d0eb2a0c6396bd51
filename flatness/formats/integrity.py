"""Whether a zip-based weight file (a ``.pt`` checkpoint, a ``.pt2`` program) holds the bytes it was written with.

``torch.load`` and ``torch.export.load`` read a zip archive's members without checking their CRC-32, so
a flipped byte in a tensor's payload loads as other weights and gives other numbers. Every member's
CRC is compared here, before torch reads the file; every loader of these files calls
:func:`check_zip_crc` first.
"""

from __future__ import annotations

import zipfile
import zlib

from flatness.core.errors import FlatnessError


def check_zip_crc(path: str, what: str = "checkpoint") -> None:
    """Refuse a zip archive whose members do not match their recorded CRC-32 (a damaged or altered file).

    A file that is not a zip archive (torch's legacy format) is left to its reader.

    Args:
        path: the file.
        what: what it is, for the message (``checkpoint``, ``.pt2 program``).

    Raises:
        FlatnessError: one line naming the first damaged member.
    """
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError) as err:
        reason = type(err).__name__
        raise FlatnessError(f"{path} is a damaged {what}: its zip archive is unreadable ({reason})") from None
    if bad is not None:
        raise FlatnessError(
            f"{path} is a damaged {what}: member {bad} fails its CRC check (a changed byte); "
            "it would load as other numbers, so it is refused"
        )
