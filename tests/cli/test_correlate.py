"""flatness.cli.correlate (``flatness correlate``): the cells left out for missing the sweep's stop loss are
reported, and included with --include-unreached."""

import json

from sweep_tables import write_stop_sweep


def test_correlate_command_reports_the_left_out_cells_and_includes_them_when_asked(tmp_path, cli):
    write_stop_sweep(tmp_path, lambda i: i % 4 != 3)
    default = cli(["correlate", tmp_path, "--draws", "20", "--no-figures"])
    assert default.exit_code == 0 and "3 finished cell(s) did not reach the sweep's stop loss" in default.output
    assert json.loads((tmp_path / "correlation.json").read_text())["cells"] == 9
    every = cli(["correlate", tmp_path, "--draws", "20", "--no-figures", "--include-unreached", "--force"])
    assert every.exit_code == 0 and "are included (--include-unreached)" in every.output
    saved = json.loads((tmp_path / "correlation.json").read_text())
    assert (saved["cells"], saved["include_unreached"], saved["unreached_left_out"]) == (12, True, 0)
