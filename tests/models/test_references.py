"""User models (issue 13, library layer): model references, foreign weight files, .pt2 programs.

The top eigenvalue of the same weights loaded three ways (built in memory, state_dict + reference,
.pt2) is checked against a dense ``torch.autograd.functional.hessian``; a crafted .pt2 whose pickle
would run code is refused, and the same file is shown to run code in torch's own loader.
"""

import io
import json
import sys
import textwrap
import zipfile

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import flatness
from flatness.core.errors import FlatnessError
from flatness.formats.weights import load_exported_program, load_weights_into
from flatness.models.references import parse_model_args, resolve_model_reference

MODEL_FILE = textwrap.dedent('''
    import torch
    import torch.nn as nn


    class TinyNet(nn.Module):
        """Exists only in this file."""

        def __init__(self, width=5, classes=3):
            super().__init__()
            self.hidden = nn.Linear(4, width)
            self.out = nn.Linear(width, classes)

        def forward(self, x):
            return self.out(torch.tanh(self.hidden(x)))


    def make(width=5, classes=3):
        return TinyNet(width, classes)


    def broken(**kwargs):
        raise ValueError("no such layer size")


    def not_a_model():
        return 42


    NOT_CALLABLE = 3
''')


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tinynet.py"
    path.write_text(MODEL_FILE)
    return str(path)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message
    return message


def _data(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _dense_top_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Ground truth: the dense Hessian of the mean cross-entropy over all parameters."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()]).double()

    def loss(theta):
        params = {n: t.reshape(s) for n, t, s in zip(names, theta.split(sizes), shapes)}
        out = torch.func.functional_call(model.double(), params, (x.double(),))
        return F.cross_entropy(out, y)

    hessian = torch.autograd.functional.hessian(loss, flat)
    model.float()
    return float(torch.linalg.eigvalsh(hessian)[-1])


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
    assert expected in _one_line(err)


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


# --------------------------------------------------------------------------- weight files


def _trained_weights(model_file, tmp_path):
    model, _ = resolve_model_reference(f"{model_file}:make")
    torch.manual_seed(1)
    for p in model.parameters():
        p.data.normal_()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    return model, str(path)


def test_state_dict_and_pt2_give_the_dense_top_eigenvalue(model_file, tmp_path):
    original, path = _trained_weights(model_file, tmp_path)
    x, y = _data()
    truth = _dense_top_eigenvalue(original, x, y)

    fresh, _ = resolve_model_reference(f"{model_file}:make")
    load_weights_into(fresh, path)
    top = flatness.lanczos(flatness.HessianOperator(fresh, (x, y)), k=1, tol=1e-6).eigenvalues[0]
    assert float(top) == pytest.approx(truth, rel=1e-4)

    program = torch.export.export(original, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "model.pt2"))
    loaded = load_exported_program(str(tmp_path / "model.pt2"))
    assert loaded.static_batch_size is None
    top = flatness.lanczos(flatness.HessianOperator(loaded, (x, y)), k=1, tol=1e-6).eigenvalues[0]
    assert float(top) == pytest.approx(truth, rel=1e-4)


def test_static_batch_pt2_runs_in_chunks(model_file, tmp_path):
    original, _ = _trained_weights(model_file, tmp_path)
    x, y = _data(12)
    torch.export.save(torch.export.export(original, (x[:4],)), str(tmp_path / "static.pt2"))
    loaded = load_exported_program(str(tmp_path / "static.pt2"))
    assert loaded.static_batch_size == 4
    assert flatness.evaluate(loaded, (x, y)) == pytest.approx(flatness.evaluate(original, (x, y)), rel=1e-6)
    truth = _dense_top_eigenvalue(original, x, y)
    top = flatness.lanczos(flatness.HessianOperator(loaded, (x, y)), k=1, tol=1e-6).eigenvalues[0]
    assert float(top) == pytest.approx(truth, rel=1e-4)
    with pytest.raises(FlatnessError) as err:
        loaded(x[:6])
    assert "torch.export.Dim" in _one_line(err)


def test_safetensors_loads(model_file, tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    original, _ = _trained_weights(model_file, tmp_path)
    save_file(original.state_dict(), str(tmp_path / "w.safetensors"))
    fresh, _ = resolve_model_reference(f"{model_file}:make")
    load_weights_into(fresh, str(tmp_path / "w.safetensors"))
    for a, b in zip(original.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_nested_state_dict_key(model_file, tmp_path):
    original, _ = _trained_weights(model_file, tmp_path)
    torch.save({"model_state": original.state_dict(), "epoch": 3}, tmp_path / "ck.pt")
    fresh, _ = resolve_model_reference(f"{model_file}:make")
    load_weights_into(fresh, str(tmp_path / "ck.pt"))
    assert torch.equal(fresh.out.weight, original.out.weight)


def test_weights_that_do_not_fit_fail_in_one_line(model_file, tmp_path):
    _, path = _trained_weights(model_file, tmp_path)
    wider, _ = resolve_model_reference(f"{model_file}:make", {"width": 6})
    with pytest.raises(FlatnessError) as err:
        load_weights_into(wider, path)
    assert "'hidden.weight' has shape (5, 4) in the file but (6, 4) in the model" in _one_line(err)

    other = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))
    with pytest.raises(FlatnessError) as err:
        load_weights_into(other, path)
    message = _one_line(err)
    assert "4 missing keys (first: '0.weight')" in message and "4 unexpected keys (first: 'hidden.weight')" in message


