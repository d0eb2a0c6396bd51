"""flatness.sources.loading: what a command line named, turned into a model and its data.

Checkpoints are written here with ``save_checkpoint`` (a built-in MLP, or a user model from a file made
here), so each test knows the weights and the record it loads. The security rules of the module
docstring are checked one by one: recorded code is never run unless the command line names it again,
another or a changed factory is refused unless ``allow_source_change``. Through the commands: recorded
model, data and loss code must be named again.
"""

from __future__ import annotations

import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from regression_helpers import REG_TRAIN, ref
from torch.utils.data import TensorDataset
from user_model_helpers import TRAIN, one_line_error, probe, weights

from flatness.core.errors import FlatnessError
from flatness.core.fileio import sha256_file
from flatness.formats.checkpoint import save_checkpoint
from flatness.models.registry import build_from_spec, model_spec
from flatness.sources.loading import (
    ALLOW_SOURCE_CHANGE_FLAG,
    ModelSource,
    check_dataset_reference,
    check_recorded,
    config_source,
    default_model_for,
    folder_label,
    infer_shape,
    init_distance,
    is_code_reference,
    is_user_dataset,
    load_target,
    named_source,
    source_file_sha256,
    training_data,
)

SPEC = model_spec("mlp", 1, 8, 10, width=6, depth=1)  # fits digits: 1 channel, 8x8, 10 classes
USER_MODEL = """
import torch.nn as nn


def build(width=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))
"""


def _builtin_checkpoint(path, seed=0, **config):
    torch.manual_seed(seed)
    model = build_from_spec(SPEC)
    save_checkpoint(str(path), model, model_spec=SPEC, config={"dataset": "digits", **config}, epoch=2, step=9)
    return model


@pytest.fixture
def user_run(tmp_path):
    """A checkpoint of the user model ``model.py:build`` (width 5), recorded as training records it."""
    code = tmp_path / "model.py"
    code.write_text(USER_MODEL)
    ref = f"{code}:build"
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 10))
    record = {"reference": ref, "args": {"width": 5}, "sha256": sha256_file(str(code))}
    spec = {"name": ref, "reference": ref, "args": record["args"], "sha256": record["sha256"]}
    path = tmp_path / "user.pt"
    save_checkpoint(str(path), model, model_spec=spec, config={"dataset": "digits"}, epoch=1, sources={"model": record})
    return SimpleNamespace(path=str(path), ref=ref, code=code, model=model)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- names


def test_which_names_are_user_data_and_which_are_code():
    assert not is_user_dataset("digits") and not is_user_dataset(None) and not is_user_dataset("")
    assert is_user_dataset("data.npz") and is_user_dataset("imagefolder:pets") and is_user_dataset("m:make")
    assert is_code_reference("pkg.mod:build") and is_code_reference("net.py:build")
    # torchvision names and image folders are data, not code: a checkpoint may name them
    assert not is_code_reference("torchvision:resnet18") and not is_code_reference("imagefolder:pets")
    assert not is_code_reference("mlp") and not is_code_reference(None)


def test_dataset_references_are_built_ins_or_have_a_user_datasets_form():
    for name in ("digits", "x.npz", "pkg.mod:make", "data.py:make", "imagefolder:DIR"):
        check_dataset_reference(name)
    with pytest.raises(FlatnessError, match="unknown dataset 'digitz'; choose a built-in one \\(.*digits"):
        check_dataset_reference("digitz")
    assert default_model_for("mnist1d") == "mlp1d" and default_model_for("digits") is None  # the general default
    assert default_model_for(None) is None
    assert default_model_for("x.npz") is None


@pytest.mark.parametrize(
    ("ref", "label"),
    [
        ("digits", "digits"),
        ("mlp", "mlp"),
        ("models/net.py:build_net", "build_net"),
        ("pkg.mod:Net.create", "Net-create"),
        ("data/my.set.npz", "my-set"),
        ("imagefolder:/data/pets/", "pets"),
        ("torchvision:resnet18", "resnet18"),
    ],
)
def test_folder_labels_are_short_and_safe(ref, label):
    assert folder_label(ref) == label


# --------------------------------------------------------------------------- the record's rules


def test_recorded_code_must_be_named_again_and_built_ins_come_from_the_record():
    code = {"reference": "pkg.mod:build", "sha256": None}
    with pytest.raises(FlatnessError, match=r"c.pt was trained with --model pkg.mod:build: pass --model pkg.mod:build"):
        check_recorded("model", code, None, False, "c.pt")
    assert check_recorded("model", code, "pkg.mod:build", False, "c.pt") == "pkg.mod:build"
    assert check_recorded("dataset", {"reference": "digits"}, None, False, "c.pt") == "digits"
    assert check_recorded("dataset", {"reference": "torchvision:x"}, None, False, "c.pt") == "torchvision:x"
    assert check_recorded("dataset", None, None, False, "c.pt") is None


