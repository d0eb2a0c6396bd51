"""flatness.formats.weights: foreign weight files and torch.export programs.

State dicts (flat or nested under each documented key) load exactly; a refused file leaves the model as it
was; ``check_pt2_archive`` is checked on archives built here member by member (a raw payload is never
unpickled, everything else must be JSON or plain tensor data); the train-mode check on hand-built graphs;
``ExportedModule``'s chunking and dtype message on a plain module standing in for a program. On a user's
model file (tests/tinynet_file.py): the top eigenvalue of the same weights loaded as a state dict and as a
.pt2 (dynamic or static batch) against a dense ``torch.autograd.functional.hessian``; safetensors; weight
files that do not fit or are not weight files, as one line; a crafted .pt2 whose pickle would run code is
refused, and the same file is shown to run code in torch's own loader.
"""

import io
import json
import sys
import zipfile
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from tinynet_file import one_line

import flatness
from flatness.core.errors import FlatnessError
from flatness.formats.weights import (
    STATE_DICT_KEYS,
    ExportedModule,
    check_eval_mode_program,
    check_pt2_archive,
    load_exported_program,
    load_state_into,
    load_weights_into,
)
from flatness.models.references import resolve_model_reference


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("key", [None, *STATE_DICT_KEYS])
def test_a_state_dict_loads_exactly_flat_or_under_each_documented_key(tmp_path, key):
    source = _net(1)
    source[1].running_mean.add_(0.5)  # buffers come along too
    state = source.state_dict()
    torch.save(state if key is None else {key: state, "epoch": 3}, tmp_path / "w.pt")
    target = _net(2)
    assert load_weights_into(target, str(tmp_path / "w.pt")) is target
    assert _same_state(target, source)


def test_safetensors_loads_exactly_and_a_damaged_one_is_one_line(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    source = _net(1)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    target = _net(2)
    load_weights_into(target, str(tmp_path / "w.safetensors"))
    assert _same_state(target, source)
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(FlatnessError, match="cannot read .*cut.safetensors as safetensors: ") as err:
        load_weights_into(target, str(tmp_path / "cut.safetensors"))
    assert "\n" not in str(err.value)


class Gadget:
    """A class a weights file may not build."""


def test_a_state_dict_file_that_asks_to_build_an_object_is_refused_by_its_name(tmp_path):
    torch.save({"0.weight": torch.zeros(3, 4), "gadget": Gadget()}, tmp_path / "w.pt")
    with pytest.raises(FlatnessError, match=r"as a state_dict \(torch.load with weights_only\): .*Gadget") as err:
        load_weights_into(_net(0), str(tmp_path / "w.pt"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("content", [{"state_dict": {"w": 1.0}}, [torch.zeros(2)], {"w": torch.zeros(1), "n": 2}])
def test_a_file_without_a_dict_of_tensors_holds_no_state_dict(tmp_path, content):
    torch.save(content, tmp_path / "w.pt")
    with pytest.raises(FlatnessError, match="holds no state_dict .*'state_dict'/'model_state'"):
        load_weights_into(_net(0), str(tmp_path / "w.pt"))


def test_weights_that_do_not_fit_leave_the_model_as_it_was():
    model, before = _net(0), _net(0)
    state = _net(1).state_dict()
    state["2.weight"] = torch.zeros(2, 4)  # the last tensor checked: all the others would fit
    with pytest.raises(FlatnessError, match=r"'2.weight' has shape \(2, 4\) in the file but \(2, 3\) in the model"):
        load_state_into(model, state, "w.pt")
    assert _same_state(model, before)
    del state["2.weight"]
    state["extra"] = torch.zeros(1)
    with pytest.raises(FlatnessError, match=r"w.pt do not fit the model: 1 missing keys .*; 1 unexpected keys"):
        load_state_into(model, state, "w.pt")
    assert _same_state(model, before)


# --------------------------------------------------------------------------- .pt2 archives, member by member

PLAIN = {
    "archive_format": b"pt2",
    "archive_version": b"0",
    "byteorder": b"little",
    "models/model.json": b'{"graph": {}}',
    "data/weights/model_weights_config.json": json.dumps(
        {"config": {"0.weight": {"path_name": "weight_0", "is_param": True, "use_pickle": False}}}
    ).encode(),
    "data/constants/model_constants_config.json": b'{"config": {}}',
    # raw tensor bytes: pickled code here must not matter, since a raw payload is never unpickled
    "data/weights/weight_0": b"cos\nsystem\n(S'echo never'\ntR.",
}


def _tensor_pickle(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _archive(path, members, root="model"):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name if root is None else f"{root}/{name}", data)
    return str(path)


def test_a_plain_archive_passes_with_raw_payloads_read_as_bytes_only(tmp_path):
    members = {**PLAIN, "data/sample_inputs/model.pt": _tensor_pickle((torch.zeros(2, 4),)), "extra/note": b"\x80"}
    check_pt2_archive(_archive(tmp_path / "m.pt2", members))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"data/aotinductor/model.so": b"\x7fELF"},
            r"compiled code or a foreign runtime's artifact \(data/aotinductor/",
        ),
        ({"models/extra.json": b"\x80\x04K\x01."}, "member models/extra.json is not JSON"),
        ({"data/sample_inputs/model.pt": _tensor_pickle(Gadget())}, "member data/sample_inputs/model.pt is not plain"),
        ({"data/weights/weight_0": None}, None),  # a config entry whose file is absent: nothing to check
        ({"archive_version": None}, "no archive_version"),
        (
            {"data/weights/model_weights_config.json": b'{"config": {"w": {"path_name": "../../x"}}}'},
            "has an entry without a plain path_name",
        ),
        (
            {"data/constants/model_constants_config.json": b'{"config": {"c": {"path_name": "custom_obj_0"}}}'},
            r"custom object constant \(custom_obj_0\)",
        ),
        ({"data/weights/model_weights_config.json": b"[]"}, "is not a valid payload config"),
        (
            # marked pickled: the raw bytes (pickled code) must then load with the restricted unpickler
            {
                "data/weights/model_weights_config.json": json.dumps(
                    {"config": {"0.weight": {"path_name": "weight_0", "use_pickle": True}}}
                ).encode()
            },
            "member data/weights/weight_0 is not plain tensor data",
        ),
    ],
    ids=[
        "compiled",
        "json-not-json",
        "pickled-object",
        "absent-payload",
        "no-version",
        "path",
        "custom",
        "config",
        "pickled",
    ],
)
def test_an_archive_member_that_could_run_code_is_refused_by_name(tmp_path, change, message):
    members = {k: v for k, v in {**PLAIN, **change}.items() if v is not None}
    path = _archive(tmp_path / "m.pt2", members)
    if message is None:
        check_pt2_archive(path)
        return
    with pytest.raises(FlatnessError, match=message) as err:
        check_pt2_archive(path)
    assert "\n" not in str(err.value)