def test_bad_weight_files_fail_in_one_line(model_file, tmp_path):
    model, _ = resolve_model_reference(f"{model_file}:make")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    torch.save({"a": 1}, tmp_path / "plain.pt")
    for name, expected in [("junk.pt", "cannot read"), ("plain.pt", "holds no state_dict"), ("absent.pt", "not found")]:
        with pytest.raises(FlatnessError) as err:
            load_weights_into(model, str(tmp_path / name))
        assert expected in _one_line(err)


def test_not_a_pt2_fails_in_one_line(tmp_path):
    (tmp_path / "a.pt2").write_bytes(b"plain bytes")
    torch.save({"w": torch.zeros(2)}, tmp_path / "b.pt2")  # a zip, but a torch.save file
    for name, expected in [("a.pt2", "not a zip file"), ("b.pt2", "not a torch.export .pt2 archive")]:
        with pytest.raises(FlatnessError) as err:
            load_exported_program(str(tmp_path / name))
        assert expected in _one_line(err)


# --------------------------------------------------------------------------- hostile .pt2


class _Payload:
    """Unpickling this creates ``path``: the stand-in for code a crafted file would run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _hostile_pt2(tmp_path, marker):
    """A real .pt2 whose example-inputs pickle (which torch unpickles on load) is replaced."""
    torch.export.save(torch.export.export(nn.Linear(4, 3), (torch.randn(2, 4),)), str(tmp_path / "good.pt2"))
    buffer = io.BytesIO()
    torch.save((_Payload(str(marker)), {}), buffer)
    with zipfile.ZipFile(tmp_path / "good.pt2") as src, zipfile.ZipFile(tmp_path / "evil.pt2", "w") as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if "/data/sample_inputs/" in info.filename:
                data = buffer.getvalue()
            out.writestr(info.filename, data)
    return str(tmp_path / "evil.pt2")


def test_hostile_pt2_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "PWNED"
    evil = _hostile_pt2(tmp_path, marker)
    assert not marker.exists()

    with pytest.raises(FlatnessError) as err:
        load_exported_program(evil)
    assert "refusing" in _one_line(err) and "sample_inputs" in _one_line(err)
    assert not marker.exists()

    # The file is really hostile: torch's own loader runs its code (here: it creates the marker).
    try:
        torch.export.load(evil)
    except Exception:  # what happens after the payload ran does not matter
        pass
    assert marker.exists()


def _with_entry(config: bytes, key: str, path_name: str) -> bytes:
    """A weights config with one more pickled entry (the others kept, so only that entry is at issue)."""
    data = json.loads(config)
    data["config"][key] = {"path_name": path_name, "is_param": True, "use_pickle": True}
    return json.dumps(data).encode()


def test_pt2_with_custom_object_or_compiled_code_is_refused(tmp_path):
    torch.export.save(torch.export.export(nn.Linear(4, 3), (torch.randn(2, 4),)), str(tmp_path / "good.pt2"))
    with zipfile.ZipFile(tmp_path / "good.pt2") as src:
        root = src.namelist()[0].split("/")[0]
        members = {info.filename: src.read(info.filename) for info in src.infolist()}
    config_name = f"{root}/data/weights/model_weights_config.json"
    marker = tmp_path / "PWNED"
    hostile = io.BytesIO()
    torch.save(_Payload(str(marker)), hostile)
    cases = {
        "so.pt2": {f"{root}/data/aotinductor/model/model.so": b"\x7fELF"},
        "custom.pt2": {
            f"{root}/data/constants/model_constants_config.json": (
                b'{"config": {"c": {"path_name": "custom_obj_0", "is_param": false, "use_pickle": true}}}'
            ),
            f"{root}/data/constants/custom_obj_0": b"\x80\x04K\x01.",
        },
        # a pickled weight named like JSON is still checked as a pickle
        "pickled_json.pt2": {
            config_name: _with_entry(members[config_name], "w", "w.json"),
            f"{root}/data/weights/w.json": hostile.getvalue(),
        },
        "path.pt2": {config_name: _with_entry(members[config_name], "w", "../../extra/w")},
    }
    reasons = {
        "so.pt2": "compiled code",
        "custom.pt2": "custom object",
        "pickled_json.pt2": "w.json is not plain tensor data",
        "path.pt2": "plain path_name",
    }
    for name, changes in cases.items():
        with zipfile.ZipFile(tmp_path / name, "w") as out:
            for member, data in {**members, **changes}.items():
                out.writestr(member, data)
        with pytest.raises(FlatnessError) as err:
            load_exported_program(str(tmp_path / name))
        assert "refusing" in _one_line(err) and reasons[name] in _one_line(err)
    assert not marker.exists()


def test_safetensors_absent_says_how_to_install(model_file, tmp_path, monkeypatch):
    (tmp_path / "w.safetensors").write_bytes(b"\x00" * 16)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors now raises ImportError
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    model, _ = resolve_model_reference(f"{model_file}:make")
    with pytest.raises(FlatnessError) as err:
        load_weights_into(model, str(tmp_path / "w.safetensors"))
    assert "pip install" in _one_line(err) and "safetensors" in _one_line(err)


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
    assert "raised SyntaxError" in _one_line(err)
