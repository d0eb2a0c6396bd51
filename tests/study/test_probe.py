"""run_probe, the probe JSON format and `flatness probe` on the digits fixtures."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from flatness.core.errors import FlatnessError
from flatness.formats.probe_file import read_probe, read_probe_arrays, write_probe
from flatness.sharpness.measure import SharpnessSettings
from flatness.study.probe import ProbeSettings, run_probe

FAST = ["--samples", 60, "--batch-size", 25, "--top-k", 2, "--tol", 1e-3, "--quiet"]


def _one_line_error(result):
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    return lines[0]


def test_cli_probe_writes_json_and_sidecar(cli, digits_checkpoint, tmp_path):
    out = tmp_path / "p.json"
    res = cli(
        [
            "probe",
            digits_checkpoint,
            *FAST,
            "--trace",
            "--trace-samples",
            6,
            "--density",
            "--density-steps",
            8,
            "--density-vectors",
            2,
            "--save-vectors",
            "--out",
            out,
        ]
    )
    assert res.exit_code == 0, res.output
    assert "top-2 eigenvalues" in res.output and "wrote" in res.output
    data = read_probe(str(out))
    for key in (
        "flatness_version",
        "checkpoint",
        "data",
        "loss",
        "accuracy",
        "num_params",
        "weight_norm",
        "distance_from_init",
        "hessian",
        "trace",
        "density",
        "sharpness",
        "sidecar",
    ):
        assert key in data
    assert set(data["checkpoint"]) >= {"path", "sha256", "dataset", "model", "method", "epoch", "seed"}
    assert data["data"] == {"dataset": "digits", "split": "train", "samples": 60, "batch_size": 25}
    hess = data["hessian"]
    assert len(hess["eigenvalues"]) == 2 and hess["eigenvalues"][0] >= hess["eigenvalues"][1]
    assert hess["converged"] and max(hess["residuals"]) <= 1e-3 and hess["hvps"] > 0
    assert set(hess) >= {"method", "eigenvalues", "residuals", "hvps", "seconds", "tol", "converged", "negative"}
    assert set(data["trace"]) >= {"estimate", "stderr", "hvps", "samples", "method"}
    dens = data["density"]
    assert abs(sum(dens["weights"]) - 1) < 1e-9 and len(dens["grid"]) == len(dens["values"])
    assert data["sidecar"] == "p.h5" and (tmp_path / "p.h5").is_file()
    arrays = read_probe_arrays(str(out))
    assert arrays["eigenvectors"].shape == (2, data["num_params"])
    np.testing.assert_allclose(np.linalg.norm(arrays["eigenvectors"], axis=1), 1, rtol=1e-5)
    assert arrays["density/nodes"].shape == (2, 8)
    assert data["sharpness"] is None and data["distance_from_init"] is None

    # no clobbering without --force, one line; --force replaces
    again = cli(["probe", digits_checkpoint, *FAST, "--out", out])
    assert "exists" in _one_line_error(again)
    assert cli(["probe", digits_checkpoint, *FAST, "--out", out, "--force"]).exit_code == 0
    assert read_probe(str(out))["sidecar"] is None


def test_run_probe_reproducible_and_eigenvalues_match_direct(digits_checkpoint):
    kw = dict(samples=50, batch_size=20, top_k=2, tol=1e-4, progress=False, device="cpu")
    a, b = run_probe(digits_checkpoint, ProbeSettings(**kw)), run_probe(digits_checkpoint, ProbeSettings(**kw))
    assert a["hessian"]["eigenvalues"] == b["hessian"]["eigenvalues"] and a["loss"] == b["loss"]
    p = run_probe(digits_checkpoint, ProbeSettings(eig_method="power", max_iter=400, **{**kw, "top_k": 1, "tol": 1e-3}))
    assert abs(p["hessian"]["eigenvalues"][0] - a["hessian"]["eigenvalues"][0]) <= 2e-3 * abs(
        a["hessian"]["eigenvalues"][0]
    )
    assert p["hessian"]["method"] == "power"


def test_distance_from_init(tmp_path):
    from conftest import quick_digits_checkpoint  # tests/ is on the path (pyproject's pythonpath)

    run = tmp_path / "run"
    run.mkdir()
    quick_digits_checkpoint(run / "init.pt", model_name="mlp", steps=0, width=8, depth=1)
    last = quick_digits_checkpoint(run / "last.pt", model_name="mlp", steps=5, width=8, depth=1)
    result = run_probe(last, ProbeSettings(samples=30, batch_size=30, top_k=1, tol=1e-3, progress=False))
    assert result["distance_from_init"] > 0
    assert (
        run_probe(str(run / "init.pt"), ProbeSettings(samples=30, top_k=0, progress=False))["distance_from_init"] == 0.0
    )


def test_sharpness_hook(monkeypatch, digits_mlp_checkpoint):
    """run_probe hands the validated names, radii and settings to measure_sharpness, on all probe data."""
    import flatness.study.probe as probe
    from flatness.sharpness import METRIC_NAMES, SharpnessRecord

    @dataclasses.dataclass(frozen=True)
    class Result(SharpnessRecord):
        metric: str
        value: float = 0.5

    calls = {}

    def fake(model, data, loss_fn=None, settings=None, output_fn=None):
        calls.update(settings=settings, n=data.n, training=model.training)
        return [Result(m) for m in settings.metrics]

    monkeypatch.setattr(probe, "measure_sharpness", fake)
    sharp = SharpnessSettings(metrics="all", rhos=[0.05], ball="global", draws=None)
    settings = ProbeSettings(samples=40, top_k=0, seed=3, progress=False, sharpness=sharp)
    result = run_probe(digits_mlp_checkpoint, settings)
    assert result["sharpness"] == [{"metric": m, "value": 0.5} for m in METRIC_NAMES]
    given = calls["settings"]
    assert given.metrics == METRIC_NAMES and calls["n"] == 40 and not calls["training"]
    assert given.rhos == (0.05,) and given.epsilons == (1e-3, 5e-4)  # the defaults, resolved once
    assert (given.ball, given.draws, given.seed) == ("global", None, 3)  # the probe's seed
    with pytest.raises(FlatnessError, match="unknown sharpness metric"):
        run_probe(digits_mlp_checkpoint, ProbeSettings(sharpness=SharpnessSettings(metrics="bogus")))
    with pytest.raises(FlatnessError, match="rho"):
        run_probe(digits_mlp_checkpoint, ProbeSettings(sharpness=SharpnessSettings(metrics="worst_case", rhos=[-1.0])))
    with pytest.raises(FlatnessError, match="unknown sharpness option"):
        ProbeSettings.from_dict({"sharpness": "worst_case", "sharpness_options": {"rho": [1.0]}})
    with pytest.raises(FlatnessError, match="unknown probe option"):
        ProbeSettings.from_dict({"rhos": [1.0]})


def test_cli_sharpness_options_validated(cli, digits_mlp_checkpoint, tmp_path):
    out = tmp_path / "s.json"
    _one_line_error(cli(["probe", digits_mlp_checkpoint, *FAST, "--out", out, "--sharpness", "nonsense"]))
    _one_line_error(cli(["probe", digits_mlp_checkpoint, *FAST, "--out", out, "--sharpness", "all", "--rho", "0"]))
    _one_line_error(
        cli(["probe", digits_mlp_checkpoint, *FAST, "--out", out, "--sharpness", "all", "--epsilon", "abc"])
    )
    assert not out.exists()


def test_cli_bad_inputs(cli, digits_mlp_checkpoint, tmp_path):
    out = tmp_path / "x.json"
    assert "not found" in _one_line_error(cli(["probe", tmp_path / "missing.pt", "--out", out]))
    raw = open(digits_mlp_checkpoint, "rb").read()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    _one_line_error(cli(["probe", tmp_path / "trunc.pt", "--out", out]))
    (tmp_path / "text.pt").write_text("hello, not a checkpoint\n")
    _one_line_error(cli(["probe", tmp_path / "text.pt", "--out", out]))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    _one_line_error(cli(["probe", tmp_path / "foreign.pt", "--out", out]))
    # flatness.core.limits refuses the count before the model is even loaded, naming the bound
    assert "bound of 1000 Hessian eigenvalues" in _one_line_error(
        cli(["probe", digits_mlp_checkpoint, "--top-k", 10**7, "--samples", 20, "--out", out])
    )
    _one_line_error(cli(["probe", digits_mlp_checkpoint, "--samples", 0, "--out", out]))
    assert "split" in _one_line_error(cli(["probe", digits_mlp_checkpoint, "--split", "valid", "--out", out]))
    assert not out.exists()


def test_write_probe_nonfinite_and_read_errors(tmp_path):
    result = {
        "flatness_version": "0",
        "checkpoint": {},
        "data": {},
        "loss": float("nan"),
        "accuracy": 0.1,
        "num_params": 3,
        "weight_norm": float("inf"),
        "distance_from_init": None,
        "hessian": {"eigenvalues": [1.0, float("nan")], "residuals": [np.float32(1e-5), None]},
        "sidecar": None,
    }
    path = tmp_path / "r.json"
    write_probe(str(path), result)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = json.loads(text)
    assert data["loss"] is None and data["weight_norm"] is None and data["hessian"]["eigenvalues"] == [1.0, None]
    assert read_probe(str(path))["accuracy"] == 0.1
    with pytest.raises(FlatnessError, match="exists"):
        write_probe(str(path), result)
    (tmp_path / "trunc.json").write_text(text[: len(text) // 2])
    with pytest.raises(FlatnessError):
        read_probe(str(tmp_path / "trunc.json"))
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(FlatnessError, match="missing"):
        read_probe(str(tmp_path / "other.json"))
    with pytest.raises(FlatnessError, match="not found"):
        read_probe(str(tmp_path / "nope.json"))
    with pytest.raises(FlatnessError, match="no sidecar"):
        read_probe_arrays(str(path))


def test_float64_probe_agrees_with_float32_and_records_its_dtype(cli, digits_checkpoint, tmp_path):
    outs = {}
    for dtype in ("float32", "float64"):
        out = tmp_path / f"{dtype}.json"
        result = cli(
            [
                "probe",
                digits_checkpoint,
                *FAST,
                "--dtype",
                dtype,
                "--sharpness",
                "worst_case",
                "--rho",
                "0.05",
                "--out",
                out,
            ]
        )
        assert result.exit_code == 0, result.output
        outs[dtype] = read_probe(str(out))
        assert outs[dtype]["dtype"] == dtype
    a, b = outs["float32"], outs["float64"]
    assert b["hessian"]["eigenvalues"] == pytest.approx(a["hessian"]["eigenvalues"], rel=1e-3)
    assert b["sharpness"][0]["value"] == pytest.approx(a["sharpness"][0]["value"], rel=2e-2)
    assert max(b["hessian"]["residuals"]) <= 1e-3


def test_params_block_gives_that_blocks_spectrum(cli, digits_checkpoint, tmp_path):
    """--params restricts the Hessian to a block: its top eigenvalue is the block operator's (computed
    here independently on the same data), and by eigenvalue interlacing it cannot exceed the full
    Hessian's top eigenvalue."""
    from flatness.data.probe_data import load_probe_data
    from flatness.formats.checkpoint import load_checkpoint
    from flatness.hessian import HessianOperator, lanczos

    kw = dict(samples=60, batch_size=25, top_k=1, tol=1e-6, max_iter=200, progress=False, device="cpu")
    full = run_probe(digits_checkpoint, ProbeSettings(**kw))
    block = run_probe(digits_checkpoint, ProbeSettings(params="classifier.3.*,features.0.weight", **kw))
    assert block["hessian_params"] == ["features.0.weight", "classifier.3.weight", "classifier.3.bias"]
    assert block["num_params"] == full["num_params"] and full["hessian_params"] is None
    assert block["hessian_dim"] == 16 * 9 + 64 * 10 + 10 and full["hessian_dim"] == full["num_params"]
    model, _ = load_checkpoint(digits_checkpoint)
    op = HessianOperator(model, load_probe_data("digits", "train", 60, 25), params=block["hessian_params"])
    direct = lanczos(op, k=1, tol=1e-6, seed=5).eigenvalues[0]
    top_block, top_full = block["hessian"]["eigenvalues"][0], full["hessian"]["eigenvalues"][0]
    assert top_block == pytest.approx(direct, rel=1e-5)
    assert top_block <= top_full * (1 + 1e-6) and top_block != pytest.approx(top_full, rel=1e-3)

    out = tmp_path / "block.json"
    res = cli(["probe", digits_checkpoint, *FAST, "--params", "classifier.*", "--out", out])
    assert res.exit_code == 0 and "Hessian restricted to 4 tensor(s)" in res.output, res.output
    assert read_probe(str(out))["hessian_params"][0] == "classifier.1.weight"
    bad = cli(["probe", digits_checkpoint, *FAST, "--params", "layer9.*", "--out", tmp_path / "bad.json"])
    assert "matches no trainable parameter" in _one_line_error(bad) and not (tmp_path / "bad.json").exists()


