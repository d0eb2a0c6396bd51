"""flatness.cli.probe (``flatness probe``): the sharpness it writes, and bad sharpness options as one-line
errors that write nothing."""

import json
import math

import pytest

import flatness.sharpness as S


def _has_probe_cli():
    import importlib.util

    return importlib.util.find_spec("flatness.cli.probe") is not None


@pytest.mark.skipif(not _has_probe_cli(), reason="flatness probe command not there yet")
def test_probe_cli_writes_sharpness(cli, digits_checkpoint, tmp_path):
    out = tmp_path / "probe.json"
    result = cli(
        [
            "probe",
            digits_checkpoint,
            "--sharpness",
            "all",
            "--samples",
            200,
            "--top-k",
            1,
            "--draws",
            4,
            "--ascent-steps",
            3,
            "--rho",
            "0.05,0.1",
            "--epsilon",
            "1e-3",
            "--quiet",
            "--out",
            out,
        ]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["sharpness"]
    assert [r["metric"] for r in rows] == ["keskar"] + [m for m in S.RHO_METRICS for _ in (0.05, 0.1)] + [
        "pac_bayes",
        "pac_bayes_magnitude",
    ]
    for r in rows:
        assert math.isfinite(r["value"])
        if r["metric"] in S.RHO_METRICS:
            assert r["rho"] in (0.05, 0.1)
    assert {r["draws"] for r in rows if "average_case" in r["metric"]} == {4}
    assert {r["iterations"] for r in rows if "worst_case" in r["metric"]} == {3}
    assert all(r["ball"] == "tensor" for r in rows if "worst_case" in r["metric"])
    assert "sharpness worst_case @ 0.1" in result.output


@pytest.mark.skipif(not _has_probe_cli(), reason="flatness probe command not there yet")
@pytest.mark.parametrize(
    "args, match",
    [
        (["--sharpness", "all", "--rho", "0"], "rho"),
        (["--sharpness", "all", "--rho", "-0.1"], "rho"),
        (["--sharpness", "keskar", "--epsilon", "0"], "epsilon"),
        (["--sharpness", "flatest"], "unknown sharpness metric"),
        (["--sharpness", "worst_case", "--ascent-steps", "0"], "ascent steps"),
        (["--sharpness", "average_case", "--draws", "0"], "draws"),
    ],
)
def test_probe_cli_rejects_bad_sharpness_options(cli, digits_checkpoint, tmp_path, args, match):
    out = tmp_path / "bad.json"
    result = cli(["probe", digits_checkpoint, "--samples", 50, "--top-k", 0, "--quiet", "--out", out] + args)
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and match in lines[0], result.output
    assert not out.exists()
