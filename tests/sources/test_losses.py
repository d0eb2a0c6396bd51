"""flatness.sources.losses: ``--loss`` and ``--output`` specs turned into ``loss_fn`` and ``output_fn``.

Named losses are checked by their values against torch's functional losses; references are user files
written here; every refusal is one line naming the spec.
"""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from flatness.core.errors import FlatnessError
from flatness.core.losses import LOSS_NAMES
from flatness.sources.losses import (
    KeyOutput,
    check_loss_spec,
    check_output_spec,
    config_losses,
    loss_fn_for,
    output_fn_for,
)

USER_LOSSES = """
import torch.nn as nn
import torch.nn.functional as F


def halved_mse(outputs, targets):
    return 0.5 * F.mse_loss(outputs, targets)


class SmoothL1(nn.SmoothL1Loss):
    pass


class Summing(nn.MSELoss):
    def __init__(self):
        super().__init__(reduction="sum")


class Quits(nn.Module):
    def __init__(self):
        raise SystemExit(3)


def second(outputs):
    return outputs[1]
"""


@pytest.fixture
def losses_file(tmp_path):
    path = tmp_path / "user_losses.py"
    path.write_text(USER_LOSSES)
    return str(path)


def test_loss_names_are_canonicalised_and_references_kept():
    assert check_loss_spec(None) is None
    assert check_loss_spec(" MSE ") == "mse" and check_loss_spec("Huber") == "huber"
    assert check_loss_spec("pkg.mod:loss") == "pkg.mod:loss" and check_loss_spec("my.py:loss") == "my.py:loss"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "--loss takes a name or a reference, got ''"),
        ("  ", "--loss takes a name or a reference"),
        (3, "--loss takes a name or a reference, got 3"),
        ("hinge", "unknown loss 'hinge'; use one of " + ", ".join(LOSS_NAMES)),
    ],
)
def test_a_bad_loss_spec_is_one_line(spec, message):
    with pytest.raises(FlatnessError, match=message):
        check_loss_spec(spec)


def test_output_specs_are_keys_or_references():
    assert check_output_spec(None) is None
    assert check_output_spec(" logits ") == "logits" and check_output_spec("m.py:pick") == "m.py:pick"
    for spec, message in [("", "--output takes a key or a reference"), ("start-logits", "is neither a key")]:
        with pytest.raises(FlatnessError, match=message):
            check_output_spec(spec)


def test_named_losses_compute_torchs_values():
    assert loss_fn_for(None) is None
    torch.manual_seed(0)
    out, target = torch.randn(6, 3), torch.randn(6, 3)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    assert torch.equal(loss_fn_for("mse")(out, target), F.mse_loss(out, target))
    assert torch.equal(loss_fn_for("L1")(out, target), F.l1_loss(out, target))
    assert torch.equal(loss_fn_for("ce")(out, labels), F.cross_entropy(out, labels))


def test_a_referenced_function_or_loss_class_is_the_loss(losses_file):
    torch.manual_seed(0)
    out, target = torch.randn(5, 2), torch.randn(5, 2)
    halved = loss_fn_for(f"{losses_file}:halved_mse")
    assert halved.__name__ == "halved_mse"
    assert torch.equal(halved(out, target), 0.5 * F.mse_loss(out, target))
    smooth = loss_fn_for(f"{losses_file}:SmoothL1")  # a class: built without arguments
    assert isinstance(smooth, torch.nn.SmoothL1Loss)
    assert torch.equal(smooth(out, target), F.smooth_l1_loss(out, target))


def test_a_referenced_loss_that_sums_or_exits_is_one_line(losses_file):
    with pytest.raises(FlatnessError, match="reduction='sum'; flatness needs the batch mean"):
        loss_fn_for(f"{losses_file}:Summing")
    with pytest.raises(FlatnessError, match=f"--loss {losses_file}:Quits") as err:
        loss_fn_for(f"{losses_file}:Quits")
    assert "\n" not in str(err.value)
    with pytest.raises(FlatnessError, match="has no attribute 'absent'"):
        loss_fn_for(f"{losses_file}:absent")


class _Output:
    def __init__(self, **fields):
        self.__dict__.update(fields)


def test_key_output_takes_the_entry_or_attribute_and_names_the_keys_there_are():
    logits = torch.ones(2, 3)
    pick = KeyOutput("logits")
    assert pick({"loss": 0, "logits": logits}) is logits
    assert pick(_Output(logits=logits)) is logits
    assert repr(pick) == "KeyOutput('logits')"
    with pytest.raises(FlatnessError, match=r"--output logits: the model's output \(dict\) has keys a, z"):
        pick({"z": 1, "a": 2})
    with pytest.raises(FlatnessError, match=r"the model's output \(Tensor\) has no such attribute"):
        pick(logits)


def test_output_specs_give_a_key_output_or_the_referenced_function(losses_file):
    assert output_fn_for(None) is None
    by_key = output_fn_for("start_logits")
    assert isinstance(by_key, KeyOutput) and by_key.key == "start_logits"
    second = output_fn_for(f"{losses_file}:second")
    assert second(("a", "b")) == "b"


def test_config_losses_reads_a_configs_loss_and_output(losses_file):
    loss_fn, output_fn = config_losses(SimpleNamespace(loss="mse", output="logits"))
    assert torch.equal(loss_fn(torch.ones(2), torch.zeros(2)), torch.tensor(1.0))
    assert output_fn.key == "logits"
    assert config_losses(SimpleNamespace()) == (None, None)  # a config from before --loss existed
