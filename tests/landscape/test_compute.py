"""Loss surfaces: directions (random/filter, interp, pca, eigen), the grid, the HDF5 file, resume, CLI."""

import copy
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import quick_digits_checkpoint
from holds import hold_env

from flatness.core.errors import FlatnessError
from flatness.core.evaluation import evaluate
from flatness.core.params import named_trainable
from flatness.data.probe_data import load_probe_data
from flatness.formats.checkpoint import load_checkpoint, save_checkpoint
from flatness.formats.surface_file import read_directions, read_surface
from flatness.landscape.compute import compute_surface
from flatness.landscape.directions import (
    dot,
    interp_direction,
    norm,
    pca_directions,
    random_direction,
    random_directions,
)
from flatness.landscape.grid import coarse_to_fine_order, parse_grid
from flatness.landscape.weights import recalibrate_bn

SAMPLES = 120  # small probe data keeps every surface here well under a second
BATCH = 50  # uneven last batch (50, 50, 20) on purpose


def _surface(ckpt, out, **kw):
    kw.setdefault("samples", SAMPLES)
    kw.setdefault("batch_size", BATCH)
    kw.setdefault("progress", False)
    kw.setdefault("device", "cpu")
    return compute_surface(ckpt, str(out), **kw)


def _stamp(path):
    with open(path, "rb") as handle:
        return handle.read(), os.stat(path).st_mtime_ns


# --------------------------------------------------------------------------- directions


def test_filter_normalised_direction_has_each_filters_norm_and_biasbn_zero(digits_checkpoint):
    model, _ = load_checkpoint(digits_checkpoint)
    d = random_direction(model, norm="filter", ignore="biasbn", seed=3)
    params = dict(named_trainable(model))
    assert list(d) == list(params)
    saw_conv = saw_linear = False
    for name, t in d.items():
        w = params[name].detach()
        if w.dim() <= 1:
            assert torch.count_nonzero(t) == 0, name
            continue
        saw_conv |= w.dim() == 4
        saw_linear |= w.dim() == 2
        for k in range(w.shape[0]):
            assert float(t[k].norm()) == pytest.approx(float(w[k].norm()), rel=1e-5), (name, k)
    assert saw_conv and saw_linear
    # seeded by its own generator: same seed same direction, another seed another, global RNG untouched
    state = torch.get_rng_state()
    again = random_direction(model, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(again[n], d[n]) for n in d)
    other = random_direction(model, seed=4)
    assert not torch.equal(other["features.0.weight"], d["features.0.weight"])
    # ignore none copies 1-D tensors from θ; layer normalisation matches whole-tensor norms
    kept = random_direction(model, norm="layer", ignore="none", seed=3)
    for name, t in kept.items():
        w = params[name].detach()
        if w.dim() <= 1:
            assert torch.equal(t, w)
        else:
            assert float(t.norm()) == pytest.approx(float(w.norm()), rel=1e-5)
    x, y = random_directions(model, 2, seed=3, orthogonal=True)
    assert all(torch.equal(x[n], d[n]) for n in d)
    assert abs(dot(x, y)) < 1e-6 * norm(x) * norm(y)


def test_coarse_to_fine_order_visits_every_point_once_coarse_first():
    order = coarse_to_fine_order(21, 21)
    assert sorted(order) == [(i, j) for i in range(21) for j in range(21)]
    first = order[:9]
    assert all(i % 8 == 0 and j % 8 == 0 for i, j in first)
    assert (0, 0) in first and (16, 16) in first
    assert sorted(coarse_to_fine_order(5, 1)) == [(i, 0) for i in range(5)]


# --------------------------------------------------------------------------- the grid and the file


