"""Any model, any data from the command line (issue 13): train / probe / surface on a user's model and data.

The model class exists only in this file (written out and named as ``file.py:callable``); the data come
from an npz and from a callable. Eigenvalues are checked against a dense
``torch.autograd.functional.hessian``; bitwise resume against a straight run; security against
recorded code that the command line did not name, and a hostile ``.pt2`` whose pickle would run code.
"""

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

USER_FILE = textwrap.dedent('''
    import torch
    import torch.nn as nn
    from torch.utils.data import TensorDataset


    class UserNet(nn.Module):
        """A model class that exists only in this test's file."""

        def __init__(self, width=6, classes=3):
            super().__init__()
            self.hidden = nn.Linear(4, width)
            self.out = nn.Linear(width, classes)

        def forward(self, x):
            return self.out(torch.tanh(self.hidden(x)))


    def make(width=6, classes=3):
        return UserNet(width, classes)


    def broken(**kwargs):
        raise ValueError("no such layer size")


    def not_a_model():
        return 42


    NOT_CALLABLE = 3


    def data():
        gen = torch.Generator().manual_seed(5)
        x = torch.randn(40, 4, generator=gen)
        y = torch.randint(0, 3, (40,), generator=gen)
        return TensorDataset(x[:32], y[:32]), TensorDataset(x[32:], y[32:])
''')

TRAIN = ["--method", "amp", "--epsilon", "0.1", "--batch-size", "16", "--lr", "0.1", "--seed", "3", "--no-progress"]


@pytest.fixture
def user(tmp_path):
    """The user's files: the model/data module and an npz (48 train, 24 test examples of 4 features)."""
    (tmp_path / "usernet.py").write_text(USER_FILE)
    gen = np.random.default_rng(0)
    x = gen.normal(size=(72, 4)).astype(np.float32)
    y = gen.integers(0, 3, size=72)
    np.savez(tmp_path / "data.npz", x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])
    return {
        "dir": tmp_path,
        "file": str(tmp_path / "usernet.py"),
        "model": f"{tmp_path / 'usernet.py'}:make",
        "npz": str(tmp_path / "data.npz"),
        "x": torch.from_numpy(x[:48]),
        "y": torch.from_numpy(y[:48]),
    }


def weights(path):
    return torch.load(path, weights_only=True)


def dense_top_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Ground truth: the largest eigenvalue of the dense Hessian of the mean cross-entropy."""
    named = [(n, p.detach().double()) for n, p in model.named_parameters()]
    sizes = [p.numel() for _, p in named]
    flat = torch.cat([p.reshape(-1) for _, p in named])

    def loss(theta):
        params = {n: t.reshape(p.shape) for (n, p), t in zip(named, theta.split(sizes))}
        return F.cross_entropy(torch.func.functional_call(model.double(), params, (x.double(),)), y)

    value = float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))[-1])
    model.float()
    return value


def one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def probe(cli, checkpoint, out, *extra):
    return cli(
        ["probe", checkpoint, "--top-k", "1", "--tol", "1e-6", "--max-iter", "60", "--out", out, "--quiet", *extra]
    )


# --------------------------------------------------------------------------- train, resume, probe, surface


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


# --------------------------------------------------------------------------- state_dict, .pt2, torchvision


def test_state_dict_and_pt2_top_eigenvalue_equal_dense_hessian(cli, user, tmp_path):
    from flatness.models.references import resolve_model_reference

    torch.manual_seed(0)
    net, _ = resolve_model_reference(user["model"], {"width": 7})
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(net, (user["x"][:4],), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(tmp_path / "net.pt2"))
    expected = dense_top_eigenvalue(net, user["x"], user["y"])

    out = tmp_path / "sd.json"
    result = probe(
        cli,
        tmp_path / "weights.pt",
        out,
        "--model",
        user["model"],
        "--model-args",
        '{"width": 7}',
        "--dataset",
        user["npz"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["hessian"]["eigenvalues"][0] == pytest.approx(expected, rel=1e-4)

    out = tmp_path / "pt2.json"
    result = probe(cli, tmp_path / "net.pt2", out, "--dataset", user["npz"], "--batch-size", "16")
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["hessian"]["eigenvalues"][0] == pytest.approx(expected, rel=1e-4)

    # weights that do not fit the model: the first missing/unexpected key or the shapes, one line
    line = one_line_error(
        probe(
            cli,
            tmp_path / "weights.pt",
            tmp_path / "bad.json",
            "--model",
            user["model"],
            "--model-args",
            '{"width": 9}',
            "--dataset",
            user["npz"],
        )
    )
    assert "do not fit" in line and "hidden.weight" in line and not (tmp_path / "bad.json").exists()


def test_torchvision_resnet18_probes_tiny_fake_images(cli, tmp_path):
    from torchvision.models import resnet18

    gen = np.random.default_rng(1)
    x = gen.normal(size=(6, 3, 32, 32)).astype(np.float32)
    y = gen.integers(0, 10, size=6)
    np.savez(tmp_path / "images.npz", x_train=x[:4], y_train=y[:4], x_test=x[4:], y_test=y[4:])
    torch.manual_seed(0)
    torch.save(resnet18(num_classes=10).state_dict(), tmp_path / "resnet.pt")
    out = tmp_path / "r.json"
    result = cli(
        [
            "probe",
            tmp_path / "resnet.pt",
            "--model",
            "torchvision:resnet18",
            "--model-args",
            '{"num_classes": 10}',
            "--dataset",
            tmp_path / "images.npz",
            "--top-k",
            "1",
            "--max-iter",
            "4",
            "--tol",
            "0.5",
            "--out",
            out,
            "--quiet",
        ]
    )
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["num_params"] == sum(p.numel() for p in resnet18(num_classes=10).parameters())
    assert written["data"]["samples"] == 4 and np.isfinite(written["hessian"]["eigenvalues"][0])


def eager_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Ground truth: the mean cross-entropy of the eager model (eval mode) on all of ``x`` at once."""
    model.eval()
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def test_safetensors_state_dict_with_model(cli, user, tmp_path):
    from safetensors.torch import save_file

    from flatness.models.references import resolve_model_reference

    torch.manual_seed(1)
    net, _ = resolve_model_reference(user["model"], {"width": 7})
    save_file(net.state_dict(), str(tmp_path / "net.safetensors"))
    out = tmp_path / "st.json"
    named = ["--model", user["model"], "--model-args", '{"width": 7}', "--dataset", user["npz"]]
    result = probe(cli, tmp_path / "net.safetensors", out, *named)
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["loss"] == pytest.approx(eager_loss(net, user["x"], user["y"]), rel=1e-6)
    assert written["hessian"]["eigenvalues"][0] == pytest.approx(
        dense_top_eigenvalue(net, user["x"], user["y"]), rel=1e-4
    )
    line = one_line_error(probe(cli, tmp_path / "net.safetensors", tmp_path / "no.json", "--dataset", user["npz"]))
    assert "pass --model" in line


