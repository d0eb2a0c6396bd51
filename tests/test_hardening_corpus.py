"""Issue 20's cases as a replayable corpus: ``tests/hardening_corpus.json``.

Each case is a command, the setup steps that build its inputs in a fresh workspace, its exit class
("ok": exit 0; "error": exit 2 with exactly one ``Error:`` line holding ``needle``), the files it may
write (``writes``), and text that must not appear in them (``absent``). Every file made by the setup
stays byte-identical with the same mtime, and nothing else is added. Cases run in-process with click's
CliRunner, so the whole corpus takes seconds.
"""

import json
import os
import socket

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import quick_digits_checkpoint
from user_factories import FACTORIES

from flatness.cli.main import main

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "hardening_corpus.json"), encoding="utf-8") as _handle:
    CORPUS = json.load(_handle)["cases"]


def _sweep(ws, folder, measures, gap=lambda i: i % 3 + 1 + 0.1 * (i // 3), method="erm"):
    from flatness.sweep.cells import write_table

    records = [
        {
            "cell": f"c{i}",
            "params": {"method": method, "a": i % 3},
            "seed": i // 3,
            "train_acc": 90.0,
            "test_acc": 80.0,
            "gap": gap(i),
            "test_error": 20.0,
            "status": "done",
            "measures": {m: gap(i) * (k + 1) + 0.01 * i for k, m in enumerate(measures)},
        }
        for i in range(9)
    ]
    os.makedirs(os.path.join(ws, folder))
    write_table(os.path.join(ws, folder), records, ["a"])


def _npz(ws, variant):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(48, 4)).astype(np.float32), np.arange(48) % 3
    if variant == "nan-input":
        x[7, 0] = np.nan
    elif variant == "negative-label":
        y[5] = -1
    elif variant == "label-10":
        y[33] = 10
    elif variant == "one-hot":
        y = np.eye(3, dtype=np.int64)[y]
    path = os.path.join(ws, f"{variant}.npz")
    if variant == "objects":
        objects = np.array([{"a": 1}] * 48, dtype=object)
        np.savez(path, x_train=objects, y_train=y, x_test=objects, y_test=y)
        return
    np.savez(path, x_train=x[:40], y_train=y[:40], x_test=x[40:], y_test=y[40:])


def _images(ws, name, loop=False):
    from PIL import Image

    for split in ("train", "test"):
        for label in ("a", "b"):
            os.makedirs(os.path.join(ws, name, split, label))
            for i in range(2):
                Image.new("RGB", (6, 6), (i * 60, 0, 0)).save(os.path.join(ws, name, split, label, f"{i}.png"))
    if loop:
        os.symlink(os.path.join(ws, name, "train"), os.path.join(ws, name, "train", "a", "loop"))


def _nan_surface(ws):
    import h5py

    with h5py.File(os.path.join(ws, "nan.h5"), "w") as f:
        f["xcoordinates"] = np.linspace(-1, 1, 5)
        f["train_loss"] = np.full(5, np.nan)
        f.attrs["accuracy_unit"] = "percent"


def _nan_probe(ws):
    probe = {
        "format": "flatness-probe",
        "flatness_version": "0.1.0",
        "weight_norm": 1.0,
        "distance_from_init": 0.5,
        "sidecar": None,
        "checkpoint": {"path": "/r/last.pt", "method": "erm", "seed": 0, "dataset": "digits", "epoch": 1},
        "data": {"dataset": "digits", "split": "train", "samples": 10, "batch_size": 10},
        "loss": 0.1,
        "accuracy": 0.9,
        "num_params": 10,
        "hessian": {"method": "lanczos", "eigenvalues": [float("nan"), 1.0], "residuals": [0, 0], "hvps": 1},
    }
    with open(os.path.join(ws, "nan-probe.json"), "w") as handle:
        handle.write(json.dumps(probe))  # json writes NaN as the bare word NaN, as Python reads it back


def _train(ws, out, *extra, dataset=None):
    args = ["train", "--model", f"{ws}/f.py:model", "--dataset", dataset or f"{ws}/f.py:data", "--epochs", "1"]
    result = CliRunner().invoke(main, [*args, "--batch-size", "16", "--no-progress", "--out", out, *extra])
    assert result.exit_code == 0, result.output


def _flip_payload_byte(path):
    """One bit flipped inside the first tensor's bytes; the zip's headers and recorded CRCs stay as written."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 8)
    with open(path, "rb") as handle:
        data = bytearray(handle.read())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + 5] ^= 0x10
    with open(path, "wb") as handle:
        handle.write(bytes(data))


def _stale(ws, step, shared):
    """Class 6's inputs: a swapped last.pt, a flipped byte, a replaced npz, a path outside, a damaged sweep.json."""
    import shutil

    from flatness.formats.checkpoint import save_checkpoint

    if step == "stale:swapped-last":
        _train(ws, f"{ws}/mine")
        _train(ws, f"{ws}/other", "--lr", "0.1")
        shutil.copy(f"{ws}/other/last.pt", f"{ws}/mine/last.pt")
    elif step == "stale:flipped-byte":
        shutil.copy(shared["ckpt"], f"{ws}/flipped.pt")
        _flip_payload_byte(f"{ws}/flipped.pt")
    elif step == "stale:replaced-npz":
        _npz(ws, "good")
        _train(ws, f"{ws}/run", dataset=f"{ws}/good.npz")
        os.replace(f"{ws}/good.npz", f"{ws}/kept.npz")
        _npz(ws, "nan-input")
        os.replace(f"{ws}/nan-input.npz", f"{ws}/good.npz")  # other data under the recorded name
    elif step == "stale:data-outside":
        import torch

        spec = {"name": f"{ws}/f.py:model", "reference": f"{ws}/f.py:model", "args": None}
        config = {"dataset": "/etc/flatness-private.npz", "model": spec["name"], "method": "erm", "seed": 0}
        save_checkpoint(f"{ws}/crafted.pt", torch.nn.Linear(4, 3), model_spec=spec, config=config, epoch=1)
    elif step == "stale:damaged-sweep-state":
        os.makedirs(f"{ws}/sweep/cells")
        with open(f"{ws}/sweep/sweep.json", "w") as handle:
            handle.write('{"format": "flatness-sweep", "fro')
    elif step == "correlated":
        result = CliRunner().invoke(main, ["correlate", f"{ws}/sweep", "--draws", "20", "--no-figures"])
        assert result.exit_code == 0, result.output
    else:
        raise AssertionError(f"unknown setup step {step}")


def build(ws, step, shared):
    if step == "secret":
        with open(os.path.join(ws, "secret.png"), "wb") as handle:
            handle.write(b"\x89PNG\r\n\x1a\nTHE-SECRET")
    elif step == "sweep:hostile":
        names = [f"![x]({ws}/secret.png)", "![y](../secret.png)", "<script>alert(1)</script>", "=HYPERLINK(1)"]
        _sweep(ws, "sweep", names, method="<img src=x onerror=alert(1)>")
    elif step == "sweep:plain":
        _sweep(ws, "sweep", ["lambda_1"])
    elif step == "sweep:constant":
        _sweep(ws, "constant", ["lambda_1"], gap=lambda i: 5.0)
    elif step == "ckpt":
        os.symlink(shared["ckpt"], os.path.join(ws, "ckpt.pt"))
    elif step == "images":
        _images(ws, "images")
    elif step == "loop-images":
        _images(ws, "loop-images", loop=True)
    elif step == "factories":
        with open(os.path.join(ws, "f.py"), "w") as handle:
            handle.write(FACTORIES)
    elif step.startswith("npz:"):
        _npz(ws, step[4:])
    elif step == "nan-surface":
        _nan_surface(ws)
    elif step == "nan-probe":
        _nan_probe(ws)
    else:
        _stale(ws, step, shared)


def stamp(root):
    out = {}
    for folder, dirs, names in os.walk(root):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            full = os.path.join(folder, name)
            if os.path.islink(full):
                out[os.path.relpath(full, root)] = (os.readlink(full), None)
            else:
                with open(full, "rb") as handle:
                    out[os.path.relpath(full, root)] = (handle.read(), os.stat(full).st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "ckpt.pt"
    return {"ckpt": quick_digits_checkpoint(path, model_name="mlp", width=8, depth=1, steps=5)}


def substitutions(ws):
    with socket.socket() as probe:  # free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return {
        "{ws}": ws,
        "{free_port}": str(port),
        "{million_cells}": "lr=" + ",".join(f"0.{i:04d}1" for i in range(1000)),
        "{thousand_seeds}": ",".join(str(i) for i in range(1000)),
    }


@pytest.mark.parametrize("case", CORPUS, ids=[c["id"] for c in CORPUS])
def test_hardening_corpus(tmp_path, shared, monkeypatch, case):
    from flatness.core import engines

    ws = str(tmp_path / "ws")
    os.makedirs(ws)
    for step in case["setup"]:
        build(ws, step, shared)
    monkeypatch.setattr(engines, "check_engine", lambda engine: None)  # --engine ray without Ray installed
    subs = substitutions(ws)
    args = []
    for arg in case["command"]:
        for key, value in subs.items():
            arg = arg.replace(key, value)
        args.append(arg)
    before = stamp(ws)
    result = CliRunner().invoke(main, args)
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    if case["exit"] == "ok":
        assert result.exit_code == 0, result.output
    else:
        assert result.exit_code == 2, (result.exit_code, result.output)
        assert len(lines) == 1 and lines[0].startswith("Error: ") and case["needle"] in lines[0], result.output
    assert "Traceback" not in result.output
    after = stamp(ws)
    for name, value in before.items():
        assert after.get(name) == value, f"{name} changed"
    assert sorted(set(after) - set(before)) == sorted(case.get("writes", [])), "files added"
    for where, texts in case.get("absent", {}).items():
        body = result.output if where == "<output>" else open(os.path.join(ws, where), encoding="utf-8").read()
        for text in texts:
            assert text not in body, (where, text)


def test_hardening_corpus_covers_each_class_of_the_issue():
    assert {c["class"] for c in CORPUS} >= {1, 2, 3, 4, 5, 6, 7, 8, 9}
    assert len({c["id"] for c in CORPUS}) == len(CORPUS)
