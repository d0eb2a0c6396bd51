"""The model and data options shared by the commands (cli/source_options.py): --model-args apply only to a
model they can change."""

import json

import torch
import torch.nn as nn
from user_model_helpers import one_line_error, probe


def test_model_args_apply_to_a_model_they_can_change(cli, user, digits_mlp_checkpoint, tmp_path):
    """--model-args without --model on a built-in checkpoint was silently ignored: now a one-line refusal."""
    ckpt = digits_mlp_checkpoint  # mlp, width 16, depth 1
    out = tmp_path / "p.json"
    for named in ([], ["--model", "mlp"]):
        line = one_line_error(probe(cli, ckpt, out, *named, "--model-args", '{"width": 8}'))
        assert "leave out --model-args" in line and '"width": 16' in line and not out.exists()
    # the recorded built-in named again (any spelling) is the recorded model, its recorded options included
    assert probe(cli, ckpt, out, "--model", "MLP").exit_code == 0
    assert probe(cli, ckpt, tmp_path / "plain.json").exit_code == 0
    assert json.loads(out.read_text())["loss"] == json.loads((tmp_path / "plain.json").read_text())["loss"]
    # another model for its weights needs --allow-source-change; --force only overwrites
    line = one_line_error(probe(cli, ckpt, out, "--model", "convnet", "--force"))
    assert "pass --allow-source-change" in line
    # a .pt2 holds its own model: model args have nothing to apply to
    torch.export.save(torch.export.export(nn.Linear(4, 3), (torch.randn(2, 4),)), str(tmp_path / "lin.pt2"))
    line = one_line_error(
        probe(cli, tmp_path / "lin.pt2", tmp_path / "l.json", "--dataset", user["npz"], "--model-args", "{}")
    )
    assert "leave out --model and --model-args" in line