def test_another_factory_than_recorded_needs_the_flag():
    code = {"reference": "pkg.mod:build"}
    with pytest.raises(FlatnessError, match=f"not other.mod:build; pass {ALLOW_SOURCE_CHANGE_FLAG} to use"):
        check_recorded("model", code, "other.mod:build", False, "c.pt")
    assert check_recorded("model", code, "other.mod:build", True, "c.pt") == "other.mod:build"
    # a built-in recorded: another name is the caller's business (no code was recorded)
    assert check_recorded("dataset", {"reference": "digits"}, "x.npz", False, "c.pt") == "x.npz"


def test_a_factory_file_that_changed_since_training_needs_the_flag(tmp_path):
    code = tmp_path / "data.py"
    code.write_text("def make(): pass\n")
    ref = f"{code}:make"
    record = {"reference": ref, "sha256": sha256_file(str(code))}
    assert check_recorded("dataset", record, ref, False, "c.pt") == ref
    code.write_text("def make(): return 1\n")
    with pytest.raises(FlatnessError, match=f"{code} changed since c.pt was trained \\(sha256 differs\\)"):
        check_recorded("dataset", record, ref, False, "c.pt")
    assert check_recorded("dataset", record, ref, True, "c.pt") == ref


def test_source_digests_are_those_of_the_files_behind_references(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"npz bytes")
    (tmp_path / "m.py").write_text("x = 1\n")
    assert source_file_sha256(str(tmp_path / "d.npz")) == sha256_file(str(tmp_path / "d.npz"))
    assert source_file_sha256(f"{tmp_path / 'm.py'}:build") == sha256_file(str(tmp_path / "m.py"))
    for reference in (None, "", "digits", "pkg.mod:build", "torchvision:resnet18", f"{tmp_path / 'gone.py'}:f"):
        assert source_file_sha256(reference) == ""


def test_named_source_names_user_code_and_data_only():
    assert named_source("mlp", None, "digits", loss="mse", output="logits") is None
    source = named_source("m.py:build", '{"w": 1}', "d.npz", True, loss="l.py:loss", output="logits")
    assert source == ModelSource(
        model="m.py:build", model_args='{"w": 1}', dataset="d.npz", normalize=True, loss="l.py:loss", output=None
    )
    config = SimpleNamespace(model="mlp", model_args=None, dataset="d.npz", normalize=False, loss=None, output=None)
    assert config_source(config) == ModelSource(dataset="d.npz", normalize=False)


# --------------------------------------------------------------------------- shapes and data


def test_infer_shape_reads_channels_size_and_classes():
    images = TensorDataset(torch.zeros(6, 3, 5, 5), torch.tensor([0, 4, 1, 1, 2, 0]))
    assert infer_shape(images) == (3, 5, 5)
    assert infer_shape(TensorDataset(torch.zeros(4, 7), torch.tensor([0, 1, 2, 1]))) == (1, 7, 3)

    class Folder(torch.utils.data.Dataset):
        classes = ["cat", "dog"]

        def __getitem__(self, i):
            return torch.zeros(3, 4, 4), 0

        def __len__(self):
            return 1

    assert infer_shape(Folder()) == (3, 4, 2)
    with pytest.raises(FlatnessError, match="integer class labels"):
        infer_shape(TensorDataset(torch.zeros(2, 3), torch.tensor([0.5, 1.0])))
    with pytest.raises(FlatnessError, match=r"one tensor \[C, H, W\], \[C, L\] or \[L\]"):
        infer_shape(TensorDataset(torch.zeros(2, 1, 2, 2, 2), torch.tensor([0, 1])))


def test_training_data_keeps_built_in_and_user_options_apart(tmp_path):
    with pytest.raises(FlatnessError, match="--normalize and --image-size apply to your own data; digits"):
        training_data("digits", None, False, False, None, True)
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.standard_normal((6, 4)), "y_train": np.arange(6) % 2}
    arrays |= {"x_test": rng.standard_normal((3, 4)), "y_test": np.arange(3) % 2}
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(FlatnessError, match="--augment applies to the built-in datasets"):
        training_data(str(tmp_path / "d.npz"), None, True, False, None, False)
    train, test, record = training_data(str(tmp_path / "d.npz"), None, False, False, None, False)
    assert (len(train), len(test)) == (6, 3)
    x, y = train[4]
    assert torch.equal(x, torch.from_numpy(arrays["x_train"][4]).to(x.dtype)) and int(y) == 0
    assert record["reference"] == str(tmp_path / "d.npz")


