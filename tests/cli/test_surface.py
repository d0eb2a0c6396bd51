"""flatness.cli.surface (``flatness surface``): a tiny interpolation surface whose points equal the loss of the
hand-lerped weights, and the command's one-line refusals that write nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import quick_digits_checkpoint
from user_model_helpers import one_line_error

from flatness.data.probe_data import load_probe_data
from flatness.formats.checkpoint import read_checkpoint
from flatness.formats.surface_file import read_surface
from flatness.models.references import resolve_model_reference
from flatness.models.registry import build_from_spec


def _weights(user, seed):
    torch.manual_seed(seed)
    net = resolve_model_reference(user["model"], {})[0]
    path = user["dir"] / f"w{seed}.pt"
    torch.save(net.state_dict(), path)
    return net, str(path)


def _loss_and_acc(net, state, x, y):
    """Ground truth: the eager model with ``state`` on all examples at once."""
    net.load_state_dict(state)
    net.eval()
    with torch.no_grad():
        out = net(x)
    return float(F.cross_entropy(out, y)), 100.0 * float((out.argmax(1) == y).float().mean())


def test_an_interpolation_surface_is_the_loss_of_the_lerped_weights(cli, tmp_path):
    a = quick_digits_checkpoint(tmp_path / "a.pt", "mlp", seed=0, steps=10, width=8, depth=1)
    b = quick_digits_checkpoint(tmp_path / "b.pt", "mlp", seed=1, steps=10, width=8, depth=1)
    out = tmp_path / "line.h5"
    result = cli(
        ["surface", a, "--dir", f"interp:{b}", "--x=0:1:5", "--samples", "90", "--batch-size", "40", "--out", out]
    )
    assert result.exit_code == 0, result.output
    surf = read_surface(str(out))
    np.testing.assert_allclose(surf["xcoordinates"], [0.0, 0.25, 0.5, 0.75, 1.0])
    state_a, state_b = (read_checkpoint(p)["model_state"] for p in (a, b))
    net = build_from_spec(read_checkpoint(a)["model_spec"])
    data = load_probe_data("digits", "train", 90, 90)  # the first 90 examples, as one batch
    ((x, y),) = data.batches
    for i, alpha in enumerate(surf["xcoordinates"]):
        state = {k: state_a[k] + float(alpha) * (state_b[k] - state_a[k]) for k in state_a}  # the line by hand
        loss, acc = _loss_and_acc(net, state, x, y)
        assert surf["train_loss"][i] == pytest.approx(loss, rel=1e-5, abs=1e-6)
        assert surf["train_acc"][i] == pytest.approx(acc)
    centre_loss, centre_acc = _loss_and_acc(net, state_a, x, y)
    assert f"centre train: loss {centre_loss:.4f}, accuracy {centre_acc:.2f}%" in result.output
    assert "5 points computed" in result.output and f"wrote {out}" in result.output


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--x=1:0"], "--x must be MIN:MAX:N (e.g. -1:1:21), got '1:0'"),
        (["--x=-1:1:0"], "--x: N must be at least 2 points, got 0"),
        (["--samples", "0"], "--samples must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--y=-1:1:3", "--dir", "interp:{b}"], "an interpolation is one-dimensional: leave out --y"),
        # B is a plain state_dict: the checkpoint's usual advice ("needs --model") would be wrong here
        (["--dir", "interp:{b}"], "is not a flatness checkpoint: the end point of an interpolation must be one"),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(cli, user, extra, says):
    _, a = _weights(user, 0)
    _, b = _weights(user, 1)
    out = user["dir"] / "s.h5"
    extra = [e.replace("{b}", b) for e in extra]
    line = one_line_error(cli(["surface", a, "--model", user["model"], "--dataset", user["npz"], "--out", out, *extra]))
    assert says in line, line
    assert not out.exists()


def test_an_existing_file_is_kept_without_force(cli, user):
    _, a = _weights(user, 0)
    out = user["dir"] / "s.h5"
    out.write_bytes(b"mine")
    line = one_line_error(
        cli(["surface", a, "--model", user["model"], "--dataset", user["npz"], "--x=-1:1:3", "--out", out])
    )
    assert "--force" in line and out.read_bytes() == b"mine"