def test_probe_settings_are_frozen_and_checked_once():
    """checked() resolves every default (samples N|all, metric names, radii typed as text, the sharpness
    seed) and names the option of each bad value; the dict form round-trips."""
    import dataclasses

    from flatness.sharpness.oracle import METRIC_NAMES

    sharp = SharpnessSettings(metrics="all", rhos="0.05, 0.1", draws=3)
    settings = ProbeSettings(samples="all", seed=7, sharpness=sharp)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.top_k = 3
    checked = settings.checked()
    assert checked.samples is None and ProbeSettings(samples="200").checked().samples == 200
    assert checked.sharpness.metrics == METRIC_NAMES and checked.sharpness.rhos == (0.05, 0.1)
    assert (checked.sharpness.seed, checked.sharpness.draws, checked.sharpness.progress) == (7, 3, False)
    assert checked.checked() == checked  # idempotent: the functions that measure check again
    record = {"sharpness": ["all"], "sharpness_options": {"rhos": [0.05], "draws": 2}}  # experiment.json's form
    assert ProbeSettings.from_dict(record).to_dict() == {**ProbeSettings().to_dict(), **record}
    assert ProbeSettings.from_dict(record).sharpness == SharpnessSettings(metrics=["all"], rhos=[0.05], draws=2)
    assert ProbeSettings().checked().sharpness.metrics is None  # no sharpness unless asked for
    for bad, words in (
        ({"samples": 0}, "--samples must be >= 1"),
        ({"samples": "some"}, "--samples must be a whole number"),
        ({"top_k": -1}, "--top-k must be >= 0"),
        ({"tol": 0.0}, "--tol must be a finite number > 0"),
        ({"density_steps": 0}, "--density-steps must be >= 1"),
        ({"trace": True, "trace_method": "hutch++", "trace_samples": 4}, "--trace-samples must be >= 6"),
        ({"sharpness": SharpnessSettings(metrics=None, rhos=" , ")}, "--rho needs at least one value"),
        ({"sharpness": SharpnessSettings(metrics=None, epsilons="abc")}, "--epsilon takes numbers"),
        ({"sharpness": SharpnessSettings(metrics=None, draws=0)}, "draws"),  # no metric asked for: checked too
        ({"split": "val"}, "unknown split"),
        ({"seed": -(2**70)}, "--seed"),
    ):
        with pytest.raises(FlatnessError, match=words):
            ProbeSettings(**bad).checked()


def test_probe_samples_all_is_the_whole_split(digits_mlp_checkpoint):
    """--samples all (None) takes every example of the split: as many as a count beyond its size."""
    kw = {"split": "test", "batch_size": 500, "top_k": 0, "progress": False}
    every = run_probe(digits_mlp_checkpoint, ProbeSettings(samples="all", **kw))
    capped = run_probe(digits_mlp_checkpoint, ProbeSettings(samples=10**6, **kw))
    assert every["data"]["samples"] == capped["data"]["samples"] > 200
    assert every["loss"] == capped["loss"]


def test_cli_probe_refuses_an_existing_output_before_the_work(cli, digits_mlp_checkpoint, tmp_path, monkeypatch):
    """Without --force an existing output is refused by the library before the checkpoint is measured."""
    from flatness.study import probe

    out = tmp_path / "p.json"
    out.write_text("mine\n")
    monkeypatch.setattr(probe, "run_probe", lambda *a, **k: pytest.fail("measured before the --force check"))
    assert "pass --force" in _one_line_error(cli(["probe", digits_mlp_checkpoint, *FAST, "--out", out]))
    assert out.read_text() == "mine\n"