# --------------------------------------------------------------------------- load_target


def test_a_flatness_checkpoint_loads_its_weights_and_records_its_source(tmp_path):
    saved = _builtin_checkpoint(tmp_path / "c.pt", method="amp", loss="ce")
    target = load_target(str(tmp_path / "c.pt"))
    assert _same_weights(target.model, saved) and not target.model.training
    info = target.info
    assert (info["format"], info["dataset"], info["model"], info["method"]) == ("flatness", "digits", "mlp", "amp")
    assert (info["epoch"], info["step"], info["loss"], info["output"]) == (2, 9, "ce", None)
    assert target.loss_fn is not None and target.output_fn is None
    assert target.image_size is None and target.normalize is False


def test_a_built_in_model_is_rebuilt_from_its_record_only(tmp_path):
    _builtin_checkpoint(tmp_path / "c.pt")
    with pytest.raises(FlatnessError, match=r"holds the built-in model mlp, rebuilt with the options .*\"width\": 6"):
        load_target(str(tmp_path / "c.pt"), ModelSource(model_args='{"width": 7}'))
    with pytest.raises(FlatnessError, match=f"holds the built-in model mlp, not convnet; .*{ALLOW_SOURCE_CHANGE_FLAG}"):
        load_target(str(tmp_path / "c.pt"), ModelSource(model="convnet"))
    assert load_target(str(tmp_path / "c.pt"), ModelSource(model="MLP")).info["model"] == "mlp"


def test_a_user_models_checkpoint_runs_its_code_only_when_named_again(user_run):
    with pytest.raises(FlatnessError, match=f"was trained with --model {user_run.ref}: pass --model"):
        load_target(user_run.path)
    target = load_target(user_run.path, ModelSource(model=user_run.ref))
    assert _same_weights(target.model, user_run.model)  # built with the recorded width 5, then loaded
    assert target.info["model_record"]["args"] == {"width": 5}
    user_run.code.write_text(USER_MODEL + "\n# edited\n")
    with pytest.raises(FlatnessError, match="changed since .* was trained"):
        load_target(user_run.path, ModelSource(model=user_run.ref))
    target = load_target(user_run.path, ModelSource(model=user_run.ref, allow_source_change=True))
    assert _same_weights(target.model, user_run.model)


def test_a_plain_state_dict_needs_a_model_and_a_dataset(tmp_path):
    torch.manual_seed(0)
    source = build_from_spec(SPEC)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    with pytest.raises(FlatnessError, match="is not a flatness checkpoint .*a plain state_dict .* needs --model"):
        load_target(str(tmp_path / "w.pt"))
    with pytest.raises(FlatnessError, match="is a plain state_dict or .safetensors file: pass --model"):
        load_target(str(tmp_path / "w.safetensors"))  # named as weights: refused before it is read
    with pytest.raises(FlatnessError, match="records no dataset: pass --dataset"):
        load_target(str(tmp_path / "w.pt"), ModelSource(model="mlp"))
    target = load_target(
        str(tmp_path / "w.pt"), ModelSource(model="mlp", model_args='{"width": 6, "depth": 1}', dataset="digits")
    )
    assert _same_weights(target.model, source)  # built for digits' shape from the dataset's info
    assert target.info["format"] == "a plain state_dict or .safetensors file" and target.info["epoch"] is None


def test_a_pt2_program_refuses_a_model_before_reading_the_file(tmp_path):
    with pytest.raises(FlatnessError, match="is a .pt2 program that holds its own model: leave out --model"):
        load_target(str(tmp_path / "absent.pt2"), ModelSource(model="mlp"))


def test_non_finite_weights_are_refused_for_every_source(tmp_path):
    torch.manual_seed(0)
    model = build_from_spec(SPEC)
    with torch.no_grad():
        model.state_dict()["net.3.bias"][2] = float("inf")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(FlatnessError, match="weights are not finite \\(NaN or Inf in 'net.3.bias'\\)"):
        load_target(
            str(tmp_path / "w.pt"), ModelSource(model="mlp", model_args='{"width": 6, "depth": 1}', dataset="digits")
        )


# --------------------------------------------------------------------------- init_distance


