"""flatness compare: grouping, mean/std, Welch's t-test against scipy, Holm-adjusted p-values beside the raw
ones in their families, single seed, outputs, bad input."""

import csv
import json
import os

import numpy as np
import pytest
from plot_helpers import make_probe, make_surface
from scipy import stats

from flatness.study.compare import compare
from flatness.study.runs import collect_runs
from flatness.study.significance import mean_std, welch
from flatness.study.tables import markdown_table

ERM = {"lam": [10.0, 12.0, 14.5], "trace": [100.0, 130.0, 90.0], "wc": [0.30, 0.35, 0.28], "acc": [0.95, 0.96, 0.94]}
AMP = {"lam": [6.0, 7.5, 6.2], "trace": [60.0, 80.0, 75.0], "wc": [0.10, 0.12, 0.09], "acc": [0.96, 0.965, 0.97]}


def sharp(wc, keskar):
    return [
        {"metric": "worst_case", "value": wc, "rho": 0.05, "p": 2, "ball": "tensor", "c": "1", "seconds": 1.0},
        {"metric": "keskar", "value": keskar, "epsilon": 1e-3, "p": None, "ball": None, "c": None, "seconds": 1.0},
        {"metric": "pac_bayes", "value": 12.0, "sigma": 0.29, "flatness": 12.0, "p": None, "c": "1", "seconds": 1.0},
    ]


def make_run(folder, method, seed, lam, trace, wc, acc, epochs=3, surfaces=False):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"method": method, "seed": seed, "dataset": "digits", "model": "convnet", "epochs": epochs}, f)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        for e in range(1, epochs + 1):
            f.write(
                json.dumps(
                    {
                        "epoch": e,
                        "lr": 0.05,
                        "train_loss": 1.0 / e,
                        "train_acc": 0.9 + 0.03 * e,
                        "test_loss": 1.2 / e,
                        "test_acc": acc - 0.01 * (epochs - e),
                        "seconds": 1.0,
                    }
                )
                + "\n"
            )
    make_probe(
        os.path.join(folder, "probe.json"),
        method=method,
        seed=seed,
        eig=[lam, lam / 2, lam / 3, lam / 4, lam / 5],
        trace={"estimate": trace, "stderr": 1.0, "hvps": 10},
        sharpness=sharp(wc, 10 * wc),
    )
    if surfaces:
        make_surface(os.path.join(folder, "surface-1d.h5"), two_d=False)
        make_surface(os.path.join(folder, "surface-2d.h5"))
    return folder


@pytest.fixture
def study(tmp_path):
    runs = []
    for method, vals in (("erm", ERM), ("amp", AMP)):
        for s in range(3):
            runs.append(
                make_run(
                    str(tmp_path / f"{method}-s{s}"),
                    method,
                    s,
                    vals["lam"][s],
                    vals["trace"][s],
                    vals["wc"][s],
                    vals["acc"][s],
                    surfaces=(s == 0),
                )
            )
    return runs


def row(comp, key):
    return next(r for r in comp["rows"] if r["key"] == key)


def test_mean_std_and_welch_match_scipy(study):
    records, _ = collect_runs(study)
    comp = compare(records)
    assert comp["methods"] == ["erm", "amp"] and comp["baseline"] == "erm"
    lam = row(comp, "lambda_1")
    assert lam["methods"]["erm"]["mean"] == pytest.approx(np.mean(ERM["lam"]))
    assert lam["methods"]["erm"]["std"] == pytest.approx(np.std(ERM["lam"], ddof=1))
    assert lam["methods"]["amp"]["n"] == 3
    ref = stats.ttest_ind(AMP["lam"], ERM["lam"], equal_var=False)
    assert lam["versus"]["amp"]["p"] == pytest.approx(ref.pvalue)
    assert lam["versus"]["amp"]["t"] == pytest.approx(ref.statistic)
    assert lam["versus"]["amp"]["diff"] == pytest.approx(np.mean(AMP["lam"]) - np.mean(ERM["lam"]))
    assert lam["versus"]["amp"]["direction"] == "flatter"
    tr = row(comp, "trace")
    assert tr["versus"]["amp"]["p"] == pytest.approx(
        stats.ttest_ind(AMP["trace"], ERM["trace"], equal_var=False).pvalue
    )
    wc = row(comp, "sharp:worst_case ρ=0.05 p=2")
    assert wc["methods"]["amp"]["mean"] == pytest.approx(np.mean(AMP["wc"]))
    assert row(comp, "sharp:keskar ε=0.001")["unit"] == "%"
    pb = row(comp, "sharp:pac_bayes")
    assert pb["versus"]["amp"]["p"] is None and "zero variance" in pb["versus"]["amp"]["note"]
    acc = row(comp, "test_acc")
    assert acc["methods"]["amp"]["mean"] == pytest.approx(100 * np.mean(AMP["acc"]))
    assert acc["versus"]["amp"]["direction"] == "better"
    # gap = probe train accuracy (eval mode) − final test accuracy
    assert row(comp, "gap_acc")["methods"]["erm"]["values"][0] == pytest.approx(99.0 - 95.0)
    md = markdown_table(comp)
    assert "Welch" in md and "weak evidence" in md and "λmax" in md
    assert md.count("\n|") >= len(comp["rows"]) + 1


