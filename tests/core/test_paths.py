"""flatness.core.paths: names, identities through links, and the one path check of a command (an output
that is an input, two outputs that are one file, a dangling link, a missing folder), each one line."""

import os

import pytest

from flatness.core.errors import FlatnessError
from flatness.core.paths import check_input, check_name, check_output, check_paths, same_file, shown


def test_names_must_be_non_empty_utf8_and_are_shown_with_escapes():
    assert check_name("a/b.pt", "--out") == "a/b.pt"
    with pytest.raises(FlatnessError, match=r"^--out is empty; name a file or folder$"):
        check_name("  ", "--out")
    bad = os.fsdecode(b"run\xff")
    assert shown(bad) == "run\\xff"
    with pytest.raises(FlatnessError, match=r"^--out run\\xff is not a valid UTF-8 name; rename it$"):
        check_name(bad, "--out")


def test_same_file_follows_links_and_dot_dot_for_files_that_exist_and_that_do_not(tmp_path):
    (tmp_path / "sub").mkdir()
    real = tmp_path / "sub" / "a.pt"
    real.write_text("x")
    (tmp_path / "link.pt").symlink_to(real)
    (tmp_path / "dirlink").symlink_to(tmp_path / "sub")
    assert same_file(str(tmp_path / "link.pt"), str(real))
    assert same_file(str(tmp_path / "sub" / ".." / "sub" / "a.pt"), str(real))
    assert same_file(str(tmp_path / "dirlink" / "new.json"), str(tmp_path / "sub" / "new.json"))  # to be written
    assert not same_file(str(tmp_path / "sub" / "new.json"), str(tmp_path / "sub" / "other.json"))


def test_an_output_that_is_an_input_or_another_output_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_text("weights")
    (tmp_path / "alias.pt").symlink_to(run / "last.pt")
    with pytest.raises(FlatnessError, match=r"^--out .*alias\.pt is the same file as the input .*last\.pt; writing"):
        check_paths({"CHECKPOINT": [str(run)]}, {"--out": str(tmp_path / "alias.pt")})  # a folder stands for its files
    with pytest.raises(FlatnessError, match=r"^--out and --h5 are the same file"):
        check_paths({}, {"--out": str(tmp_path / "x.h5"), "--h5": str(tmp_path / "sub" / ".." / "x.h5")})
    check_paths({"CHECKPOINT": [str(run)]}, {"--out": str(tmp_path / "p.json"), "--h5": None})  # distinct: fine


def test_output_and_input_kinds(tmp_path):
    (tmp_path / "dangling").symlink_to(tmp_path / "nothing")
    with pytest.raises(FlatnessError, match="is a symbolic link to nothing"):
        check_output(str(tmp_path / "dangling"), "--out")
    with pytest.raises(FlatnessError, match="is a folder; give a file name"):
        check_output(str(tmp_path), "--out")
    with pytest.raises(FlatnessError, match=r"folder .*missing does not exist"):
        check_output(str(tmp_path / "missing" / "p.json"), "--out")
    (tmp_path / "f.txt").write_text("")
    with pytest.raises(FlatnessError, match="is a file, not a folder"):
        check_output(str(tmp_path / "f.txt"), "--out", folder=True)
    assert check_output(str(tmp_path / "new"), "--out", folder=True) == str(tmp_path / "new")
    with pytest.raises(FlatnessError, match=r"^CHECKPOINT not found: "):
        check_input(str(tmp_path / "gone.pt"), "CHECKPOINT")
    with pytest.raises(FlatnessError, match="is a folder; give a file"):
        check_input(str(tmp_path), "SURFACE", folder_ok=False)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(FlatnessError, match="is a loop of symbolic links"):
        check_input(str(tmp_path / "loop"), "CHECKPOINT")
