"""``flatness.training.construction``: the initial model drawn from the seed alone, and the optimizer of each method."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset
from user_model_helpers import USER_FILE

from flatness.core.errors import FlatnessError
from flatness.models.registry import build_from_spec, model_spec
from flatness.training.config import TrainConfig
from flatness.training.construction import build_optimizer, initial_model
from flatness.training.optim import AMP, SAM


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_built_in_model_is_drawn_from_the_seed_alone():
    config = TrainConfig(model="mlp", width=8, depth=1, seed=5).checked()
    torch.manual_seed(123)
    model, spec, record = initial_model(config, None, None)
    after = torch.rand(2)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(2))  # the global generator is left as it was
    assert spec == model_spec("mlp", 1, 8, 10, width=8, depth=1) and record == {}
    torch.manual_seed(5)
    assert _same(model, build_from_spec(spec))  # the independent draw: seed, then build
    again, _, _ = initial_model(config, None, None)
    other, _, _ = initial_model(TrainConfig(model="mlp", width=8, depth=1, seed=6).checked(), None, None)
    assert _same(model, again) and not _same(model, other)


def test_a_built_in_model_takes_a_users_data_shape():
    data = TensorDataset(torch.randn(6, 2, 5, 5), torch.tensor([0, 1, 2, 3, 0, 1]))  # 2 channels, 5x5, 4 classes
    _, spec, _ = initial_model(TrainConfig(model="mlp", dataset="data.npz", seed=0, width=8), data, None)
    assert spec == model_spec("mlp", 2, 5, 4, width=8)
    assert build_from_spec(spec)(torch.randn(3, 2, 5, 5)).shape == (3, 4)


def test_a_users_model_whose_file_changed_is_refused_on_resume(tmp_path):
    (tmp_path / "usernet.py").write_text(USER_FILE)
    reference = f"{tmp_path / 'usernet.py'}:make"
    config = TrainConfig(model=reference, seed=2).checked()
    model, spec, record = initial_model(config, None, None)
    assert spec["reference"] == reference and len(spec["sha256"]) == 64
    resumed, _, _ = initial_model(config, None, {"sources": {"model": record}})
    assert _same(model, resumed)
    with pytest.raises(FlatnessError, match="usernet.py changed since this run was trained"):
        initial_model(config, None, {"sources": {"model": {**record, "sha256": "0" * 64}}})


def test_the_optimizer_of_each_method():
    params = [torch.nn.Parameter(torch.tensor([1.0, -2.0]))]
    common = {"lr": 0.1, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}
    sgd = build_optimizer(TrainConfig(method="erm", **common), params)
    assert type(sgd) is torch.optim.SGD
    params[0].grad = torch.tensor([0.5, 0.25])
    sgd.step()
    assert torch.equal(params[0].detach(), torch.tensor([1.0 - 0.05, -2.0 - 0.025]))  # θ − lr·g
    amp = build_optimizer(TrainConfig(method="amp", epsilon=0.3, inner_lr=0.7, inner_iter=2, lr=0.2), params)
    assert isinstance(amp, AMP)
    group = amp.param_groups[0]
    assert (group["lr"], group["epsilon"], group["inner_lr"], group["inner_iter"]) == (0.2, 0.3, 0.7, 2)
    sam = build_optimizer(TrainConfig(method="sam", rho=0.07, adaptive=True, momentum=0.8, nesterov=True), params)
    assert isinstance(sam, SAM)
    assert (sam.param_groups[0]["rho"], sam.param_groups[0]["adaptive"], sam.param_groups[0]["momentum"]) == (
        0.07,
        True,
        0.8,
    )
