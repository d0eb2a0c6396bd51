"""Any loss from the command line (issue 18): --loss / --output, regression end to end, user models in sweeps.

A regression model that exists only in a test file, trained and measured with ``--loss mse`` on an npz of
float targets: train, probe (λ1 against a dense float64 Hessian of the mean squared error), surface, plot,
experiment, a --quick sweep and correlate, with no accuracy anywhere. Sweeps of a user's model train and
probe every cell, end non-zero naming the cells that failed, and retry them when rerun. (Bad losses,
outputs, dtypes and train-mode programs, one line each: cli/test_train.py, cli/test_probe.py.)
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from regression_helpers import REG_TRAIN, ref


def dense_mse_top_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Ground truth: the largest eigenvalue of the dense float64 Hessian of the mean squared error."""
    named = [(n, p.detach().double()) for n, p in model.named_parameters()]
    sizes = [p.numel() for _, p in named]
    flat = torch.cat([p.reshape(-1) for _, p in named])
    model = model.double()

    def loss(theta):
        params = {n: t.reshape(p.shape) for (n, p), t in zip(named, theta.split(sizes))}
        out = torch.func.functional_call(model, params, (x.double(),))
        return F.mse_loss(out.reshape(-1), y.double())

    return float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))[-1])


def accuracy_values(obj, path="") -> list[str]:
    """Every key naming an accuracy (or error) whose value is a number, anywhere in a JSON object."""
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            if ("acc" in str(key).lower() or "error" == str(key).lower()) and isinstance(value, (int, float)):
                if not isinstance(value, bool):
                    found.append(f"{path}/{key}={value}")
            found += accuracy_values(value, f"{path}/{key}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found += accuracy_values(value, f"{path}[{i}]")
    return found


def no_accuracy_anywhere(folder) -> None:
    """No output file of ``folder`` holds an accuracy value: JSON nulls, no nan, no accuracy arrays."""
    import h5py

    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(".json"):
                assert not accuracy_values(json.load(open(path))), (path, accuracy_values(json.load(open(path))))
            elif name.endswith(".jsonl"):
                for line in open(path):
                    assert not accuracy_values(json.loads(line)), (path, line)
            elif name.endswith(".h5"):
                with h5py.File(path, "r") as f:
                    assert not [k for k in f if k.endswith("_acc")], path
            elif name.endswith((".md", ".csv")):
                text = open(path).read()
                assert "nan" not in text.lower().replace("nanmean", ""), path


def test_regression_train_probe_surface_plot(cli, reg, tmp_path):
    run = tmp_path / "run"
    model = ref(reg, "make")
    result = cli(["train", "--model", model, "--dataset", reg["npz"], "--loss", "mse", *REG_TRAIN, "--out", run])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["loss"] == "mse" and config["output"] is None

    # probe: the recorded loss name is reused; λ1 equals the dense float64 Hessian's
    out = tmp_path / "p.json"
    args = ["probe", run, "--model", model, "--top-k", "3", "--tol", "1e-6", "--max-iter", "100", "--quiet"]
    result = cli([*args, "--out", out])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    net = __import__("flatness").models.references.resolve_model_reference(model, {})[0]
    net.load_state_dict(torch.load(run / "last.pt", weights_only=True)["model_state"])
    assert written["hessian"]["eigenvalues"][0] == pytest.approx(
        dense_mse_top_eigenvalue(net, reg["x"], reg["y"]), rel=1e-4
    )
    assert written["accuracy"] is None and written["data"]["loss"] == "mse"
    assert written["loss"] == pytest.approx(
        float(F.mse_loss(net.float()(reg["x"]).reshape(-1), reg["y"]).detach()), rel=1e-5
    )
    assert "accuracy" not in result.output and "mean squared error" in result.output

    # surface: values of the same loss, no accuracy arrays, samples = the 48 examples used (not 1000)
    h5 = tmp_path / "s.h5"
    result = cli(["surface", run, "--model", model, "--x=-1:1:5", "--split", "both", "--out", h5, "--quiet"])
    assert result.exit_code == 0, result.output
    import h5py

    with h5py.File(h5, "r") as f:
        assert sorted(k for k in f if k.endswith(("_loss", "_acc"))) == ["test_loss", "train_loss"]
        assert (f.attrs["samples"], f.attrs["train_samples"], f.attrs["test_samples"]) == (48, 48, 16)
        assert f.attrs["loss"] == "mse"
        assert float(f["train_loss"][2]) == pytest.approx(written["loss"], rel=1e-5)
        assert np.all(np.isfinite(f["train_loss"][()])) and float(np.ptp(f["train_loss"][()])) > 0
    assert "accuracy" not in result.output
    figures = tmp_path / "figures"
    figures.mkdir()
    result = cli(["plot", h5, "--out", figures])
    assert result.exit_code == 0, result.output
    assert (figures / "s-1d.png").is_file()
    no_accuracy_anywhere(tmp_path)


def test_regression_experiment_sweep_and_correlate(cli, reg, tmp_path):
    model = ref(reg, "make")
    gen = np.random.default_rng(2)
    x = gen.normal(size=(160, 5)).astype(np.float32)
    y = (x @ gen.normal(size=5)).astype(np.float32)
    npz = tmp_path / "big.npz"  # --quick trains in batches of 128
    np.savez(npz, x_train=x[:130], y_train=y[:130], x_test=x[130:], y_test=y[130:])
    common = ["--model", model, "--dataset", npz, "--loss", "mse", "--no-progress"]
    study = tmp_path / "study"
    result = cli(
        ["experiment", *common, "--quick", "--seeds", "0,1", "--epochs", "2", "--grid", "3", "--samples", "16"]
        + ["--out", study]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((study / "runs" / "amp-s1" / "probe.json").read_text())["data"]["loss"] == "mse"
    report = (study / "REPORT.md").read_text()
    assert "—" in report or "loss" in report
    no_accuracy_anywhere(study)

    sweep = tmp_path / "sweep"
    grid = ["--grid", "method=erm,sam lr=0.01,0.05"]  # 4 cells: correlate needs 3
    result = cli(["sweep", "--quick", *grid, "--out", sweep, "--workers", "1", *common])
    assert result.exit_code == 0, result.output
    rows = (sweep / "cells.csv").read_text().splitlines()
    assert len(rows) == 5 and all(",done," in row for row in rows[1:])
    result = cli(["correlate", sweep])
    assert result.exit_code == 0, result.output
    summary = json.loads((sweep / "correlation.json").read_text())
    assert summary["gap_kind"] == "loss"
    assert "test − train loss" in (sweep / "correlation.md").read_text()
    no_accuracy_anywhere(sweep)


def test_sweep_of_a_user_model_probes_every_cell_and_fails_loudly(cli, reg, tmp_path):
    gen = np.random.default_rng(1)
    x = gen.normal(size=(40, 5)).astype(np.float32)
    y = gen.integers(0, 3, size=40)
    npz = tmp_path / "cls.npz"
    np.savez(npz, x_train=x[:32], y_train=y[:32], x_test=x[32:], y_test=y[32:])
    good = tmp_path / "good"
    args = ["sweep", "--quick", "--dataset", npz, "--workers", "1", "--no-progress"]
    result = cli([*args, "--model", ref(reg, "classifier"), "--out", good])
    assert result.exit_code == 0, result.output
    for cell in (good / "cells").iterdir():
        if cell.is_dir():
            assert (cell / "measures.json").is_file() and (cell / "probe.json").is_file(), cell

    # A factory that does not fit the data: every cell fails, the sweep says which and exits non-zero.
    bad = tmp_path / "bad"
    result = cli([*args, "--model", ref(reg, "wrong_width"), "--out", bad])
    assert result.exit_code != 0
    assert "8 of 8 cells failed" in result.output and "method-erm_lr-0.02" in result.output
    assert "does not fit the data" in result.output
    # A rerun retries the failed cells (here they fail again: the same exit, nothing kept as done).
    (bad / "cells" / "method-erm_lr-0.02_weight_decay-0.0_seed-0" / "failed.json").unlink()
    result = cli([*args, "--model", ref(reg, "wrong_width"), "--out", bad])
    assert result.exit_code != 0 and "8 of 8 cells failed" in result.output
    assert "already finished" not in result.output


def test_an_experiment_step_that_fails_names_itself(cli, reg, tmp_path):
    args = ["experiment", "--model", ref(reg, "wrong_width"), "--dataset", reg["npz"], "--loss", "mse", "--quick"]
    result = cli([*args, "--seeds", "0", "--workers", "1", "--no-progress", "--out", tmp_path / "study"])
    assert result.exit_code != 0
    line = result.output.strip().splitlines()[-1]  # after the steps' progress lines
    assert line.startswith("Error: ") and "train erm s0 failed: batch size 128 exceeds" in line and "rerun" in line


def test_a_failed_cell_is_retried_and_finished_ones_kept(cli, reg, tmp_path, monkeypatch):
    gen = np.random.default_rng(1)
    x = gen.normal(size=(40, 5)).astype(np.float32)
    npz = tmp_path / "cls.npz"
    np.savez(npz, x_train=x[:32], y_train=gen.integers(0, 3, 32), x_test=x[32:], y_test=gen.integers(0, 3, 8))
    out = tmp_path / "sweep"
    args = ["sweep", "--quick", "--dataset", npz, "--model", ref(reg, "classifier"), "--workers", "1"]
    args += ["--no-progress", "--out", out, "--grid", "method=erm lr=0.02,0.1"]
    assert cli(args).exit_code == 0
    failed = out / "cells" / "method-erm_lr-0.1_seed-0"
    (failed / "measures.json").rename(failed / "failed.json.tmp")
    record = json.loads((failed / "failed.json.tmp").read_text())
    (failed / "failed.json.tmp").unlink()
    (failed / "failed.json").write_text(json.dumps({**record, "status": "failed", "error": "boom"}))
    done = out / "cells" / "method-erm_lr-0.02_seed-0" / "measures.json"
    before = done.stat().st_mtime_ns
    result = cli(args)
    assert result.exit_code == 0, result.output
    assert "1 of 2 cells already finished" in result.output
    assert (failed / "measures.json").is_file() and not (failed / "failed.json").exists()
    assert done.stat().st_mtime_ns == before