def test_archives_of_another_shape_are_refused(tmp_path):
    with pytest.raises(FlatnessError, match="no single root folder"):
        check_pt2_archive(
            _archive(tmp_path / "roots.pt2", {"a/archive_version": b"0", "b/archive_format": b"pt2"}, None)
        )
    with pytest.raises(FlatnessError, match="no single root folder"):
        check_pt2_archive(_archive(tmp_path / "flat.pt2", {"archive_version": b"0"}, None))
    with zipfile.ZipFile(tmp_path / "twice.pt2", "w") as archive:
        with pytest.warns(UserWarning, match="Duplicate name"):
            for _ in range(2):
                archive.writestr("model/archive_version", b"0")
    with pytest.raises(FlatnessError, match="the archive lists a member twice"):
        check_pt2_archive(str(tmp_path / "twice.pt2"))
    with pytest.raises(FlatnessError, match=".pt2 file not found: "):
        check_pt2_archive(str(tmp_path / "none.pt2"))


# --------------------------------------------------------------------------- the train-mode check


def _program(target, args, kwargs=None):
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(target, (x, *args), kwargs or {}))
    return SimpleNamespace(graph=graph)


aten = torch.ops.aten


@pytest.mark.parametrize(
    ("target", "args", "kwargs", "refused"),
    [
        (aten.dropout.default, (0.5, True), None, "dropout"),
        (aten.dropout.default, (0.5, False), None, None),
        (aten.native_dropout.default, (0.5, None), None, "native_dropout"),  # train=None means train
        (aten.native_dropout.default, (0.5,), {"train": False}, None),
        (aten._native_batch_norm_legit_functional.default, (None, None, None, None, True, 0.1, 1e-5), None, "_native"),
        (aten._native_batch_norm_legit_functional.default, (None, None, None, None, False, 0.1, 1e-5), None, None),
        (aten.relu.default, (), None, None),
    ],
)
def test_a_program_exported_in_train_mode_is_refused_by_its_op(target, args, kwargs, refused):
    program = _program(target, args, kwargs)
    if refused is None:
        check_eval_mode_program(program, "m.pt2")
        return
    with pytest.raises(FlatnessError, match=rf"m.pt2 was exported in train mode \({refused}.* after model.eval\(\)"):
        check_eval_mode_program(program, "m.pt2")