class _MakesItsOwnMatrix(nn.Module):
    """A tensor the graph creates itself (torch.eye) keeps its export dtype: no float64 run."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x @ torch.eye(4))


def test_static_batch_pt2_runs_in_chunks_and_in_float64(cli, user, tmp_path):
    from flatness.models.references import resolve_model_reference

    torch.manual_seed(2)
    net, _ = resolve_model_reference(user["model"], {"width": 7})
    static = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(net, (user["x"][:4],)), str(static))  # batch size fixed at 4
    x, y = user["x"], user["y"]
    # probe batches of 16 run as 4 chunks of 4; the loss, its Hessian and the float64 run see all 48 examples
    out = tmp_path / "static.json"
    result = probe(cli, static, out, "--dataset", user["npz"], "--batch-size", "16")
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["data"]["samples"] == 48
    assert written["loss"] == pytest.approx(eager_loss(net, x, y), rel=1e-6)
    assert written["hessian"]["eigenvalues"][0] == pytest.approx(dense_top_eigenvalue(net, x, y), rel=1e-4)
    out64 = tmp_path / "static64.json"
    result = probe(cli, static, out64, "--dataset", user["npz"], "--batch-size", "16", "--dtype", "float64")
    assert result.exit_code == 0, result.output
    written = json.loads(out64.read_text())
    # the loss is summed in float32 by design (core.evaluation); the Hessian in float64 meets the dense
    # one to ~1e-13, where float32 HVPs are ~1e-6 off
    assert written["dtype"] == "float64" and written["loss"] == pytest.approx(eager_loss(net, x, y), rel=1e-6)
    assert written["hessian"]["eigenvalues"][0] == pytest.approx(dense_top_eigenvalue(net, x, y), rel=1e-10)
    # a batch that is no multiple of the exported one, and a program that cannot run in float64: one line each
    line = one_line_error(probe(cli, static, tmp_path / "b.json", "--dataset", user["npz"], "--batch-size", "10"))
    assert "multiple of 4" in line
    fixed = tmp_path / "eye.pt2"
    torch.export.save(torch.export.export(_MakesItsOwnMatrix(), (x[:4],)), str(fixed))
    line = one_line_error(probe(cli, fixed, tmp_path / "e.json", "--dataset", user["npz"], "--dtype", "float64"))
    assert "exported for torch.float32 inputs" in line and not (tmp_path / "e.json").exists()


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


# --------------------------------------------------------------------------- hostile .pt2


class _Payload:
    """Unpickling this creates ``path``: the stand-in for the code a crafted file would run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_hostile_pt2_is_refused_through_probe_and_runs_nothing(cli, user, tmp_path):
    torch.export.save(torch.export.export(nn.Linear(4, 3), (torch.randn(2, 4),)), str(tmp_path / "good.pt2"))
    marker = tmp_path / "PWNED"
    payload = io.BytesIO()
    torch.save((_Payload(str(marker)), {}), payload)
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(tmp_path / "good.pt2") as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info.filename, payload.getvalue() if "/data/sample_inputs/" in info.filename else data)
    out = tmp_path / "evil.json"
    line = one_line_error(probe(cli, evil, out, "--dataset", user["npz"]))
    assert "refusing" in line and not marker.exists() and not out.exists()
    # The file really is hostile: torch's own loader runs its code, in a child process.
    code = f"import torch\ntry: torch.export.load({str(evil)!r})\nexcept Exception: pass"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert marker.exists()


