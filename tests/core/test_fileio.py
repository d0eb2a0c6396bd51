"""flatness.core.fileio: a file is replaced whole or not at all, with the mode an ordinary write gives it
(also through the commands: train and probe honour the umask)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat

import h5py
import pytest
from regression_helpers import REG_TRAIN, ref

from flatness.core.errors import FlatnessError
from flatness.core.fileio import (
    atomic_h5py,
    atomic_path,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    os_error_reason,
    sha256_file,
)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")

    def half(handle):
        handle.write(b"new, half written")
        raise KeyboardInterrupt  # any exception, even one that is no Exception

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), half)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["out.json"]


def test_a_write_replaces_the_file_whole_through_a_temporary_beside_it(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with atomic_path(str(path)) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path)  # same folder: the rename is one step
        assert os.path.basename(tmp).startswith(".out.txt.") and tmp.endswith(".tmp")
        with open(tmp, "w") as handle:
            handle.write("new")
        assert path.read_text() == "old"  # nothing under the real name until the end
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]


def test_an_overwritten_file_keeps_its_mode_and_a_new_one_honours_the_umask(tmp_path):
    path = tmp_path / "shared.txt"
    path.write_text("old")
    os.chmod(path, 0o640)
    atomic_write_text(str(path), "new")
    assert _mode(path) == 0o640
    old = os.umask(0o027)
    try:
        atomic_write_text(str(tmp_path / "fresh.txt"), "x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "fresh.txt") == 0o640  # 0666 less the umask, not mkstemp's 0600


def test_an_unwritable_folder_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(FlatnessError, match=f"cannot write {tmp_path}/missing/out.txt: No such file or directory"):
        atomic_write_text(str(tmp_path / "missing" / "out.txt"), "x")


def test_text_json_and_hdf5_contents_are_exactly_what_was_given(tmp_path):
    atomic_write_text(str(tmp_path / "t.txt"), "é\n")
    assert (tmp_path / "t.txt").read_bytes() == "é\n".encode()
    obj = {"b": 1, "a": [1.5, float("nan")], "c": None}
    atomic_write_json(str(tmp_path / "o.json"), obj)
    text = (tmp_path / "o.json").read_text()
    assert text == json.dumps(obj, indent=2) + "\n" and text.index('"b"') < text.index('"a"')  # keys in order
    with atomic_h5py(str(tmp_path / "a.h5")) as f:
        f.create_dataset("x", data=[1.0, 2.0])
        f.attrs["k"] = "v"
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f["x"][()].tolist() == [1.0, 2.0] and f.attrs["k"] == "v"
    assert sorted(os.listdir(tmp_path)) == ["a.h5", "o.json", "t.txt"]


def test_sha256_in_chunks_equals_the_digest_of_the_whole(tmp_path):
    data = bytes(range(256)) * 41  # not a multiple of the chunk
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(str(tmp_path / "f"), chunk=1000) == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(str(tmp_path / "empty")) == hashlib.sha256(b"").hexdigest()


def test_os_error_reasons_are_short_lines():
    assert os_error_reason(OSError(errno.ENOSPC, "ignored")) == os.strerror(errno.ENOSPC)
    # h5py's errors carry the C errno only inside their text
    h5_text = "Unable to synchronously create file (file write failed: time = x, errno = 28, error message = 'x')"
    assert os_error_reason(OSError(h5_text)) == os.strerror(28)
    assert os_error_reason(OSError("first line\nsecond line")) == "first line"
    assert os_error_reason(OSError()) == "OSError"
    assert len(os_error_reason(OSError("x" * 500))) == 200


def test_outputs_honour_the_umask(cli, reg, tmp_path):
    run = tmp_path / "run"
    old = os.umask(0o022)
    try:
        args = ["train", "--model", ref(reg, "make"), "--dataset", reg["npz"], "--loss", "mse", *REG_TRAIN]
        assert cli([*args, "--epochs", "1", "--out", run]).exit_code == 0
        assert (run / "config.json").stat().st_mode & 0o777 == 0o644
        assert (run / "last.pt").stat().st_mode & 0o777 == 0o644
        out = tmp_path / "p.json"
        out.write_text("{}")
        out.chmod(0o640)  # an overwritten file keeps its own mode
        result = cli(["probe", run, "--model", ref(reg, "make"), "--top-k", "1", "--out", out, "--force", "--quiet"])
        assert result.exit_code == 0, result.output
        assert out.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
