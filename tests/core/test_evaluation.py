"""flatness.core.evaluation: measured in eval mode, each module's own mode and statistics left as they were."""

import torch

from flatness.core.evaluation import evaluate
from flatness.data.probe_data import load_probe_data
from flatness.formats.checkpoint import load_checkpoint


def test_evaluate_uses_eval_mode_and_restores_each_modules_own_mode(digits_checkpoint):
    model, _ = load_checkpoint(digits_checkpoint)
    data = load_probe_data("digits", "train", 64, 32)
    expected = evaluate(model, data)  # already in eval mode: nothing switched
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bns[0].eval()  # a mixed state, as a user freezing one BN layer would leave it
    modes = [m.training for m in model.modules()]
    assert evaluate(model, data) == expected  # BN ran on running statistics, not batch statistics
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())  # no statistics updated