# --------------------------------------------------------------------------- bad input, one line each


def _npz(path, **arrays):
    gen = np.random.default_rng(0)
    base = {
        "x_train": gen.normal(size=(20, 4)).astype(np.float32),
        "y_train": np.arange(20) % 3,
        "x_test": gen.normal(size=(8, 4)).astype(np.float32),
        "y_test": np.arange(8) % 3,
    }
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return str(path)


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


def test_pt2_that_is_not_one(cli, user, tmp_path):
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a zip archive")
    out = tmp_path / "j.json"
    line = one_line_error(probe(cli, junk, out, "--dataset", user["npz"]))
    assert "junk.pt2" in line and not out.exists()


# --------------------------------------------------------------------------- experiment, MNIST-1D defaults


def test_experiment_on_a_user_model_and_npz(cli, user, tmp_path):
    out, npz = (
        tmp_path / "study",
        _npz(tmp_path / "big.npz", x_train=np.ones((130, 4), np.float32), y_train=np.arange(130) % 3),
    )  # --quick trains in batches of 128
    result = cli(
        [
            "experiment",
            "--model",
            user["model"],
            "--model-args",
            '{"width": 4}',
            "--dataset",
            npz,
            "--quick",
            "--seeds",
            "0",
            "--grid",
            "3",
            "--samples",
            "16",
            "--no-progress",
            "--out",
            out,
        ]
    )
    assert result.exit_code == 0, result.output
    probe_json = json.loads((out / "runs" / "amp-s0" / "probe.json").read_text())
    assert probe_json["checkpoint"]["model"] == user["model"] and probe_json["data"]["samples"] == 16
    assert (out / "REPORT.md").is_file() and (out / "runs" / "erm-s0" / "surface-2d.h5").is_file()


def test_mnist1d_picks_its_model_and_recipe():
    from flatness.training.config import build_config, recipe_values

    config = build_config({"dataset": "mnist1d"})
    assert (config.model, config.recipe) == ("mlp1d", "mnist1d-default")
    recipe = recipe_values("mnist1d-default")
    assert (config.lr, config.epsilon, config.inner_lr, config.schedule, config.nesterov) == (
        recipe["lr"],
        0.5,
        1.0,
        "cosine",
        False,
    )
    assert build_config({"dataset": "mnist1d", "model": "conv1d", "lr": 0.05}).model == "conv1d"
    assert build_config({"dataset": "mnist1d", "lr": 0.05}).lr == 0.05
    assert build_config({}).model == "convnet"  # digits keeps the general defaults


# --------------------------------------------------------------------------- README


README_HEADING = "## Your own model (command line)"


def readme_bash_block(text: str, heading: str) -> str:
    """The first fenced ```bash block after ``heading`` and before the next ``## `` heading."""
    start = text.find(heading + "\n")
    assert start >= 0, f"README.md has no section {heading!r}"
    body = text[start + len(heading) + 1 :]
    following = re.search(r"^## ", body, flags=re.MULTILINE)
    body = body[: following.start()] if following else body
    block = re.search(r"^```bash\n(.*?)^```\s*$", body, flags=re.MULTILINE | re.DOTALL)
    assert block is not None, f"README.md's section {heading!r} has no ```bash block"
    return block.group(1)


def test_readme_command_line_example_runs(tmp_path):
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    script = readme_bash_block(open(readme, encoding="utf-8").read(), README_HEADING)
    assert "--model mynet.py:make" in script and "mynet.pt2" in script
    (tmp_path / "example.sh").write_text(script)
    # As a user would run it: outside the checkout, `flatness` and `python` from the project's environment.
    env = dict(os.environ, OMP_NUM_THREADS="1", PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    proc = subprocess.run(
        ["bash", "-e", str(tmp_path / "example.sh")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"README example failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    probes = sorted(p.name for p in tmp_path.rglob("*.probe-train.json"))
    assert probes == ["last.probe-train.json", "mynet.probe-train.json", "weights.probe-train.json"], probes
    same = [
        json.loads((tmp_path / name).read_text())["hessian"]["eigenvalues"][0]
        for name in ("weights.probe-train.json", "mynet.probe-train.json")
    ]
    assert same[0] == pytest.approx(same[1], rel=1e-4)  # the same weights, as a state_dict and as a .pt2
