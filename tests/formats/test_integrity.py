"""``flatness.formats.integrity``: every zip member's CRC-32 checked before torch reads a weight file."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import pytest
import torch
import torch.nn as nn

from flatness.core.errors import FlatnessError
from flatness.formats.checkpoint import read_checkpoint, save_checkpoint
from flatness.formats.integrity import check_zip_crc

# a payload whose bytes can be found in the file: torch stores tensor data uncompressed
_MARK = torch.arange(1000, 1064, dtype=torch.float32)


def _checkpoint(path) -> None:
    model = nn.Linear(8, 8, bias=False)
    with torch.no_grad():
        model.weight.copy_(_MARK.reshape(8, 8))
    save_checkpoint(str(path), model, model_spec={"name": "linear"}, config={}, epoch=1)


def _data_start(raw: bytes, info: zipfile.ZipInfo) -> int:
    """Where a member's data begins: after its local header, whose name and extra lengths are read from it."""
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


def _flip_in_payload(path) -> str:
    """Flip one bit of the marked tensor's payload; returns the zip member that holds it."""
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(_MARK.numpy().tobytes())
    assert at > 0 and bytes(raw).count(_MARK.numpy().tobytes()) == 1
    raw[at + 17] ^= 0x01
    path.write_bytes(bytes(raw))
    with zipfile.ZipFile(path) as archive:  # which member the flipped byte lies in, from the zip's own index
        for info in archive.infolist():
            start = _data_start(bytes(raw), info)
            if start <= at + 17 < start + info.compress_size:
                return info.filename
    raise AssertionError("flipped byte is in no member")


def test_an_intact_checkpoint_passes_and_loads(tmp_path):
    path = tmp_path / "ok.pt"
    _checkpoint(path)
    check_zip_crc(str(path))  # no error
    state = read_checkpoint(str(path))
    assert torch.equal(state["model_state"]["weight"], _MARK.reshape(8, 8))


def test_a_flipped_byte_is_refused_naming_the_member(tmp_path):
    path = tmp_path / "bad.pt"
    _checkpoint(path)
    member = _flip_in_payload(path)
    # the ground truth: the member's bytes no longer match the CRC its header records
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    assert info.compress_type == zipfile.ZIP_STORED
    raw = path.read_bytes()
    start = _data_start(raw, info)
    stored = raw[start : start + info.compress_size]
    assert zlib.crc32(stored) != info.CRC
    # torch itself would load other numbers without complaint
    loaded = torch.load(path, weights_only=True)["model_state"]["weight"]
    assert not torch.equal(loaded, _MARK.reshape(8, 8))
    with pytest.raises(FlatnessError) as err:
        check_zip_crc(str(path))
    message = str(err.value)
    assert "\n" not in message and member in message and "checkpoint" in message and "CRC" in message
    with pytest.raises(FlatnessError, match="CRC"):
        read_checkpoint(str(path))


def test_the_kind_of_file_is_named(tmp_path):
    path = tmp_path / "bad.pt"
    _checkpoint(path)
    _flip_in_payload(path)
    with pytest.raises(FlatnessError, match=r"damaged \.pt2 program"):
        check_zip_crc(str(path), ".pt2 program")


def test_a_file_that_is_not_a_zip_is_left_to_its_reader(tmp_path):
    legacy = tmp_path / "legacy.pt"
    buffer = io.BytesIO()
    torch.save({"w": _MARK}, buffer, _use_new_zipfile_serialization=False)
    legacy.write_bytes(buffer.getvalue())
    assert not zipfile.is_zipfile(legacy)
    check_zip_crc(str(legacy))  # no error: torch's legacy reader decides
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    check_zip_crc(str(text))


def test_a_truncated_archive_is_refused_in_one_line(tmp_path):
    path = tmp_path / "cut.pt"
    _checkpoint(path)
    raw = path.read_bytes()
    # keep the central directory (is_zipfile still says yes) but cut a member's data short
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
        start = _data_start(raw, info)
    path.write_bytes(raw[:start] + raw[start + 8 :])
    assert zipfile.is_zipfile(path)
    with pytest.raises(FlatnessError) as err:
        check_zip_crc(str(path))
    assert "damaged checkpoint" in str(err.value) and "\n" not in str(err.value)
