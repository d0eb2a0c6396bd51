"""flatness experiment --quick end to end with the real modules: report, figures, and a rerun that skips
every finished step (no training, no probing, no surface point computed again)."""

import json
import os
import time

import pytest


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    from click.testing import CliRunner

    from flatness.cli.main import main

    out = tmp_path_factory.mktemp("exp") / "study"
    began = time.perf_counter()
    result = CliRunner().invoke(
        main,
        # two worker processes (the engine path), compared with one process below
        [
            "experiment",
            "--quick",
            "--methods",
            "erm,amp",
            "--seeds",
            "0,1",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
            "--workers",
            "2",
        ],
        catch_exceptions=False,
    )
    return out, result, time.perf_counter() - began


def test_the_same_numbers_with_two_workers_as_in_one_process(quick_study, tmp_path, cli):
    out, first, _ = quick_study
    assert first.exit_code == 0, first.output
    alone = tmp_path / "alone"
    result = cli(
        [
            "experiment",
            "--quick",
            "--methods",
            "erm,amp",
            "--seeds",
            "0,1",
            "--out",
            alone,
            "--device",
            "cpu",
            "--no-progress",
            "--workers",
            "1",
        ]
    )
    assert result.exit_code == 0, result.output
    a, b = (json.loads((folder / "comparison.json").read_text()) for folder in (out, alone))
    assert [r["key"] for r in a["rows"]] == [r["key"] for r in b["rows"]]
    for ra, rb in zip(a["rows"], b["rows"]):
        assert ra["methods"] == rb["methods"] and ra["versus"] == rb["versus"], ra["key"]
    assert [r["values"] for r in a["runs"]] == [r["values"] for r in b["runs"]]


def test_quick_experiment_writes_report_html_and_figures(quick_study):
    out, result, seconds = quick_study
    assert result.exit_code == 0, result.output
    report = (out / "REPORT.md").read_text()
    assert "flat-minima claim" in report and "Test accuracy" in report and "Welch" in report
    for line in report.splitlines():
        if line.startswith("!["):
            target = line[line.index("](") + 2 : -1]
            assert not os.path.isabs(target) and (out / target).is_file(), target
    figures = sorted(p.name for p in (out / "figures").iterdir())
    for name in (
        "compare-training.png",
        "compare-spectra.png",
        "compare-slices-1d.png",
        "compare-contours-2d.png",
        "interpolation.png",
        "erm-s0-contour.png",
        "amp-s0-contour.png",
    ):
        assert name in figures and (out / "figures" / name).stat().st_size > 2000, name
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("data:image/png;base64,") >= 7 and "<table>" in html
    comp = json.loads((out / "comparison.json").read_text())
    assert comp["methods"] == ["erm", "amp"] and len(comp["runs"]) == 4
    keys = {r["key"] for r in comp["rows"]}
    assert {"test_acc", "gap_acc", "lambda_1", "trace"} <= keys and any(k.startswith("sharp:") for k in keys)
    for m in ("erm", "amp"):
        for s in (0, 1):
            assert (out / "runs" / f"{m}-s{s}" / "probe.json").is_file()
    assert (out / "runs" / "erm-s0" / "surface-2d.h5").is_file()
    assert (out / "surfaces" / "interp-erm-amp-s0.h5").is_file()
    print(f"quick experiment: {seconds:.1f} s")
    print(
        "\n".join(
            f"{s['step']}: {s['seconds']:.1f}" for s in json.loads((out / "experiment.json").read_text())["steps"]
        )
    )


def test_rerun_skips_finished_steps_and_redoes_only_what_is_missing(quick_study, monkeypatch, cli):
    out, first, _ = quick_study
    assert first.exit_code == 0, first.output
    import flatness.study.experiment_steps as steps

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    probed = []
    real_probe = steps.run_probe

    def counting_probe(checkpoint, *a, **k):
        probed.append(checkpoint)
        return real_probe(checkpoint, *a, **k)

    computed = []
    real_surface = steps.compute_surface

    def counting_surface(*a, **k):
        summary = real_surface(*a, **k)
        computed.append(summary["computed_now"])
        return summary

    monkeypatch.setattr(steps, "train", no_training)
    monkeypatch.setattr(steps, "run_probe", counting_probe)
    monkeypatch.setattr(steps, "compute_surface", counting_surface)
    os.unlink(out / "runs" / "amp-s1" / "probe.json")  # as if killed before this probe finished
    began = time.perf_counter()
    # --workers 1: the steps run in this process, where the counting patches above apply
    result = cli(
        [
            "experiment",
            "--quick",
            "--methods",
            "erm,amp",
            "--seeds",
            "0,1",
            "--out",
            out,
            "--device",
            "cpu",
            "--no-progress",
            "--workers",
            "1",
        ]
    )
    assert result.exit_code == 0, result.output
    assert [os.path.basename(os.path.dirname(p)) for p in probed] == ["amp-s1"]
    assert computed and all(n == 0 for n in computed)
    state = json.loads((out / "experiment.json").read_text())
    now = [s for s in state["steps"] if not s.get("earlier")]
    assert all(s["skipped"] for s in now if s["step"].startswith(("train", "surface")))
    assert (out / "runs" / "amp-s1" / "probe.json").is_file()
    print(f"rerun: {time.perf_counter() - began:.1f} s")


def test_changed_settings_and_bad_options_are_refused(quick_study, cli):
    out, first, _ = quick_study
    result = cli(
        [
            "experiment",
            "--quick",
            "--methods",
            "erm,amp",
            "--seeds",
            "0,1",
            "--out",
            out,
            "--grid",
            "7",
            "--no-progress",
        ]
    )
    assert result.exit_code != 0 and "grid" in result.output and "Traceback" not in result.output
    for args, message in (
        (["--methods", "amp"], "erm"),
        (["--seeds", "a,b"], "seeds"),
        (["--methods", "erm,xyz"], "unknown method"),
    ):
        result = cli(["experiment", "--quick", "--methods", "erm,amp", "--out", out.parent / "other", *args])
        lines = [line for line in result.output.strip().splitlines() if line]
        assert result.exit_code != 0 and len(lines) == 1 and message in lines[0], result.output
