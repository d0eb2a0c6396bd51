"""flatness.models.references: model references (a file's callable with its args and sha256, a module's, a
built-in name, torchvision offline), their parsing, and every bad reference as one line.

The weight files and .pt2 programs loaded into such models are tested in formats/test_weights.py.
"""

import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from tinynet_file import one_line

import flatness
from flatness.core.errors import FlatnessError
from flatness.models.references import parse_model_args, resolve_model_reference


def test_file_reference_resolves_with_args_and_sha(model_file):
    model, record = resolve_model_reference(f"{model_file}:make", '{"width": 7}')
    assert type(model).__name__ == "TinyNet" and model.hidden.out_features == 7
    import hashlib

    assert record == {
        "reference": f"{model_file}:make",
        "args": {"width": 7},
        "sha256": hashlib.sha256(open(model_file, "rb").read()).hexdigest(),
    }
    # a class is a callable too
    model, _ = resolve_model_reference(f"{model_file}:TinyNet", {"classes": 4})
    assert model.out.out_features == 4


def test_module_reference_resolves():
    model, record = resolve_model_reference("torch.nn:Linear", {"in_features": 3, "out_features": 2})
    assert isinstance(model, nn.Linear) and model.weight.shape == (2, 3)
    assert record["sha256"] is None and record["args"] == {"in_features": 3, "out_features": 2}


def test_builtin_name_delegates_to_registry():
    model, _ = resolve_model_reference("mlp1d", {"in_channels": 1, "image_size": 40, "num_classes": 10})
    assert model(torch.randn(2, 1, 40)).shape == (2, 10)


@pytest.mark.parametrize(
    "ref, args, expected",
    [
        ("no_such_module_xyz:make", None, "module 'no_such_module_xyz' not found"),
        ("{file}:missing", None, "has no attribute 'missing'"),
        ("{file}:NOT_CALLABLE", None, "not callable"),
        ("{file}:broken", None, "raised ValueError: no such layer size"),
        ("{file}:not_a_model", None, "returned a int, not a torch.nn.Module"),
        ("{file}:make", "[1, 2]", "must be a JSON object"),
        ("{file}:make", "{width: 3}", "must be a JSON object"),
        ("{file}:make", '{"depth": 3}', "do not fit"),
        ("/no/such/file.py:make", None, "model file not found"),
        ("torchvision:no_such_net", None, "unknown torchvision model"),
        ("torchvision:resnet18", '{"weights": "DEFAULT"}', "download"),
        ("nosuchbuiltin", '{"in_channels": 1, "image_size": 8, "num_classes": 2}', "unknown model"),
    ],
)
def test_bad_model_references_fail_in_one_line(model_file, ref, args, expected):
    with pytest.raises(FlatnessError) as err:
        resolve_model_reference(ref.format(file=model_file), args)
    assert expected in one_line(err)


def test_parse_model_args_forms():
    assert parse_model_args(None) == {} and parse_model_args('{"a": 1}') == {"a": 1}
    assert parse_model_args({"b": 2}) == {"b": 2}


def test_torchvision_resnet18_builds_offline_and_evaluates():
    model, record = resolve_model_reference("torchvision:resnet18", {"num_classes": 10})
    assert record["download"] is False
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen)
    loss, acc = flatness.evaluate(model, (x, y))
    with torch.no_grad():
        expected = F.cross_entropy(model.eval()(x), y).item()
    assert loss == pytest.approx(expected, rel=1e-5) and 0.0 <= acc <= 1.0


def test_file_may_import_its_neighbours_and_import_errors_are_one_line(tmp_path):
    (tmp_path / "helper_layers_q7.py").write_text("import torch.nn as nn\nWIDTH = 6\n")
    (tmp_path / "uses_helper.py").write_text(
        "import torch.nn as nn\nimport helper_layers_q7\n\n"
        "def make():\n    return nn.Linear(2, helper_layers_q7.WIDTH)\n"
    )
    model, _ = resolve_model_reference(f"{tmp_path / 'uses_helper.py'}:make")
    assert model.out_features == 6
    assert str(tmp_path) not in sys.path  # the file's folder is on the path only while it runs

    (tmp_path / "broken_syntax.py").write_text("def make(:\n")
    with pytest.raises(FlatnessError) as err:
        resolve_model_reference(f"{tmp_path / 'broken_syntax.py'}:make")
    assert "raised SyntaxError" in one_line(err)
