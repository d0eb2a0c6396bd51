"""flatness.formats.checkpoint: the checkpoint file and the run folder's other files, against their docstring.

Round trips compare every tensor bit for bit; each refusal is a one-line FlatnessError naming the file and
what is wrong with it. The files are made here with a tiny MLP, by ``torch.save`` where a damaged one is needed.
"""

import contextlib
import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

import flatness
from flatness.core.errors import FlatnessError
from flatness.formats.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    ForeignCheckpointError,
    capture_rng,
    finished_epochs,
    list_snapshots,
    load_checkpoint,
    metric_scalars,
    metric_tag,
    read_checkpoint,
    read_metrics,
    read_run_config,
    restore_rng,
    save_checkpoint,
    snapshot_name,
)
from flatness.models.registry import build_from_spec, build_model, model_spec
from flatness.version import __version__

SPEC = model_spec("mlp", 1, 4, 3, width=5, depth=1)
CONFIG = {"dataset": "digits", "model": "mlp", "method": "sam", "seed": 7}


def _model(seed=0):
    torch.manual_seed(seed)
    return build_from_spec(SPEC)


def _save(path, model=None, **kwargs):
    model = model if model is not None else _model()
    options = {"model_spec": SPEC, "config": CONFIG, "epoch": 3, "step": 42, **kwargs}
    save_checkpoint(str(path), model, **options)
    return model