def test_surface_centre_is_evaluate_exactly_and_points_match_a_hand_recomputation(digits_checkpoint, tmp_path):
    out = tmp_path / "s.h5"
    summary = _surface(digits_checkpoint, out, x="-1:1:5", y=(-0.5, 0.5, 3), split="both", seed=7)
    assert summary["shape"] == [3, 5] and summary["computed_now"] == 15 and summary["remaining"] == 0
    s = read_surface(str(out))
    for key in ("xcoordinates", "ycoordinates", "train_loss", "train_acc", "test_loss", "test_acc"):
        assert key in s
    assert s["train_loss"].shape == (3, 5) and not np.isnan(s["train_loss"]).any() and s["computed"].all()
    attrs = s["attrs"]
    assert attrs["direction"] == "random" and attrs["norm"] == "filter" and attrs["seed"] == 7
    assert attrs["accuracy_unit"] == "percent" and attrs["seconds"] > 0 and len(attrs["checkpoint_sha256"]) == 64
    assert s["pca"] is None

    model, _ = load_checkpoint(digits_checkpoint)
    data = {sp: load_probe_data("digits", sp, SAMPLES, BATCH) for sp in ("train", "test")}
    for sp in ("train", "test"):
        loss, acc = evaluate(model, data[sp])
        assert s[f"{sp}_loss"][1, 2] == loss  # exactly
        assert s[f"{sp}_acc"][1, 2] == 100.0 * acc

    dx, dy = read_directions(str(out))
    assert set(dx) == {n for n, _ in named_trainable(model)}
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    for i, j in [(0, 0), (4, 2), (1, 2)]:
        a, b = s["xcoordinates"][i], s["ycoordinates"][j]
        state = dict(theta)
        for name in dx:
            state[name] = theta[name].clone().add_(dx[name], alpha=float(a)).add_(dy[name], alpha=float(b))
        probe = copy.deepcopy(model)
        probe.load_state_dict(state)
        for sp in ("train", "test"):
            loss, acc = evaluate(probe, data[sp])
            assert s[f"{sp}_loss"][j, i] == pytest.approx(loss, rel=1e-9, abs=1e-12)
            assert s[f"{sp}_acc"][j, i] == pytest.approx(100.0 * acc)
    # the model restored after the run is irrelevant (fresh load), but a 1D file has no ycoordinates
    out1 = tmp_path / "one.h5"
    _surface(digits_checkpoint, out1, x="-1:1:3")
    one = read_surface(str(out1))
    assert "ycoordinates" not in one and one["train_loss"].shape == (3,) and "test_loss" not in one


def test_interpolation_hits_both_checkpoints_exactly_bn_buffers_included(digits_checkpoint, tmp_path):
    ckpt_b = quick_digits_checkpoint(tmp_path / "b.pt", seed=1, steps=40)
    out = tmp_path / "interp.h5"
    _surface(digits_checkpoint, out, x="-0.5:1.5:5", direction=f"interp:{ckpt_b}", split="both")
    s = read_surface(str(out))
    assert list(s["xcoordinates"]) == [-0.5, 0.0, 0.5, 1.0, 1.5]
    (d,) = read_directions(str(out))
    assert "features.1.running_mean" in d and "features.1.running_var" in d
    assert not any(k.endswith("num_batches_tracked") for k in d)
    model_a, _ = load_checkpoint(digits_checkpoint)
    model_b, _ = load_checkpoint(ckpt_b)
    for sp in ("train", "test"):
        data = load_probe_data("digits", sp, SAMPLES, BATCH)
        la, aa = evaluate(model_a, data)
        lb, ab = evaluate(model_b, data)
        assert la != lb
        assert s[f"{sp}_loss"][1] == la and s[f"{sp}_acc"][1] == 100.0 * aa
        assert s[f"{sp}_loss"][3] == lb and s[f"{sp}_acc"][3] == 100.0 * ab
    direct = interp_direction(model_a, model_b.state_dict())
    assert torch.equal(
        direct["features.1.running_var"],
        model_b.state_dict()["features.1.running_var"] - model_a.state_dict()["features.1.running_var"],
    )