def test_single_seed_says_std_undefined(tmp_path):
    a = make_run(str(tmp_path / "e"), "erm", 0, 10.0, 100.0, 0.3, 0.95)
    b = make_run(str(tmp_path / "a"), "amp", 0, 6.0, 60.0, 0.1, 0.96)
    comp = compare(collect_runs([a, b])[0])
    lam = row(comp, "lambda_1")
    assert lam["methods"]["erm"]["std"] is None
    assert lam["versus"]["amp"]["p"] is None and lam["versus"]["amp"]["diff"] == pytest.approx(-4.0)
    md = markdown_table(comp)
    assert "std undefined" in md and "needs ≥ 2 seeds" in md
    assert mean_std([1.0]) == (1.0, None, 1) and welch([1.0], [2.0, 3.0])["p"] is None


def test_probe_files_as_inputs_find_their_run_logs(tmp_path):
    a = make_run(str(tmp_path / "e"), "erm", 0, 10.0, 100.0, 0.3, 0.95)
    records, _ = collect_runs([os.path.join(a, "probe.json")])
    assert records[0].method == "erm" and records[0].values["lambda_1"] == 10.0
    assert "test_acc" in records[0].values  # found metrics.jsonl beside the probe


def test_outputs_markdown_json_csv_and_figures(study, tmp_path, cli):
    out = tmp_path / "cmp"
    result = cli(["compare", *study, "--out", out, "--json", tmp_path / "c.json", "--csv", tmp_path / "c.csv"])
    assert result.exit_code == 0, result.output
    assert "| quantity" in result.output
    for name in (
        "comparison.md",
        "compare-training.png",
        "compare-spectra.png",
        "compare-slices-1d.png",
        "compare-contours-2d.png",
    ):
        assert (out / name).is_file() and (out / name).stat().st_size > 500, name
    data = json.loads((tmp_path / "c.json").read_text())
    assert len(data["runs"]) == 6
    rows = list(csv.reader(open(tmp_path / "c.csv")))
    header = rows[0]
    assert any(h.startswith("worst_case ρ=0.05") for h in header) and any(h.startswith("λmax") for h in header)
    assert sum(1 for r in rows if r[0] == "run") == 6
    again = cli(["compare", *study, "--out", out])
    assert again.exit_code != 0 and "--force" in again.output
    assert cli(["compare", *study, "--out", out, "--force"]).exit_code == 0


