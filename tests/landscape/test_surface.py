"""loss_surface (in memory) and the 2-D layout of surface files: [j, i] at (x_i, y_j), shape (ny, nx).

Ground truths: closed forms (a linear model's MSE is a quadratic in (a, b); a linear classifier's
cross-entropy is a mean log-sum-exp of logits linear in (a, b)), ``flatness.evaluate`` at the centre,
and the values of a freshly computed file for the old-layout reader and resume.
"""

import h5py
import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import quick_digits_checkpoint

import flatness
from flatness.core.errors import FlatnessError
from flatness.data.probe_data import load_probe_data
from flatness.formats.checkpoint import load_checkpoint
from flatness.formats.surface_file import read_directions, read_surface
from flatness.landscape.compute import compute_surface

SAMPLES, BATCH = 120, 50


def mse(outputs, targets):
    return torch.mean((outputs - targets) ** 2)


def linear_problem(seed=0, n=40, d=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=torch.float64))
    u = torch.randn(1, d, generator=g, dtype=torch.float64)
    v = torch.randn(1, d, generator=g, dtype=torch.float64)
    return model, x, y, u, v


def test_linear_mse_surface_is_the_closed_form_quadratic_at_j_i():
    model, x, y, u, v = linear_problem()
    before = model.weight.detach().clone()
    xs, ys = np.linspace(-1.0, 2.0, 7), np.array([-0.5, 0.0, 0.25, 1.5])  # non-square, asymmetric
    out = flatness.loss_surface(model, (x, y), xs, ys, directions=[{"weight": u}, {"weight": v}], loss_fn=mse)
    assert out["loss"].shape == (4, 7) and out["accuracy"] is None  # regression: no accuracy
    r = (x @ before.T - y).numpy().ravel()
    p, q = (x @ u.T).numpy().ravel(), (x @ v.T).numpy().ravel()
    n = len(r)
    for j, b in enumerate(ys):
        for i, a in enumerate(xs):
            expected = (r @ r + 2 * a * r @ p + 2 * b * r @ q + a * a * p @ p + 2 * a * b * p @ q + b * b * q @ q) / n
            assert out["loss"][j, i] == pytest.approx(expected, rel=1e-12), (i, j)
    assert torch.equal(model.weight, before)  # restored bit for bit
    np.testing.assert_array_equal(out["xcoordinates"], xs)
    np.testing.assert_array_equal(out["ycoordinates"], ys)
    # the minimum of the quadratic lies where the drawn picture must put it: argmin over [j, i]
    j, i = np.unravel_index(np.argmin(out["loss"]), out["loss"].shape)
    values = {(a, b): out["loss"][jj, ii] for jj, b in enumerate(ys) for ii, a in enumerate(xs)}
    assert min(values, key=values.get) == (xs[i], ys[j])


def test_1d_surface_with_a_flat_direction_and_a_grid_spec():
    model, x, y, u, _ = linear_problem(seed=1)
    out = flatness.loss_surface(
        model, [(x[:25], y[:25]), (x[25:], y[25:])], "-1:1:5", directions=u.reshape(-1), loss_fn=mse
    )
    assert out["loss"].shape == (5,) and out["ycoordinates"] is None
    r = (x @ model.weight.detach().T - y).numpy().ravel()
    p = (x @ u.T).numpy().ravel()
    for a, value in zip(np.linspace(-1, 1, 5), out["loss"], strict=True):
        assert value == pytest.approx(np.mean((r + a * p) ** 2), rel=1e-12)


def test_centre_equals_evaluate_and_bn_state_is_restored(digits_checkpoint):
    model, _ = load_checkpoint(digits_checkpoint)
    data = load_probe_data("digits", "train", SAMPLES, BATCH)
    xb = torch.cat([b[0] for b in data])
    yb = torch.cat([b[1] for b in data])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out = flatness.loss_surface(model, (xb, yb), (-1, 1, 3), (-1, 1, 5), seed=2)
    loss, acc = flatness.evaluate(model, (xb, yb))
    assert out["loss"].shape == (5, 3)
    assert out["loss"][2, 1] == loss and out["accuracy"][2, 1] == acc
    assert out["loss"][0, 0] != loss
    recal = flatness.loss_surface(model, data, (-1, 1, 3), recalibrate_on=data)
    assert recal["loss"][1] != loss  # recalibrated statistics give another centre
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_loss_surface_and_compute_surface_give_identical_numbers(digits_checkpoint, tmp_path):
    out = tmp_path / "s.h5"
    compute_surface(
        digits_checkpoint,
        str(out),
        x=(-1, 1, 5),
        y=(-0.5, 0.5, 3),
        samples=SAMPLES,
        batch_size=BATCH,
        device="cpu",
        progress=False,
        seed=4,
    )
    s = read_surface(str(out))
    model, _ = load_checkpoint(digits_checkpoint)
    mem = flatness.loss_surface(
        model,
        load_probe_data("digits", "train", SAMPLES, BATCH),
        s["xcoordinates"],
        s["ycoordinates"],
        directions=read_directions(str(out)),
    )
    assert s["attrs"]["layout"] == "xy" and s["train_loss"].shape == (3, 5)
    np.testing.assert_array_equal(s["train_loss"], mem["loss"])
    np.testing.assert_array_equal(s["train_acc"], 100.0 * mem["accuracy"])


