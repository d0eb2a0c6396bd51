"""flatness train on a user's model and data: an npz with bitwise resume and the recorded references, an
image folder (the recorded image size), a torchvision model, and every kind of bad model or data as one line,
like a --loss that is no mean or an output that does not fit."""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np
import pytest
import torch
from regression_helpers import REG_TRAIN, ref
from user_model_helpers import TRAIN, _npz, dense_top_eigenvalue, eager_loss, one_line_error, probe, weights


def test_user_model_and_npz_train_amp_resume_probe_surface(cli, user, tmp_path):
    model, npz = user["model"], user["npz"]
    common = ["train", "--model", model, "--model-args", '{"width": 5}', "--dataset", npz, *TRAIN]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli(common + ["--epochs", "2", "--out", straight]).exit_code == 0
    assert cli(common + ["--epochs", "1", "--out", resumed]).exit_code == 0
    # A run folder never makes flatness run the code it names: resuming needs --model again.
    line = one_line_error(cli(["train", "--out", resumed, "--resume", "--epochs", "2"]))
    assert f"--model {model}" in line
    result = cli(common + ["--epochs", "2", "--out", resumed, "--resume"])
    assert result.exit_code == 0, result.output
    a, b = weights(straight / "last.pt"), weights(resumed / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
    for index, state in a["optimizer_state"]["state"].items():
        for name, tensor in state.items():
            if torch.is_tensor(tensor):
                assert torch.equal(tensor, b["optimizer_state"]["state"][index][name])

    # The run records the references, the model arguments and the factory file's sha256 (plain data).
    sha = hashlib.sha256(open(user["file"], "rb").read()).hexdigest()
    assert a["sources"]["model"] == {"reference": model, "args": {"width": 5}, "sha256": sha}
    assert a["sources"]["dataset"]["reference"] == npz
    config = json.loads((straight / "config.json").read_text())
    assert (config["model"], config["model_args"], config["dataset"]) == (model, {"width": 5}, npz)

    # probe: the top eigenvalue equals a dense Hessian of the same weights on the same 48 examples
    out = str(tmp_path / "p.json")
    result = probe(cli, straight, out, "--model", model)
    assert result.exit_code == 0, result.output
    net = __import__("flatness").models.references.resolve_model_reference(model, {"width": 5})[0]
    net.load_state_dict(a["model_state"])
    written = json.loads(open(out).read())
    expected = dense_top_eigenvalue(net, user["x"], user["y"])
    assert written["hessian"]["eigenvalues"][0] == pytest.approx(expected, rel=1e-4)
    assert written["data"]["samples"] == 48 and written["distance_from_init"] > 0

    # surface on the same data
    h5 = str(tmp_path / "s.h5")
    result = cli(["surface", straight, "--model", model, "--x=-1:1:3", "--out", h5, "--quiet"])
    assert result.exit_code == 0, result.output
    assert os.path.isfile(h5)


def write_image_folder(root, size: int, classes=("cat", "dog"), per_class=(6, 2)) -> str:
    """Tiny random RGB PNGs in ``root/{train,test}/<class>/``; returns ``imagefolder:root``."""
    from PIL import Image

    gen = np.random.default_rng(4)
    for split, count in zip(("train", "test"), per_class):
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = gen.integers(0, 256, size=(size, size, 3), dtype=np.uint8) // (1 + label)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return f"imagefolder:{root}"


def read_image_folder(root, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth without torchvision: PIL's bilinear resize, values in [0, 1], classes in sorted order."""
    from PIL import Image

    xs, ys = [], []
    for label, name in enumerate(sorted(os.listdir(root / split))):
        for file in sorted(os.listdir(root / split / name)):
            image = Image.open(root / split / name / file).convert("RGB").resize((size, size), Image.BILINEAR)
            xs.append(torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1))
            ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


IMAGE_TRAIN = ["--method", "erm", "--epochs", "1", "--batch-size", "4", "--lr", "0.05", "--seed", "0", "--no-progress"]


def test_imagefolder_train_then_probe_uses_the_recorded_image_size(cli, tmp_path):
    from flatness.models.registry import build_from_spec

    dataset = write_image_folder(tmp_path / "images", size=12)
    run = tmp_path / "run"
    result = cli(["train", "--dataset", dataset, "--image-size", "8", *IMAGE_TRAIN, "--out", run])
    assert result.exit_code == 0, result.output
    out = tmp_path / "p.json"
    assert probe(cli, run, out, "--top-k", "0").exit_code == 0  # image size and dataset from the record
    written = json.loads(out.read_text())
    stored = weights(run / "last.pt")
    model = build_from_spec(stored["model_spec"])
    model.load_state_dict(stored["model_state"])
    x, y = read_image_folder(tmp_path / "images", "train", 8)
    assert written["data"]["samples"] == 12 and written["checkpoint"]["dataset"] == dataset
    assert written["loss"] == pytest.approx(eager_loss(model, x, y), rel=1e-5)


def test_torchvision_model_trains_on_an_imagefolder(cli, tmp_path):
    from torchvision.models import resnet18

    dataset = write_image_folder(tmp_path / "images", size=16)
    run = tmp_path / "run"
    model = ["--model", "torchvision:resnet18", "--model-args", '{"num_classes": 2}']
    result = cli(["train", *model, "--dataset", dataset, "--image-size", "16", *IMAGE_TRAIN, "--out", run])
    assert result.exit_code == 0, result.output
    out = tmp_path / "p.json"
    assert probe(cli, run, out, "--top-k", "0").exit_code == 0  # a torchvision name is data: from the record
    net = resnet18(num_classes=2)  # weights=None: nothing downloaded
    net.load_state_dict(weights(run / "last.pt")["model_state"])
    x, y = read_image_folder(tmp_path / "images", "train", 16)
    assert json.loads(out.read_text())["loss"] == pytest.approx(eager_loss(net, x, y), rel=1e-5)
    # --model-args without --model apply to the recorded torchvision model (here: 3 classes do not fit)
    line = one_line_error(probe(cli, run, tmp_path / "q.json", "--model-args", '{"num_classes": 3}'))
    assert "do not fit" in line and "fc.weight" in line


BAD_TRAIN = [
    ("module not found", lambda u: ["--model", "no_such_module_q9z:make"], "not found"),
    ("attribute missing", lambda u: ["--model", f"{u['file']}:nothere"], "no attribute 'nothere'"),
    ("not callable", lambda u: ["--model", f"{u['file']}:NOT_CALLABLE"], "not callable"),
    ("callable raises", lambda u: ["--model", f"{u['file']}:broken"], "no such layer size"),
    ("returns no module", lambda u: ["--model", f"{u['file']}:not_a_model"], "not a torch.nn.Module"),
    ("args not an object", lambda u: ["--model", u["model"], "--model-args", "[1, 2]"], "JSON object"),
    ("args not JSON", lambda u: ["--model", u["model"], "--model-args", "{width: 3}"], "JSON object"),
    ("args do not fit", lambda u: ["--model", u["model"], "--model-args", '{"depth": 3}'], "do not fit"),
    (
        "npz missing a key",
        lambda u: ["--model", u["model"], "--dataset", _npz(u["dir"] / "m.npz", y_test=None)],
        "'y_test'",
    ),
    (
        "npz lengths differ",
        lambda u: ["--model", u["model"], "--dataset", _npz(u["dir"] / "l.npz", y_train=np.zeros(5, dtype=np.int64))],
        "y_train has 5",
    ),
    (
        "shape does not fit",
        lambda u: [
            "--model",
            u["model"],
            "--dataset",
            _npz(u["dir"] / "s.npz", x_train=np.zeros((20, 5), np.float32), x_test=np.zeros((8, 5), np.float32)),
        ],
        "(1, 5)",
    ),
    (
        "empty imagefolder",
        lambda u: ["--model", u["model"], "--dataset", f"imagefolder:{_empty_folder(u['dir'])}"],
        "no images",
    ),
]


def _empty_folder(root):
    for split in ("train", "test"):
        os.makedirs(root / "images" / split, exist_ok=True)
    return str(root / "images")


@pytest.mark.parametrize("case", BAD_TRAIN, ids=[c[0] for c in BAD_TRAIN])
def test_bad_input_is_one_line_and_writes_nothing(cli, user, tmp_path, case):
    _, options, expected = case
    out = tmp_path / "never"
    args = ["train", "--dataset", user["npz"], *TRAIN, "--epochs", "1", "--out", out] + options(user)
    line = one_line_error(cli(args))
    assert expected in line
    assert not out.exists()
    if case[0] == "shape does not fit":  # both shapes: the data's and the model's
        assert re.search(r"1x5 and 4x", line), line


@pytest.mark.parametrize(
    "loss, words",
    [
        ("summed", "reduction='sum'"),
        ("Unreduced", "reduction='none'"),
        ("nosuch", "unknown loss"),
        ("Exits", "raised SystemExit"),  # user code never decides the exit code (issue 20, class 4)
    ],
)
def test_a_loss_that_is_not_a_mean_is_refused(cli, reg, tmp_path, loss, words):
    spec = ref(reg, loss) if loss != "nosuch" else loss
    run = tmp_path / "run"
    line = one_line_error(
        cli(["train", "--model", ref(reg, "make"), "--dataset", reg["npz"], "--loss", spec, *REG_TRAIN, "--out", run])
    )
    assert words in line
    assert not run.exists()


@pytest.mark.parametrize(
    "model, words",
    [
        ("scores", "no 'logits'"),  # an output with no tensor and no logits
        ("embedding", "does not fit the data"),  # float features into an Embedding: a dtype no cast resolves
    ],
)
def test_outputs_and_dtypes_that_do_not_fit_are_one_line(cli, reg, tmp_path, model, words):
    run = tmp_path / "run"
    line = one_line_error(
        cli(["train", "--model", ref(reg, model), "--dataset", reg["npz"], "--loss", "mse", *REG_TRAIN, "--out", run])
    )
    assert words in line
    assert not run.exists() or not os.listdir(run)


def test_float_targets_under_cross_entropy_are_one_line(cli, reg, tmp_path):
    run = tmp_path / "run"
    line = one_line_error(
        cli(["train", "--model", ref(reg, "make"), "--dataset", reg["npz"], *REG_TRAIN, "--out", run])
    )
    assert "Long" in line and "--loss mse" in line  # the dtype no cast can resolve, and the way out
    assert not run.exists()