def _payload(**changes):
    """A valid checkpoint dict as save_checkpoint writes it, with ``changes`` (None deletes a key)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_spec": SPEC,
        "model_state": _model().state_dict(),
        "config": CONFIG,
        "epoch": 1,
        "step": 0,
        "metrics": [],
    }
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not None}


def _write(path, obj):
    torch.save(obj, path)
    return str(path)


def test_save_then_read_gives_every_tensor_and_field_back_exactly(tmp_path):
    model = _model(seed=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 16)).sum().backward()
    optimizer.step()
    metrics = [{"epoch": 1, "train_loss": 0.5}, {"epoch": 2, "train_loss": 0.25}]
    sources = {"model": {"reference": "m.py:build", "args": {"width": 5}, "sha256": "ab" * 32}}
    _save(
        tmp_path / "c.pt",
        model,
        metrics=metrics,
        optimizer_state=optimizer.state_dict(),
        extra={"stop": {"stop_loss": 0.1, "epoch": 3, "reached": True}},
        sources=sources,
    )
    # plain data only: torch's restricted unpickler reads the file as it stands
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    payload = read_checkpoint(str(tmp_path / "c.pt"))
    assert raw["format"] == payload["format"] == FORMAT and payload["format_version"] == FORMAT_VERSION
    assert payload["flatness_version"] == __version__
    assert payload["path"] == str(tmp_path / "c.pt")
    assert (payload["epoch"], payload["step"]) == (3, 42)
    assert payload["model_spec"] == SPEC and payload["config"] == CONFIG
    assert payload["metrics"] == metrics and payload["sources"] == sources
    state = model.state_dict()
    assert list(payload["model_state"]) == list(state)
    for name, tensor in state.items():
        assert torch.equal(payload["model_state"][name], tensor), name
    momentum = optimizer.state_dict()["state"]
    for index, entry in momentum.items():
        assert torch.equal(payload["optimizer_state"]["state"][index]["momentum_buffer"], entry["momentum_buffer"])
    assert payload["scheduler_state"] is None and payload["rng"] is None


def test_load_checkpoint_rebuilds_the_model_in_eval_mode_with_its_info(tmp_path):
    model = _save(tmp_path / "c.pt", metrics=[{"epoch": 3}], extra={"stop": {"reached": False}})
    loaded, info = load_checkpoint(str(tmp_path / "c.pt"))
    assert not loaded.training
    x = torch.randn(4, 1, 4, 4)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    assert {k: info[k] for k in ("dataset", "model", "method", "epoch", "step")} == {
        "dataset": "digits",
        "model": "mlp",
        "method": "sam",
        "epoch": 3,
        "step": 42,
    }
    assert info["stop"] == {"reached": False} and info["metrics"] == [{"epoch": 3}]
    assert info["flatness_version"] == __version__ and info["model_spec"] == SPEC


def test_a_run_folder_is_read_through_its_last_pt(tmp_path):
    _save(tmp_path / "last.pt")
    assert read_checkpoint(str(tmp_path))["path"] == str(tmp_path / "last.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlatnessError, match="is a folder without last.pt; name a .pt file"):
        read_checkpoint(str(tmp_path / "empty"))


def test_saving_again_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path):
    _save(tmp_path / "c.pt", _model(seed=1))
    second = _save(tmp_path / "c.pt", _model(seed=2))
    state = read_checkpoint(str(tmp_path / "c.pt"))["model_state"]
    assert all(torch.equal(state[k], v) for k, v in second.state_dict().items())
    assert os.listdir(tmp_path) == ["c.pt"]


def test_rng_state_survives_a_checkpoint_and_replays_the_same_draws(tmp_path):
    model = _model()  # built first: building draws from (and reseeds) torch's generator
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state, which must come back too
    _save(tmp_path / "c.pt", model, rng=capture_rng())
    first = (torch.rand(3), np.random.standard_normal(3), [random.random() for _ in range(3)])
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    restore_rng(read_checkpoint(str(tmp_path / "c.pt"))["rng"])
    again = (torch.rand(3), np.random.standard_normal(3), [random.random() for _ in range(3)])
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1])
    assert first[2] == again[2]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "checkpoint not found: "),
        (lambda p: p.write_bytes(b""), "is empty, not a checkpoint"),
        (lambda p: p.write_bytes(b"\x00" * 64), "rejected it as corrupt or not a checkpoint; nothing in it was run"),
        (
            lambda p: p.write_bytes(b"PK\x03\x04" + b"\x00" * 60),
            r"is not a readable checkpoint \(truncated or corrupt\?\)",
        ),
    ],
    ids=["missing", "empty", "garbage", "broken-zip"],
)
def test_missing_empty_or_garbage_files_are_one_line_errors(tmp_path, make, message):
    path = tmp_path / "c.pt"
    make(path)
    with pytest.raises(FlatnessError, match=message) as err:
        read_checkpoint(str(path))
    assert "\n" not in str(err.value)


def test_a_truncated_checkpoint_is_reported_as_such(tmp_path):
    _save(tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(FlatnessError, match=r"is not a readable checkpoint \(truncated or corrupt\?\)"):
        read_checkpoint(str(tmp_path / "c.pt"))


class Gadget:
    """A class a checkpoint may not build: the safe unpickler must refuse it by name."""


def test_a_file_that_asks_to_build_an_object_is_refused_without_suggesting_to_trust_it(tmp_path):
    path = _write(tmp_path / "c.pt", _payload(extra={"x": Gadget()}))
    with pytest.raises(FlatnessError) as err:
        read_checkpoint(path)
    text = str(err.value)
    assert text.startswith(f"refusing to load {path}: it asks to run or build '")
    assert "Gadget" in text and "nothing in it was run" in text
    assert "weights_only=False" not in text and "\n" not in text


def test_a_plain_state_dict_is_a_foreign_checkpoint(tmp_path):
    path = _write(tmp_path / "w.pt", _model().state_dict())
    with pytest.raises(ForeignCheckpointError, match=f"is not a flatness checkpoint \\(no '{FORMAT}' marker\\)"):
        read_checkpoint(path)
    assert issubclass(ForeignCheckpointError, FlatnessError)  # callers that do not try foreign formats


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format_version": FORMAT_VERSION + 1}, rf"written by a newer flatness \(format {FORMAT_VERSION + 1}\)"),
        ({"format_version": "1"}, "'format_version' is not a number"),
        ({"format_version": True}, "'format_version' is not a number"),
        ({"model_state": None}, "'model_state' is missing"),
        ({"model_spec": None}, "'model_spec' is missing"),
        ({"config": ["dataset"]}, "'config' is not a dict"),
        ({"epoch": 1.5}, "'epoch' is not a int"),
        ({"epoch": True}, "'epoch' is not a int"),
        ({"step": "0"}, "'step' or 'metrics' has the wrong type"),
        ({"metrics": {}}, "'step' or 'metrics' has the wrong type"),
    ],
)
def test_a_damaged_checkpoint_names_the_field_at_fault(tmp_path, changes, message):
    path = _write(tmp_path / "c.pt", _payload(**changes))
    with pytest.raises(FlatnessError, match=message):
        read_checkpoint(path)


def test_a_file_without_format_version_is_read_as_version_zero(tmp_path):
    payload = _payload()
    del payload["format_version"]
    assert read_checkpoint(_write(tmp_path / "c.pt", payload))["epoch"] == 1


def test_weights_that_do_not_fit_the_stored_spec_are_refused(tmp_path):
    wider = build_from_spec(model_spec("mlp", 1, 4, 3, width=6, depth=1))
    path = _write(tmp_path / "c.pt", _payload(model_state=wider.state_dict()))
    with pytest.raises(FlatnessError, match="the stored weights do not fit the stored model spec"):
        load_checkpoint(path)


def test_a_user_models_checkpoint_is_never_rebuilt_from_its_record(tmp_path):
    spec = {**SPEC, "reference": "models.py:build"}
    path = _write(tmp_path / "c.pt", _payload(model_spec=spec))
    with pytest.raises(FlatnessError, match=r"holds a model built by models.py:build: .*pass --model models.py:build"):
        load_checkpoint(path)


def test_non_finite_weights_are_refused_by_name_unless_allowed(tmp_path):
    model, name = _model(), "net.3.bias"
    with torch.no_grad():
        model.state_dict()[name][1] = float("nan")
    _save(tmp_path / "c.pt", model)
    with pytest.raises(FlatnessError, match=f"weights are not finite \\(NaN or Inf in '{name}'\\)"):
        load_checkpoint(str(tmp_path / "c.pt"))
    loaded, _ = load_checkpoint(str(tmp_path / "c.pt"), require_finite=False)
    assert torch.isnan(loaded.state_dict()[name][1])


def test_snapshot_names_sort_by_epoch_and_only_they_are_listed(tmp_path):
    assert snapshot_name(7) == "epoch-007.pt" and snapshot_name(1234) == "epoch-1234.pt"
    for name in ("epoch-1000.pt", "epoch-002.pt", "epoch-010.pt", "epoch-1.pt", "epoch-003.pt.tmp", "last.pt"):
        (tmp_path / name).write_bytes(b"")
    found = list_snapshots(str(tmp_path))
    assert found == [(e, str(tmp_path / snapshot_name(e))) for e in (2, 10, 1000)]


def test_metrics_keep_the_last_record_of_each_epoch_in_order_and_skip_a_cut_line(tmp_path):
    assert read_metrics(str(tmp_path)) == [] and finished_epochs(str(tmp_path)) == 0
    lines = [
        {"epoch": 2, "train_loss": 0.4},
        {"epoch": 1, "train_loss": 0.9},
        {"epoch": 2, "train_loss": 0.3},  # the epoch again, after a resume: this record wins
        {"epoch": 3, "train_loss": 0.2},
    ]
    text = "\n".join(json.dumps(r) for r in lines) + '\n\n{"epoch": 4, "train_lo'
    (tmp_path / "metrics.jsonl").write_text(text)
    assert read_metrics(str(tmp_path)) == [lines[1], lines[2], lines[3]]
    assert finished_epochs(str(tmp_path)) == 3


def test_finished_epochs_ignores_records_without_a_numeric_epoch(tmp_path):
    rows = [{"epoch": 2}, {"epoch": True}, [5], 7]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert finished_epochs(str(tmp_path)) == 2


def test_a_record_without_a_whole_number_epoch_is_no_finished_epoch(tmp_path):
    """Text, float, bool or missing epochs are skipped: no TypeError from sorting "9" with 2, and no record
    filed under the count of records seen (which took real epoch 1's place before)."""
    rows = [
        {"epoch": 1, "v": "a"},
        {"epoch": 2, "v": "b"},
        {"epoch": "9"},
        {"epoch": 3.0},
        {"epoch": False},
        {"v": "x"},
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert read_metrics(str(tmp_path)) == [{"epoch": 1, "v": "a"}, {"epoch": 2, "v": "b"}]
    assert finished_epochs(str(tmp_path)) == 2


def test_metric_tags_and_scalars_follow_the_tensorboard_sections():
    assert (metric_tag("train_loss"), metric_tag("test_acc"), metric_tag("lr")) == (
        "loss/train_loss",
        "accuracy/test_acc",
        "lr",
    )
    record = {"epoch": 4, "train_loss": 0.5, "test_acc": 91, "lr": 0.1, "seconds": float("nan"), "ok": True, "s": "x"}
    scalars = metric_scalars(record)
    assert scalars == {"loss/train_loss": 0.5, "accuracy/test_acc": 91.0, "lr": 0.1}
    assert all(type(v) is float for v in scalars.values())


def test_run_config_is_read_as_a_json_object_or_refused(tmp_path):
    assert read_run_config(str(tmp_path)) == {}
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    assert read_run_config(str(tmp_path)) == CONFIG
    (tmp_path / "config.json").write_text('{"dataset": ')
    with pytest.raises(FlatnessError, match=r"config.json is not readable JSON \(JSONDecodeError\)"):
        read_run_config(str(tmp_path))
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(FlatnessError, match=r"config.json is not a run configuration \(not a JSON object\)"):
        read_run_config(str(tmp_path))


def test_checkpoint_round_trip_with_weights_only(digits_checkpoint):
    payload = torch.load(digits_checkpoint, weights_only=True)
    assert payload["format"] == "flatness-checkpoint"
    model, info = load_checkpoint(digits_checkpoint)
    assert not model.training and info["dataset"] == "digits" and info["model"] == "convnet"
    for k, v in model.state_dict().items():
        assert torch.equal(v, payload["model_state"][k])


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/flatness-pwned",))


def test_checkpoint_with_code_is_refused_and_never_runs(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"format": "flatness-checkpoint", "x": _Evil()}, handle)
    with pytest.raises(FlatnessError, match="refusing|not a readable"):
        read_checkpoint(str(path))
    import os

    assert not os.path.exists("/tmp/flatness-pwned")


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_foreign_or_broken_files_are_one_line_errors(tmp_path, content, digits_checkpoint):
    path = tmp_path / "bad.pt"
    if content is None:  # truncated real checkpoint
        data = open(digits_checkpoint, "rb").read()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(FlatnessError):
        load_checkpoint(str(path))


def test_unrelated_torch_file_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(FlatnessError, match="not a flatness checkpoint"):
        load_checkpoint(str(path))


def test_non_finite_weights_are_refused(tmp_path):
    from flatness.formats.checkpoint import save_checkpoint
    from flatness.models.registry import model_spec

    spec = model_spec("mlp", 1, 8, 10, width=4, depth=1)
    model = build_model("mlp", 1, 8, 10, width=4, depth=1)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    save_checkpoint(str(path), model, model_spec=spec, config={"dataset": "digits"}, epoch=1)
    with pytest.raises(FlatnessError, match="not finite"):
        load_checkpoint(str(path))


def test_crafted_payload_of_plain_data_with_wrong_types_is_refused(tmp_path):
    """weights_only lets plain data through: a checkpoint whose fields have the wrong types is a one-line error."""
    from flatness.formats.checkpoint import read_checkpoint

    for bad in (
        {"format_version": "1"},
        {"model_spec": "mlp"},
        {"model_state": [1, 2]},
        {"epoch": "3"},
        {"config": None},
        {
            "model_spec": {
                "name": "mlp",
                "in_channels": 1,
                "image_size": 8,
                "num_classes": 10,
                "options": {"width": "wide"},
            }
        },
    ):
        payload = {
            "format": "flatness-checkpoint",
            "format_version": 1,
            "model_spec": {"name": "mlp"},
            "model_state": {},
            "config": {},
            "epoch": 1,
        }
        payload.update(bad)
        path = str(tmp_path / "plain.pt")
        torch.save(payload, path)
        with pytest.raises(FlatnessError):
            flatness.load_checkpoint(path)
        with contextlib.suppress(FlatnessError):
            read_checkpoint(path)