# --------------------------------------------------------------------------- ExportedModule


def test_a_static_batch_program_runs_chunk_by_chunk_and_names_the_batch_it_needs():
    torch.manual_seed(0)
    inner = nn.Linear(4, 2)
    calls = []
    inner.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    module = ExportedModule(inner, static_batch_size=4)
    x = torch.randn(12, 4)
    assert torch.equal(module(x), torch.cat([inner(c) for c in x.split(4)]))
    assert calls[:3] == [4, 4, 4]
    with pytest.raises(FlatnessError, match="exported for batches of exactly 4; got a batch of 6: .*multiple of 4"):
        module(x[:6])
    assert ExportedModule(inner, None)(x[:6]).shape == (6, 2)  # a dynamic batch runs whole


def test_train_and_eval_only_record_the_mode():
    inner = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    module = ExportedModule(inner, None)
    assert not any(m.training for m in inner.modules())
    module.train()
    assert module.training and not any(m.training for m in inner.modules())
    x = torch.ones(3, 2)
    assert torch.equal(module(x), module(x))  # the dropout stays off: the graph keeps its exported mode


class _Float32Only(nn.Module):
    def forward(self, x):
        if x.dtype != torch.float32:
            raise RuntimeError("expected scalar type Float but found Double")
        return x


def test_a_program_run_on_another_dtype_says_which_it_was_exported_for():
    module = ExportedModule(_Float32Only(), None, input_dtype=torch.float32)
    with pytest.raises(FlatnessError, match="exported for torch.float32 inputs and does not run on torch.float64"):
        module(torch.ones(2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="expected scalar type"):  # without a recorded dtype: torch's own error
        ExportedModule(_Float32Only(), None)(torch.ones(2, dtype=torch.float64))


# --------------------------------------------------------------------------- weight files of a user's model


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
    assert "torch.export.Dim" in one_line(err)


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
    assert "'hidden.weight' has shape (5, 4) in the file but (6, 4) in the model" in one_line(err)

    other = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))
    with pytest.raises(FlatnessError) as err:
        load_weights_into(other, path)
    message = one_line(err)
    assert "4 missing keys (first: '0.weight')" in message and "4 unexpected keys (first: 'hidden.weight')" in message


def test_bad_weight_files_fail_in_one_line(model_file, tmp_path):
    model, _ = resolve_model_reference(f"{model_file}:make")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    torch.save({"a": 1}, tmp_path / "plain.pt")
    for name, expected in [("junk.pt", "cannot read"), ("plain.pt", "holds no state_dict"), ("absent.pt", "not found")]:
        with pytest.raises(FlatnessError) as err:
            load_weights_into(model, str(tmp_path / name))
        assert expected in one_line(err)


def test_not_a_pt2_fails_in_one_line(tmp_path):
    (tmp_path / "a.pt2").write_bytes(b"plain bytes")
    torch.save({"w": torch.zeros(2)}, tmp_path / "b.pt2")  # a zip, but a torch.save file
    for name, expected in [("a.pt2", "not a zip file"), ("b.pt2", "not a torch.export .pt2 archive")]:
        with pytest.raises(FlatnessError) as err:
            load_exported_program(str(tmp_path / name))
        assert expected in one_line(err)


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
    assert "refusing" in one_line(err) and "sample_inputs" in one_line(err)
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
        assert "refusing" in one_line(err) and reasons[name] in one_line(err)
    assert not marker.exists()


def test_safetensors_absent_says_how_to_install(model_file, tmp_path, monkeypatch):
    (tmp_path / "w.safetensors").write_bytes(b"\x00" * 16)
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors now raises ImportError
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    model, _ = resolve_model_reference(f"{model_file}:make")
    with pytest.raises(FlatnessError) as err:
        load_weights_into(model, str(tmp_path / "w.safetensors"))
    assert "pip install" in one_line(err) and "safetensors" in one_line(err)