def test_pca_of_a_straight_trajectory_is_that_line(digits_mlp_checkpoint, tmp_path):
    model, info = load_checkpoint(digits_mlp_checkpoint)
    run = tmp_path / "run"
    run.mkdir()
    gen = torch.Generator().manual_seed(0)
    line = {n: torch.randn(p.shape, generator=gen) for n, p in named_trainable(model)}
    theta = {n: p.detach().clone() for n, p in named_trainable(model)}

    def save(path, t, epoch):
        with torch.no_grad():
            for n, p in named_trainable(model):
                p.copy_(theta[n] + t * line[n])
        save_checkpoint(str(path), model, model_spec=info["model_spec"], config=info["config"], epoch=epoch)

    for epoch, t in [(1, 0.3), (2, 0.2)]:
        save(run / f"epoch-{epoch:03d}.pt", t, epoch)
    with pytest.raises(FlatnessError, match="at least 3"):
        pca_directions(str(run))
    save(run / "epoch-003.pt", 0.1, 3)
    save(run / "epoch-004.pt", 0.05, 4)
    save(run / "last.pt", 0.0, 4)
    result = pca_directions(str(run))
    pc1 = torch.cat([result.directions[0][n].reshape(-1) for n in theta]).double()
    pc2 = torch.cat([result.directions[1][n].reshape(-1) for n in theta]).double()
    v = torch.cat([line[n].reshape(-1) for n in theta]).double()
    assert abs(float(pc1 @ v) / float(v.norm())) == pytest.approx(1.0, abs=1e-5)
    assert float(pc1.norm()) == pytest.approx(1.0, abs=1e-5) and abs(float(pc1 @ pc2)) < 1e-5
    assert result.explained_variance_ratio[0] == pytest.approx(1.0, abs=1e-6)
    expected = np.array([0.3, 0.2, 0.1, 0.05]) * float(v.norm()) * np.sign(float(pc1 @ v))
    np.testing.assert_allclose(result.coordinates[:, 0], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.coordinates[:, 1], 0.0, atol=1e-3)
    # and as a surface: the pca group is stored
    out = tmp_path / "pca.h5"
    _surface(str(run / "last.pt"), out, x="-1:1:3", y="-1:1:3", direction=f"pca:{run}")
    s = read_surface(str(out))
    assert s["pca"] is not None and s["pca"]["coordinates"].shape == (4, 2)
    assert list(s["pca"]["epochs"]) == [1, 2, 3, 4]


def test_eigen_directions_are_top_hessian_eigenvectors(digits_mlp_checkpoint, tmp_path):
    from flatness.hessian import HessianOperator

    out = tmp_path / "eigen.h5"
    _surface(digits_mlp_checkpoint, out, x="-0.5:0.5:3", y="-0.5:0.5:3", direction="eigen")
    s = read_surface(str(out))
    eigenvalues = s["attrs"]["eigenvalues"]
    assert len(eigenvalues) == 2 and eigenvalues[0] >= eigenvalues[1]
    model, _ = load_checkpoint(digits_mlp_checkpoint)
    op = HessianOperator(model, load_probe_data("digits", "train", SAMPLES, BATCH))
    for d, lam in zip(read_directions(str(out)), eigenvalues):
        v = torch.cat([d[n].reshape(-1) for n in op.names])
        assert float(v.norm()) == pytest.approx(1.0, abs=1e-4)
        hv = op.matvec(v)
        assert float((hv - lam * v).norm()) < 1e-2 * abs(lam)
    assert not np.isnan(s["train_loss"]).any()


# --------------------------------------------------------------------------- BatchNorm recalibration