def test_file_values_are_the_closed_form_of_a_linear_classifier_at_j_i(tmp_path):
    """Cross-entropy of softmax(W x + c) along directions of W is mean(logsumexp(z) - z[label]) with
    logits z = z0 + a·zu + b·zv: a closed form in (a, b), evaluated here in float64."""
    ckpt = quick_digits_checkpoint(tmp_path / "linear.pt", model_name="mlp", steps=20, width=4, depth=0)
    out = tmp_path / "linear.h5"
    compute_surface(
        ckpt,
        str(out),
        x=(-1, 2, 7),
        y=(-0.5, 0.5, 3),
        samples=SAMPLES,
        batch_size=BATCH,
        device="cpu",
        progress=False,
        seed=1,
    )
    s = read_surface(str(out))
    dx, dy = read_directions(str(out))
    model, _ = load_checkpoint(ckpt)
    data = load_probe_data("digits", "train", SAMPLES, BATCH)
    x = torch.cat([b[0] for b in data]).reshape(SAMPLES, -1).double()
    labels = torch.cat([b[1] for b in data])
    state = {k: v.double() for k, v in model.state_dict().items()}
    (wname,) = [k for k in state if k.endswith("weight")]
    (bname,) = [k for k in state if k.endswith("bias")]
    z0 = x @ state[wname].T + state[bname]
    zu = x @ dx[wname].double().T + dx[bname].double()
    zv = x @ dy[wname].double().T + dy[bname].double()
    assert s["train_loss"].shape == (3, 7)
    for j, b in enumerate(s["ycoordinates"]):
        for i, a in enumerate(s["xcoordinates"]):
            z = z0 + a * zu + b * zv
            expected = float((torch.logsumexp(z, 1) - z[torch.arange(SAMPLES), labels]).mean())
            assert s["train_loss"][j, i] == pytest.approx(expected, rel=1e-5), (i, j)


def test_old_ij_file_reads_transposed_and_resumes_in_its_own_layout(digits_mlp_checkpoint, tmp_path):
    opts = dict(x=(-1, 1, 5), y=(-1, 1, 3), samples=60, batch_size=30, device="cpu", progress=False)
    ref_path = tmp_path / "ref.h5"
    compute_surface(digits_mlp_checkpoint, str(ref_path), **opts)
    ref = read_surface(str(ref_path))
    old = tmp_path / "old.h5"
    old.write_bytes(ref_path.read_bytes())
    missing = np.zeros((3, 5), dtype=bool)
    missing[[0, 2, 1], [4, 1, 3]] = True  # three points "not yet computed"
    with h5py.File(old, "r+") as f:  # the layout flatness wrote before: [i, j], shape (nx, ny)
        for key in ("train_loss", "train_acc", "computed"):
            arr = np.array(ref[key], dtype=np.uint8 if key == "computed" else np.float64)
            arr[missing] = 0 if key == "computed" else np.nan
            del f[key]
            f[key] = arr.T
        f.attrs["layout"] = "ij"
    back = read_surface(str(old))
    assert back["train_loss"].shape == (3, 5) and back["computed"].sum() == 15 - 3
    np.testing.assert_array_equal(back["train_loss"][~missing], ref["train_loss"][~missing])
    summary = compute_surface(digits_mlp_checkpoint, str(old), resume=True, **opts)
    assert summary["computed_now"] == 3
    with h5py.File(old, "r") as f:
        assert f["train_loss"].shape == (5, 3) and f.attrs["layout"] == "ij"
    done = read_surface(str(old))
    for key in ("train_loss", "train_acc"):
        np.testing.assert_array_equal(done[key], ref[key])
    assert done["computed"].all()
    with h5py.File(old, "r+") as f:  # files older still had no layout attribute: the same order
        del f.attrs["layout"]
    np.testing.assert_array_equal(read_surface(str(old))["train_loss"], ref["train_loss"])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(xs="1:2"), "MIN:MAX:N"),
        (dict(xs=np.zeros((2, 2))), "1-D"),
        (dict(xs=(-1, 1, 3), directions="eigen"), "random"),
        (dict(xs=(-1, 1, 3), ys=(-1, 1, 3), directions=[{"weight": torch.zeros(1, 5)}]), "2 direction"),
        (dict(xs=(-1, 1, 3), directions=torch.zeros(7)), "1-D tensor of 5"),
        (dict(xs=(-1, 1, 3), directions={"nope": torch.zeros(1)}), "nope"),
        (dict(xs=(-1, 1, 3), orthogonal=True), "orthogonal"),
    ],
)
def test_bad_arguments_are_flatness_errors(kwargs, message):
    model, x, y, _, _ = linear_problem()
    with pytest.raises(FlatnessError, match=message):
        flatness.loss_surface(model, (x, y), loss_fn=mse, **kwargs)
    with pytest.raises(FlatnessError, match="cannot measure"):
        flatness.loss_surface(model, 42, (-1, 1, 3), loss_fn=mse)


def test_a_file_written_by_loss_landscape_reads_in_meshgrid_order(tmp_path):
    # loss-landscape's crunch() declares an (nx, ny) array but fills it through ravel() in
    # np.meshgrid(x, y) order; its files carry no flatness attributes.
    x, y = np.linspace(-1, 1, 4), np.linspace(0, 2, 3)
    xm, ym = np.meshgrid(x, y)
    truth = xm**2 + 10 * ym  # asymmetric, so a transpose or a wrong reshape shows
    buffer = -np.ones((len(x), len(y)))
    for k, (a, b) in enumerate(zip(xm.ravel(), ym.ravel())):
        buffer.ravel()[k] = a**2 + 10 * b
    path = tmp_path / "ll.h5"
    with h5py.File(path, "w") as f:
        f["xcoordinates"], f["ycoordinates"] = x, y
        f["train_loss"], f["train_acc"] = buffer, buffer
    surface = read_surface(str(path))
    assert surface["train_loss"].shape == (3, 4)
    np.testing.assert_allclose(surface["train_loss"], truth)
