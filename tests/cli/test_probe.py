"""flatness.cli.probe (``flatness probe``): the sharpness it writes, and bad sharpness options as one-line
errors that write nothing. A user's weights (state_dict, safetensors, .pt2 with a dynamic or a static batch,
a torchvision model): the top eigenvalue against a dense Hessian; a hostile or broken .pt2 refused in one line."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
from regression_helpers import REG_TRAIN, ref
from user_model_helpers import dense_top_eigenvalue, eager_loss, one_line_error, probe

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


def test_state_dict_and_pt2_top_eigenvalue_equal_dense_hessian(cli, user, tmp_path):
    from flatness.models.references import resolve_model_reference

    torch.manual_seed(0)
    net, _ = resolve_model_reference(user["model"], {"width": 7})
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(net, (user["x"][:4],), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "net.pt2"))
    expected = dense_top_eigenvalue(net, user["x"], user["y"])

    out = tmp_path / "sd.json"
    result = probe(
        cli,
        tmp_path / "weights.pt",
        out,
        "--model",
        user["model"],
        "--model-args",
        '{"width": 7}',
        "--dataset",
        user["npz"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["hessian"]["eigenvalues"][0] == pytest.approx(expected, rel=1e-4)

    out = tmp_path / "pt2.json"
    result = probe(cli, tmp_path / "net.pt2", out, "--dataset", user["npz"], "--batch-size", "16")
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["hessian"]["eigenvalues"][0] == pytest.approx(expected, rel=1e-4)

    # weights that do not fit the model: the first missing/unexpected key or the shapes, one line
    line = one_line_error(
        probe(
            cli,
            tmp_path / "weights.pt",
            tmp_path / "bad.json",
            "--model",
            user["model"],
            "--model-args",
            '{"width": 9}',
            "--dataset",
            user["npz"],
        )
    )
    assert "do not fit" in line and "hidden.weight" in line and not (tmp_path / "bad.json").exists()


def test_torchvision_resnet18_probes_tiny_fake_images(cli, tmp_path):
    from torchvision.models import resnet18

    gen = np.random.default_rng(1)
    x = gen.normal(size=(6, 3, 32, 32)).astype(np.float32)
    y = gen.integers(0, 10, size=6)
    np.savez(tmp_path / "images.npz", x_train=x[:4], y_train=y[:4], x_test=x[4:], y_test=y[4:])
    torch.manual_seed(0)
    torch.save(resnet18(num_classes=10).state_dict(), tmp_path / "resnet.pt")
    out = tmp_path / "r.json"
    result = cli(
        [
            "probe",
            tmp_path / "resnet.pt",
            "--model",
            "torchvision:resnet18",
            "--model-args",
            '{"num_classes": 10}',
            "--dataset",
            tmp_path / "images.npz",
            "--top-k",
            "1",
            "--max-iter",
            "4",
            "--tol",
            "0.5",
            "--out",
            out,
            "--quiet",
        ]
    )
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["num_params"] == sum(p.numel() for p in resnet18(num_classes=10).parameters())
    assert written["data"]["samples"] == 4 and np.isfinite(written["hessian"]["eigenvalues"][0])


def test_safetensors_state_dict_with_model(cli, user, tmp_path):
    from safetensors.torch import save_file

    from flatness.models.references import resolve_model_reference

    torch.manual_seed(1)
    net, _ = resolve_model_reference(user["model"], {"width": 7})
    save_file(net.state_dict(), str(tmp_path / "net.safetensors"))
    out = tmp_path / "st.json"
    named = ["--model", user["model"], "--model-args", '{"width": 7}', "--dataset", user["npz"]]
    result = probe(cli, tmp_path / "net.safetensors", out, *named)
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["loss"] == pytest.approx(eager_loss(net, user["x"], user["y"]), rel=1e-6)
    assert written["hessian"]["eigenvalues"][0] == pytest.approx(
        dense_top_eigenvalue(net, user["x"], user["y"]), rel=1e-4
    )
    line = one_line_error(probe(cli, tmp_path / "net.safetensors", tmp_path / "no.json", "--dataset", user["npz"]))
    assert "pass --model" in line


class _MakesItsOwnMatrix(nn.Module):
    """A tensor the graph creates itself (torch.eye) keeps its export dtype: no float64 run."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x @ torch.eye(4))