@pytest.mark.parametrize(
    "setup,message",
    [
        ("none", "no inputs"),
        ("missing", "not found"),
        ("txt", "unknown input type"),
        ("emptydir", "not a run folder"),
        ("badjson", "not"),
    ],
)
def test_bad_inputs(tmp_path, cli, setup, message):
    args = {
        "none": [],
        "missing": [tmp_path / "nope"],
        "txt": [tmp_path / "x.txt"],
        "emptydir": [tmp_path / "empty"],
        "badjson": [tmp_path / "b.json"],
    }[setup]
    (tmp_path / "x.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "b.json").write_text("{")
    result = cli(["compare", *args])
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and message in lines[0], result.output


def test_direction_words_and_method_order_of_the_split_modules():
    from flatness.study.quantities import Quantity
    from flatness.study.runs import sorted_methods
    from flatness.study.significance import direction

    flat = Quantity("trace", "trace", "", "", "lower", True)
    loss = Quantity("gap_loss", "gap", "nats", "", "lower")
    acc = Quantity("test_acc", "acc", "%", "", "higher")
    assert [direction(flat, -1.0), direction(flat, 1.0), direction(flat, 0.0), direction(flat, None)] == [
        "flatter",
        "sharper",
        None,
        None,
    ]
    assert [direction(loss, -1.0), direction(loss, 1.0), direction(acc, 1.0), direction(acc, -1.0)] == [
        "better",
        "worse",
        "better",
        "worse",
    ]
    assert sorted_methods(["zeta", "sam", "erm", "alpha", "amp", "erm"]) == ["erm", "amp", "sam", "alpha", "zeta"]


def test_compare_rows_against_hand_means_and_welch_for_three_methods_and_another_baseline():
    from flatness.study.run_record import RunRecord

    lam = {"erm": [10.0, 14.0, 9.0], "amp": [4.0, 5.0, 9.0], "sam": [7.0]}
    acc = {"erm": [90.0, 91.0, 95.0], "amp": [93.0, 93.5, 92.0], "sam": [94.0, 96.0]}
    records = []
    for method in ("sam", "amp", "erm"):  # given out of the tables' order
        for seed, a in enumerate(acc[method]):
            values = {"test_acc": a}
            if seed < len(lam[method]):
                values["lambda_1"] = lam[method][seed]
            records.append(RunRecord(source=f"{method}{seed}", method=method, seed=seed, values=values))
    comp = compare(records)
    assert comp["methods"] == ["erm", "amp", "sam"] and comp["others"] == ["amp", "sam"]
    lam_row, acc_row = row(comp, "lambda_1"), row(comp, "test_acc")
    assert lam_row["methods"]["erm"] == {
        "mean": 11.0,
        "std": pytest.approx(np.sqrt(7.0)),
        "n": 3,
        "values": [10.0, 14.0, 9.0],
    }
    assert lam_row["methods"]["sam"] == {"mean": 7.0, "std": None, "n": 1, "values": [7.0]}
    amp = lam_row["versus"]["amp"]
    ref = stats.ttest_ind(lam["amp"], lam["erm"], equal_var=False)
    assert (amp["diff"], amp["t"], amp["p"]) == (
        pytest.approx(6.0 - 11.0),
        pytest.approx(ref.statistic),
        pytest.approx(ref.pvalue),
    )
    assert amp["direction"] == "flatter"
    sam = lam_row["versus"]["sam"]
    assert sam["diff"] == pytest.approx(-4.0) and sam["p"] is None and sam["p_holm"] is None
    # test accuracy: sam's two seeds against erm's three; better is higher
    ref = stats.ttest_ind(acc["sam"], acc["erm"], equal_var=False)
    assert acc_row["versus"]["sam"]["p"] == pytest.approx(ref.pvalue)
    assert acc_row["versus"]["sam"]["diff"] == pytest.approx(95.0 - 92.0)
    assert acc_row["versus"]["sam"]["direction"] == "better"
    # another baseline: every difference is taken against it
    by_amp = compare(records, baseline="amp")
    assert by_amp["baseline"] == "amp" and by_amp["others"] == ["erm", "sam"]
    assert row(by_amp, "lambda_1")["versus"]["erm"]["diff"] == pytest.approx(5.0)
    assert row(by_amp, "lambda_1")["versus"]["erm"]["direction"] == "sharper"
    none = compare(records, baseline="newton")
    assert none["baseline"] is None and none["others"] == [] and row(none, "lambda_1")["versus"] == {}


def test_comparison_adds_holm_adjusted_p_values_beside_the_raw_ones():
    from flatness.study.compare import compare
    from flatness.study.run_record import RunRecord
    from flatness.study.tables import markdown_table

    erm = [{"trace": 10.0 + s, "lambda_1": 5.0 + 0.1 * s} for s in range(3)]
    amp = [{"trace": 4.0 + s, "lambda_1": 5.05 + 0.1 * s} for s in range(3)]
    records = [
        RunRecord(source=f"{m}{s}", method=m, seed=s, values=v)
        for m, vals in (("erm", erm), ("amp", amp))
        for s, v in enumerate(vals)
    ]
    comp = compare(records)
    raw = {r["key"]: r["versus"]["amp"]["p"] for r in comp["rows"]}
    welch_trace = stats.ttest_ind([4, 5, 6], [10, 11, 12], equal_var=False).pvalue
    welch_lambda = stats.ttest_ind([5.05, 5.15, 5.25], [5.0, 5.1, 5.2], equal_var=False).pvalue
    assert raw == {"trace": pytest.approx(welch_trace), "lambda_1": pytest.approx(welch_lambda)}
    small, large = sorted([welch_trace, welch_lambda])
    expected = {welch_trace: min(1, 2 * small) if welch_trace == small else max(min(1, 2 * small), large)}
    adjusted = {r["key"]: r["versus"]["amp"]["p_holm"] for r in comp["rows"]}
    assert adjusted["trace"] == pytest.approx(expected[welch_trace])
    assert adjusted["lambda_1"] == pytest.approx(max(2 * small, large))
    assert "p (Holm)" in markdown_table(comp)


def test_holm_families_flatness_measures_test_accuracy_alone_and_the_rest():
    from flatness.study.compare import compare
    from flatness.study.run_record import RunRecord
    from flatness.study.significance import holm_family

    def values(s, shift):
        return {
            "trace": 10.0 + s - shift,
            "lambda_1": 5.0 + 0.1 * s,
            "test_acc": 90.0 + s + shift,
            "train_acc": 99.0 + 0.1 * s + 0.01 * shift,
            "train_loss": 0.1 + 0.01 * s + 0.001 * shift,
        }

    records = [
        RunRecord(source=f"{m}{s}", method=m, seed=s, values=values(s, 3.0 if m == "amp" else 0.0))
        for m in ("erm", "amp")
        for s in range(3)
    ]
    comp = compare(records)
    by = {r["key"]: r for r in comp["rows"]}
    assert {holm_family(by[k]) for k in ("trace", "lambda_1")} == {"flatness"}
    assert holm_family(by["test_acc"]) == "generalisation"
    # the one pre-specified generalisation test is a family of one: adjusted equals raw
    assert by["test_acc"]["versus"]["amp"]["p_holm"] == pytest.approx(by["test_acc"]["versus"]["amp"]["p"])
    # the flatness measures are adjusted among themselves only (two of them here)
    flat = sorted(by[k]["versus"]["amp"]["p"] for k in ("trace", "lambda_1"))
    assert min(by[k]["versus"]["amp"]["p_holm"] for k in ("trace", "lambda_1")) == pytest.approx(min(1, 2 * flat[0]))