def test_bn_recalibration_changes_only_bn_stats_and_matches_a_manual_recomputation(digits_checkpoint, tmp_path):
    model, _ = load_checkpoint(digits_checkpoint)
    data = load_probe_data("digits", "train", SAMPLES, BATCH)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recalibrate_bn(model, data)
    assert not model.training
    after = model.state_dict()
    params = {n for n, _ in model.named_parameters()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and not (changed & params)
    assert all("running" in k or "num_batches" in k for k in changed)
    # the first BN layer by hand: the cumulative average over batches of per-batch conv1 statistics
    conv, bn = model.features[0], model.features[1]
    with torch.no_grad():
        feats = [conv(x) for x, _ in data]
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.transpose(0, 1).reshape(f.shape[1], -1).var(dim=1, unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(bn.running_mean, mean, rtol=1e-4, atol=1e-6)
    assert torch.allclose(bn.running_var, var, rtol=1e-4, atol=1e-6)
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == len(data)

    out = tmp_path / "recal.h5"
    _surface(digits_checkpoint, out, x="-1:1:3", bn="recalibrate")
    s = read_surface(str(out))
    manual, _ = load_checkpoint(digits_checkpoint)
    for m in manual.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
            m.train()
    with torch.no_grad():
        for x, _ in data:
            manual(x)
    manual.eval()
    loss, acc = evaluate(manual, data)
    assert s["train_loss"][1] == loss and s["train_acc"][1] == 100.0 * acc
    stored, _ = load_checkpoint(digits_checkpoint)
    assert loss != evaluate(stored, data)[0]  # recalibration did change something
    assert s["attrs"]["bn"] == "recalibrate"


def test_channels_last_gives_the_same_surface_up_to_rounding(digits_checkpoint, tmp_path):
    """NHWC layout is a speed option: every value matches the default layout, recalibrated BN included."""
    plain, fast = tmp_path / "plain.h5", tmp_path / "fast.h5"
    for path, flag in ((plain, False), (fast, True)):
        _surface(digits_checkpoint, path, x="-1:1:3", y="-1:1:3", split="both", bn="recalibrate", channels_last=flag)
    a, b = read_surface(str(plain)), read_surface(str(fast))
    assert a["attrs"]["memory_format"] == "contiguous" and b["attrs"]["memory_format"] == "channels_last"
    for key in ("train_loss", "test_loss"):
        assert np.allclose(a[key], b[key], rtol=1e-5, atol=0), key
    for key in ("train_acc", "test_acc"):  # at most one example of 120 flips on a near-tie
        assert np.abs(a[key] - b[key]).max() <= 100.0 / SAMPLES + 1e-9, key
    dx_a, _ = read_directions(str(plain))
    dx_b, _ = read_directions(str(fast))
    assert all(torch.equal(dx_a[name], dx_b[name]) for name in dx_a)  # same seed, same directions


# --------------------------------------------------------------------------- resume after SIGKILL


def test_sigkill_then_resume_gives_the_uninterrupted_values(digits_checkpoint, tmp_path, cli):
    args = [
        digits_checkpoint,
        "--x=-1:1:5",
        "--y=-1:1:4",
        "--samples",
        SAMPLES,
        "--batch-size",
        BATCH,
        "--device",
        "cpu",
        "--quiet",
        "--split",
        "both",
    ]
    killed = tmp_path / "killed.h5"
    # the child writes its file after every point and SIGKILLs itself as its 7th point starts
    env = hold_env(
        dict(os.environ, OMP_NUM_THREADS="1"),
        "surface-point",
        6,
        tmp_path / "held",
        then="sigkill",
        flush_every_point=True,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "flatness.cli", "surface", *map(str, args), "--out", str(killed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    partial = read_surface(str(killed))
    assert partial["computed"].sum() == 6  # the 7th point was in flight
    assert np.isnan(partial["train_loss"]).sum() == 20 - 6
    assert partial["attrs"]["seconds"] > 0
    # resume refuses nothing, computes the missing points only
    result = cli(["surface", *args, "--out", killed, "--resume"])
    assert result.exit_code == 0, result.output
    assert "14 points computed (resumed)" in result.output
    full = tmp_path / "full.h5"
    assert cli(["surface", *args, "--out", full]).exit_code == 0
    a, b = read_surface(str(killed)), read_surface(str(full))
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert np.array_equal(a[key], b[key]), key
    assert a["attrs"]["seconds"] >= partial["attrs"]["seconds"]
    # resuming a finished file computes nothing and changes no value
    again = cli(["surface", *args, "--out", killed, "--resume"])
    assert again.exit_code == 0 and "0 points computed" in again.output


# --------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line_error_and_leaves_files_untouched(
    digits_checkpoint, digits_mlp_checkpoint, tmp_path, cli
):
    base = ["--samples", 60, "--batch-size", 60, "--device", "cpu", "--quiet"]
    existing = tmp_path / "existing.h5"
    assert cli(["surface", digits_checkpoint, "--x=-1:1:3", "--out", existing, *base]).exit_code == 0
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"not an hdf5 file at all")
    run = tmp_path / "run"
    run.mkdir()
    model, info = load_checkpoint(digits_checkpoint)
    for e in (1, 2):
        save_checkpoint(
            str(run / f"epoch-{e:03d}.pt"), model, model_spec=info["model_spec"], config=info["config"], epoch=e
        )
    other_ckpt = quick_digits_checkpoint(tmp_path / "other.pt", seed=2, steps=5)
    stamps = {p: _stamp(p) for p in (existing, corrupt, digits_checkpoint, other_ckpt)}
    new_out = tmp_path / "new.h5"
    cases = [
        (["--x=1:2"], "MIN:MAX:N"),
        (["--x=a:b:3"], "numbers"),
        (["--x=-1:1:1"], "at least 2"),
        (["--x=1:-1:5"], "below MAX"),
        (["--x=-1:1:2.5"], "whole number"),
        (["--x=-1:1:3", "--dir", "sideways"], "unknown direction"),
        (["--x=-1:1:3", "--dir", f"interp:{digits_mlp_checkpoint}"], "different architectures"),
        (["--x=-1:1:3", "--dir", f"interp:{other_ckpt}", "--y=-1:1:3"], "one-dimensional"),
        (["--x=-1:1:3", "--dir", f"pca:{run}"], "at least 3"),
        (["--x=-1:1:3", "--samples", "all", "--batch-size", 0], "batch size|batch-size"),
    ]
    for extra, message in cases:
        result = cli(["surface", digits_checkpoint, "--out", new_out, *base, *extra])
        assert result.exit_code != 0, extra
        assert message.split("|")[0] in result.output or message.split("|")[-1] in result.output, (extra, result.output)
        assert result.output.strip().count("\n") == 0 and result.output.startswith("Error:"), result.output
        assert not new_out.exists()
    on_existing = [
        ([digits_checkpoint, "--x=-1:1:3"], "already exists"),
        ([other_ckpt, "--x=-1:1:3", "--resume"], "another checkpoint"),
        ([digits_checkpoint, "--x=-1:1:5", "--resume"], "x_num"),
        ([digits_checkpoint, "--x=-1:1:3", "--seed", 1, "--resume"], "seed"),
        ([digits_checkpoint, "--x=-1:1:3", "--dir", f"interp:{other_ckpt}", "--resume"], "direction"),
        ([digits_checkpoint, "--x=-1:1:3", "--resume", "--force"], "choose one"),
    ]
    for args, message in on_existing:
        result = cli(["surface", *args, "--out", existing, *base])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert result.output.strip().count("\n") == 0
    result = cli(["surface", digits_checkpoint, "--x=-1:1:3", "--out", corrupt, "--resume", *base])
    assert result.exit_code != 0 and "cannot be opened" in result.output
    for p, stamp in stamps.items():
        assert _stamp(p) == stamp, p
    assert parse_grid("-2:2:41") == (-2.0, 2.0, 41)
    assert sorted(os.listdir(tmp_path)) == sorted(["existing.h5", "corrupt.h5", "run", "other.pt"])


def test_cli_default_output_name_and_force(digits_mlp_checkpoint, tmp_path, cli):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(open(digits_mlp_checkpoint, "rb").read())
    args = ["surface", ckpt, "--x", "-1:1:3", "--y", "-1:1:3", "--samples", 40, "--batch-size", 40, "--quiet"]
    result = cli(args)
    assert result.exit_code == 0, result.output
    made = [p for p in os.listdir(tmp_path) if p.endswith(".h5")]
    assert made == ["m.surface-random-filter-s0-x-1_1_3-y-1_1_3-train.h5"]
    assert "centre train: loss" in result.output
    assert cli(args).exit_code != 0
    forced = cli(args + ["--force"])
    assert forced.exit_code == 0 and "9 points computed" in forced.output


def test_surface_settings_checked_resolves_the_grid_and_samples():
    """checked() returns a copy with numbers for the grid and a count (None: all) for samples; bad values
    are one line naming the option; the settings themselves never change."""
    import dataclasses

    from flatness.landscape.compute import SurfaceSettings

    given = SurfaceSettings(x="-1:1:3", y="-0.5:0.5:5", samples="all")
    checked = given.checked()
    assert (checked.x, checked.y, checked.samples) == ((-1.0, 1.0, 3), (-0.5, 0.5, 5), None)
    assert given.samples == "all" and SurfaceSettings(samples="12").checked().samples == 12
    assert checked.checked() == checked
    with pytest.raises(dataclasses.FrozenInstanceError):
        given.seed = 1
    for bad, words in (
        ({"samples": 0}, "--samples must be >= 1"),
        ({"norm": "l2"}, "unknown --norm"),
        ({"resume": True, "force": True}, "choose one"),
        ({"orthogonal": True}, "--orthogonal applies to 2D"),
    ):
        with pytest.raises(FlatnessError, match=words):
            SurfaceSettings(**bad).checked()