def test_static_batch_pt2_runs_in_chunks_and_in_float64(cli, user, tmp_path):
    from flatness.models.references import resolve_model_reference

    torch.manual_seed(2)
    net, _ = resolve_model_reference(user["model"], {"width": 7})
    static = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(net, (user["x"][:4],)), str(static))  # batch size fixed at 4
    x, y = user["x"], user["y"]
    # probe batches of 16 run as 4 chunks of 4; the loss, its Hessian and the float64 run see all 48 examples
    out = tmp_path / "static.json"
    result = probe(cli, static, out, "--dataset", user["npz"], "--batch-size", "16")
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["data"]["samples"] == 48
    assert written["loss"] == pytest.approx(eager_loss(net, x, y), rel=1e-6)
    assert written["hessian"]["eigenvalues"][0] == pytest.approx(dense_top_eigenvalue(net, x, y), rel=1e-4)
    out64 = tmp_path / "static64.json"
    result = probe(cli, static, out64, "--dataset", user["npz"], "--batch-size", "16", "--dtype", "float64")
    assert result.exit_code == 0, result.output
    written = json.loads(out64.read_text())
    # the loss is summed in float32 by design (core.evaluation); the Hessian in float64 meets the dense
    # one to ~1e-13, where float32 HVPs are ~1e-6 off
    assert written["dtype"] == "float64" and written["loss"] == pytest.approx(eager_loss(net, x, y), rel=1e-6)
    assert written["hessian"]["eigenvalues"][0] == pytest.approx(dense_top_eigenvalue(net, x, y), rel=1e-10)
    # a batch that is no multiple of the exported one, and a program that cannot run in float64: one line each
    line = one_line_error(probe(cli, static, tmp_path / "b.json", "--dataset", user["npz"], "--batch-size", "10"))
    assert "multiple of 4" in line
    fixed = tmp_path / "eye.pt2"
    torch.export.save(torch.export.export(_MakesItsOwnMatrix(), (x[:4],)), str(fixed))
    line = one_line_error(probe(cli, fixed, tmp_path / "e.json", "--dataset", user["npz"], "--dtype", "float64"))
    assert "exported for torch.float32 inputs" in line and not (tmp_path / "e.json").exists()


class _Payload:
    """Unpickling this creates ``path``: the stand-in for the code a crafted file would run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_hostile_pt2_is_refused_through_probe_and_runs_nothing(cli, user, tmp_path):
    torch.export.save(torch.export.export(nn.Linear(4, 3), (torch.randn(2, 4),)), str(tmp_path / "good.pt2"))
    marker = tmp_path / "PWNED"
    payload = io.BytesIO()
    torch.save((_Payload(str(marker)), {}), payload)
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(tmp_path / "good.pt2") as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info.filename, payload.getvalue() if "/data/sample_inputs/" in info.filename else data)
    out = tmp_path / "evil.json"
    line = one_line_error(probe(cli, evil, out, "--dataset", user["npz"]))
    assert "refusing" in line and not marker.exists() and not out.exists()
    # The file really is hostile: torch's own loader runs its code, in a child process.
    code = f"import torch\ntry: torch.export.load({str(evil)!r})\nexcept Exception: pass"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert marker.exists()


def test_pt2_that_is_not_one(cli, user, tmp_path):
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a zip archive")
    out = tmp_path / "j.json"
    line = one_line_error(probe(cli, junk, out, "--dataset", user["npz"]))
    assert "junk.pt2" in line and not out.exists()


def test_a_loss_returning_a_vector_is_refused(cli, reg, tmp_path):
    run = tmp_path / "run"
    model = ref(reg, "make")
    assert (
        cli(["train", "--model", model, "--dataset", reg["npz"], "--loss", "mse", *REG_TRAIN, "--out", run]).exit_code
        == 0
    )
    out = tmp_path / "p.json"
    line = one_line_error(
        cli(["probe", run, "--model", model, "--loss", ref(reg, "vector"), "--top-k", "1", "--out", out, "--quiet"])
    )
    assert "scalar" in line and not out.exists()


def test_output_key_selects_what_the_loss_sees(cli, reg, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--model", ref(reg, "scores"), "--dataset", reg["npz"], "--loss", "mse", "--output", "scores"]
    result = cli([*args, *REG_TRAIN, "--out", run])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["output"] == "scores"
    out = tmp_path / "p.json"
    result = cli(["probe", run, "--model", ref(reg, "scores"), "--top-k", "1", "--out", out, "--quiet"])
    assert result.exit_code == 0, result.output  # the recorded key is reused
    line = one_line_error(
        cli(
            ["probe", run, "--model", ref(reg, "scores"), "--output", "logits", "--top-k", "1", "--out", out, "--force"]
        )
    )
    assert "--output logits" in line and "scores" in line


def test_a_pt2_exported_in_train_mode_is_refused(cli, reg, tmp_path):
    net = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Dropout(0.1), nn.Linear(4, 1))
    x = torch.randn(8, 5)
    train_mode, eval_mode = tmp_path / "train.pt2", tmp_path / "eval.pt2"
    torch.export.save(torch.export.export(net.train(), (x,)), train_mode)
    torch.export.save(torch.export.export(net.eval(), (x,)), eval_mode)
    out = tmp_path / "p.json"
    args = ["--dataset", reg["npz"], "--loss", "mse", "--top-k", "1", "--samples", "8", "--quiet", "--out", out]
    line = one_line_error(cli(["probe", train_mode, *args]))
    assert "train mode" in line and "model.eval()" in line and not out.exists()
    result = cli(["probe", eval_mode, *args])
    assert result.exit_code == 0, result.output