def test_init_distance_is_the_euclidean_distance_to_init_pt(tmp_path):
    init = _builtin_checkpoint(tmp_path / "init.pt", seed=0)
    last = _builtin_checkpoint(tmp_path / "last.pt", seed=1)
    pairs = zip(last.state_dict().values(), init.state_dict().values())
    squared = sum(float(((a - b).double() ** 2).sum()) for a, b in pairs)
    assert init_distance(last, str(tmp_path / "last.pt")) == pytest.approx(math.sqrt(squared), rel=1e-6)
    assert init_distance(init, str(tmp_path / "init.pt")) == 0.0
    assert init_distance(last, str(tmp_path / "elsewhere" / "last.pt")) is None
    (tmp_path / "init.pt").write_bytes(b"damaged")
    assert init_distance(last, str(tmp_path / "last.pt")) is None  # loses this one number, nothing else


def test_recorded_code_must_be_named_again(cli, user, tmp_path):
    run, model = tmp_path / "run", user["model"]
    callable_data = f"{user['file']}:data"
    assert (
        cli(["train", "--model", model, "--dataset", callable_data, *TRAIN, "--epochs", "1", "--out", run]).exit_code
        == 0
    )
    out = tmp_path / "p.json"
    line = one_line_error(probe(cli, run, out))
    assert f"--model {model}" in line and not out.exists()
    line = one_line_error(probe(cli, run, out, "--model", model))
    assert f"--dataset {callable_data}" in line and not out.exists()
    named = ["--model", model, "--dataset", callable_data]
    other = tmp_path / "other.py"
    shutil.copy(user["file"], other)
    # Another factory than recorded needs --allow-source-change; --force only overwrites outputs, so
    # it gets the same refusal, which names the flag that does accept it.
    for extra in ([], ["--force"]):
        line = one_line_error(probe(cli, run, out, "--model", f"{other}:make", "--dataset", callable_data, *extra))
        assert "pass --allow-source-change" in line and not out.exists()
    allowed = ["--model", f"{other}:make", "--dataset", callable_data, "--allow-source-change"]
    assert probe(cli, run, out, *allowed).exit_code == 0
    assert "--force" in one_line_error(probe(cli, run, out, *allowed))  # an existing output still needs --force
    # a factory file that changed since training is refused unless --allow-source-change
    with open(user["file"], "a") as handle:
        handle.write("\n# edited\n")
    out.unlink()
    for extra in ([], ["--force"]):
        line = one_line_error(probe(cli, run, out, *named, *extra))
        assert "changed" in line and "pass --allow-source-change" in line and not out.exists()
    assert probe(cli, run, out, *named, "--allow-source-change").exit_code == 0
    # surface: the same refusal under --force; --allow-source-change also goes with --resume
    h5 = tmp_path / "s.h5"
    surface = ["surface", run, *named, "--x=-1:1:3", "--out", h5, "--quiet"]
    assert "pass --allow-source-change" in one_line_error(cli(surface + ["--force"]))
    assert cli(surface + ["--allow-source-change"]).exit_code == 0
    result = cli(surface + ["--allow-source-change", "--resume"])
    assert result.exit_code == 0 and "0 points computed (resumed)" in result.output, result.output
    # ...but never onto a surface made with other model code: its points would come from two models
    before = open(h5, "rb").read()
    with open(user["file"], "a") as handle:
        handle.write("\n# edited again\n")
    line = one_line_error(cli(surface + ["--allow-source-change", "--resume"]))
    assert "model_code_sha256" in line and open(h5, "rb").read() == before
    line = one_line_error(cli(["surface", run, *allowed, "--x=-1:1:3", "--out", h5, "--quiet", "--resume"]))
    assert "another model" in line and open(h5, "rb").read() == before
    # resuming the training with the changed file would mix two models: refused
    line = one_line_error(cli(["train", *named, *TRAIN, "--epochs", "2", "--out", run, "--resume"]))
    assert "changed" in line and weights(run / "last.pt")["epoch"] == 1


def test_recorded_loss_code_must_be_named_again(cli, reg, tmp_path):
    run = tmp_path / "run"
    model = ref(reg, "make")
    mse = ref(reg, "flat_mse")
    result = cli(["train", "--model", model, "--dataset", reg["npz"], "--loss", mse, *REG_TRAIN, "--out", run])
    assert result.exit_code == 0, result.output
    out = tmp_path / "p.json"
    line = one_line_error(cli(["probe", run, "--model", model, "--top-k", "1", "--out", out, "--quiet"]))
    assert f"--loss {mse}" in line and not out.exists()
    result = cli(["probe", run, "--model", model, "--loss", mse, "--top-k", "1", "--out", out, "--quiet"])
    assert result.exit_code == 0, result.output
