"""flatness.cli.plot (``flatness plot``): the files it writes, and bad inputs or kinds as one-line errors."""

import pytest
from plot_helpers import make_surface


@pytest.mark.parametrize(
    "args,message",
    [
        ([], "no input"),
        (["missing.h5"], "not found"),
        (["notes.txt"], "unknown file type"),
        (["bad.json"], "not"),
        (["bad.h5"], "not"),
    ],
)
def test_bad_inputs_are_one_line_errors(tmp_path, cli, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5 at all")
    result = cli(["plot", *args])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and message in lines[0], result.output


def test_cli_plot_writes_files_and_kind_validation(tmp_path, cli):
    s = make_surface(tmp_path / "s.h5")
    result = cli(["plot", s, "--kind", "contour,3d", "--format", "svg", "--out", tmp_path / "o"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "s-contour.svg").exists() and (tmp_path / "o" / "s-3d.svg").exists()
    result = cli(["plot", s, "--kind", "pie"])
    assert result.exit_code != 0 and "unknown plot kind" in result.output
