"""Hardening, third round (issue 20): one test per class of fault, named after the class, each failing on
the code before its fix. The classes and these test names are listed in docs/reliability.md.
"""

import base64
import json
import os

import pytest
from click.testing import CliRunner
from user_factories import FACTORIES

from flatness.cli.main import main


def invoke(args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def one_line_error(result, needle, code=2):
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], result.output
    return lines[0]


def write_sweep(folder, measures, n_cells=9, method_name=None):
    """A finished sweep table whose measure columns carry the given names (the gap rises with ``a``)."""
    from flatness.sweep.cells import write_table

    records = []
    for i in range(n_cells):
        a, seed = i % 3 + 1, i // 3
        gap = a + 0.1 * seed
        records.append(
            {
                "cell": f"c{i}",
                "params": {"method": method_name or ("erm" if i % 2 else "sam"), "a": a},
                "seed": seed,
                "train_acc": 90.0,
                "test_acc": 90.0 - gap,
                "gap": gap,
                "test_error": 10.0 + gap,
                "status": "done",
                "measures": {name: gap * (k + 1) for k, name in enumerate(measures)},
            }
        )
    os.makedirs(folder, exist_ok=True)
    write_table(str(folder), records, ["method", "a"])


# --------------------------------------------------------------------------- class 1: report injection


def test_report_injection(tmp_path):
    """Names from cells.csv are text in every output, and the report reads no file it did not write."""
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\nTHE-SECRET-BYTES-0123456789")
    encoded = base64.b64encode(secret.read_bytes()).decode()[:24]
    sweep = tmp_path / "sweep"
    measures = [
        f"![x]({secret})",  # an absolute path
        "![y](../secret.png)",  # a path out of the folder
        "<script>alert(1)</script>",
        "=HYPERLINK(1)",
        "$\\frac{a}{b}$",
    ]
    write_sweep(sweep, measures, method_name="<img src=x onerror=alert(1)>")
    result = invoke(["correlate", sweep, "--draws", "20"])
    assert result.exit_code == 0, result.output
    page = (sweep / "report.html").read_text()
    md = (sweep / "correlation.md").read_text()
    assert encoded not in page and "THE-SECRET" not in page
    assert "<script>" not in page and "<img src=x" not in page and "&lt;script&gt;" in page
    assert page.count("<img ") == 2  # the two figures correlate drew, nothing else
    assert "](" + str(secret) not in md.replace("\\]", "")  # the link is escaped text in the Markdown
    assert "\\!\\[x\\](/" in md and "\\!\\[y\\](../secret.png)" in md and "\\<script\\>" in md
    csv_text = (sweep / "correlation.csv").read_text()
    assert "'=HYPERLINK(1)" in csv_text and "\n=HYPERLINK" not in csv_text
    assert "THE-SECRET" not in result.output and "\x1b" not in result.output


def test_report_injection_experiment_report_embeds_only_its_own_figures(tmp_path):
    """The experiment's converter: a figure it wrote is embedded, a local file named in the text is not."""
    from flatness.study.report import markdown_to_html

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "ok.png").write_bytes(b"\x89PNG\r\n\x1a\nfigure")
    (tmp_path / "figures" / "other.png").write_bytes(b"\x89PNG\r\n\x1a\nnot-this-command")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    outside.write_bytes(b"\x89PNG\r\n\x1a\nOUTSIDE")
    os.symlink(outside, tmp_path / "figures" / "link.png")
    md = "\n\n".join(
        [
            "![a](figures/ok.png)",
            "![b](figures/other.png)",
            f"![c]({outside})",
            "![d](figures/link.png)",
            "![e](file:///etc/passwd)",
        ]
    )
    page = markdown_to_html(md, str(tmp_path), "t", figures=[str(tmp_path / "figures" / "ok.png")])
    assert base64.b64encode(b"\x89PNG\r\n\x1a\nfigure").decode() in page
    for text in (b"not-this-command", b"OUTSIDE"):
        assert base64.b64encode(b"\x89PNG\r\n\x1a\n" + text).decode()[:16] not in page
    assert page.count("<img ") == 1 and 'src="file:' not in page and "<p>[c]</p>" in page


# --------------------------------------------------------------------------- class 4: user code and the exit code


USER_OUTCOMES = [
    ("exit0", "SystemExit: 0"),
    ("exit3", "SystemExit: 3"),
    ("ctrl_c", "KeyboardInterrupt"),
    ("generator_exit", "GeneratorExit: closed"),
    ("custom", "Custom: mine"),
]


@pytest.mark.parametrize("name, raised", USER_OUTCOMES, ids=[n for n, _ in USER_OUTCOMES])
def test_user_code_decides_the_exit_code(tmp_path, name, raised):
    """Whatever a model factory raises, BaseException included, is one line naming it, exit 2, no folder."""
    (tmp_path / "f.py").write_text(FACTORIES)
    ref, data = f"{tmp_path / 'f.py'}:{name}", f"{tmp_path / 'f.py'}:data"
    out = tmp_path / "run"
    result = invoke(["train", "--model", ref, "--dataset", data, "--epochs", "1", "--no-progress", "--out", out])
    line = one_line_error(result, f"{ref} raised {raised}")
    assert "Interrupted" not in line and not out.exists()


def test_user_code_decides_the_exit_code_data_factory_and_builtin_callable(tmp_path):
    (tmp_path / "f.py").write_text(FACTORIES)
    model, data = f"{tmp_path / 'f.py'}:model", f"{tmp_path / 'f.py'}:data_exit0"
    out = tmp_path / "run"
    one_line_error(invoke(["train", "--model", model, "--dataset", data, "--out", out]), "data_exit0 raised SystemExit")
    result = invoke(["train", "--model", "sys:exit", "--dataset", f"{tmp_path / 'f.py'}:data", "--out", out])
    one_line_error(result, "sys:exit raised SystemExit")
    study = tmp_path / "study"
    exp = ["experiment", "--model", f"{tmp_path / 'f.py'}:exit0", "--dataset", f"{tmp_path / 'f.py'}:data"]
    result = invoke([*exp, "--quick", "--seeds", "0", "--no-progress", "--out", study])
    one_line_error(result, "exit0 raised SystemExit: 0")


def test_user_code_decides_the_exit_code_model_forward(tmp_path):
    """A user's model whose forward raises (here only in training mode, so the data check passes) is user
    code: one line naming the model, exit 2, not "Internal error" (exit 1) blaming flatness."""
    (tmp_path / "f.py").write_text(FACTORIES)
    model, data = f"{tmp_path / 'f.py'}:fails_in_training", f"{tmp_path / 'f.py'}:data"
    result = invoke(
        ["train", "--model", model, "--dataset", data, "--epochs", "1", "--no-progress", "--out", tmp_path / "r"]
    )
    one_line_error(result, "the model (FailsInTraining) raised ValueError: boom in training in its forward")


def test_user_code_decides_the_exit_code_backstop_and_real_signals():
    """Code outside a factory (a model's forward, say) that raises SystemExit or KeyboardInterrupt is an
    error too; only a real signal is reported as "Interrupted"."""
    import signal

    import click

    from flatness.cli.main import FlatnessGroup, Interrupted

    group = FlatnessGroup("g")
    for name, exc in (("exit", SystemExit(0)), ("kbd", KeyboardInterrupt()), ("sig", Interrupted(signal.SIGINT))):

        def raiser(exc=exc):
            raise exc

        group.add_command(click.Command(name, callback=raiser))
    assert one_line_error(CliRunner().invoke(group, ["exit"]), "SystemExit: 0 raised by code")
    assert one_line_error(CliRunner().invoke(group, ["kbd"]), "KeyboardInterrupt raised by code")
    result = CliRunner().invoke(group, ["sig"])
    assert result.exit_code == 130 and result.output.startswith("Interrupted."), result.output


# --------------------------------------------------------------------------- class 3: hangs


def test_hangs_a_lock_that_cannot_be_made_is_an_error_not_busy(tmp_path, monkeypatch):
    """A cell lock whose name is too long (or whose folder is read-only) fails at once: never retried."""
    from flatness.core.errors import FlatnessError
    from flatness.sweep import cells

    def no_waiting(seconds):
        raise AssertionError("a lock that cannot be created was retried as if busy")

    monkeypatch.setattr(cells.time, "sleep", no_waiting)
    (tmp_path / "cells").mkdir()
    with pytest.raises(FlatnessError, match="cannot write"):
        with cells.waiting_lock(cells.cell_lock_path(str(tmp_path), "x" * 300), "sweep cell"):
            pass


def test_hangs_cell_folder_names_are_bounded(tmp_path):
    """Many keys with long values: every cell name fits a file name with its lock, distinct, stable."""
    from flatness.sweep.grid import MAX_NAME_BYTES, expand, parse_grid

    long_lrs = ",".join(f"0.000123456789{i}123456" for i in range(3))
    grid = parse_grid(
        f"method=amp,sam lr={long_lrs} weight_decay=0.000123456789012345,0.000123456789012346 "
        "momentum=0.912345678901234 epsilon=0.0123456789012345 inner_lr=0.0123456789012345 rho=0.0123456789012345"
        " schedule=cosine grad_clip=1.23456789012345 batch_size=64"
    )
    cells = expand(grid, [0, 18446744073709551615])
    names = [c.name for c in cells]
    assert max(len(n.encode()) for n in names) <= MAX_NAME_BYTES < 255 - 20
    assert len(set(names)) == len(names) and names == [c.name for c in expand(grid, [0, 18446744073709551615])]
    assert any("-h" in n for n in names) and all(n.startswith("method-") for n in names)
    for name in names:  # each makes a real folder and lock file
        from flatness.sweep.cells import cell_lock_path, waiting_lock

        (tmp_path / "cells" / name).mkdir(parents=True)
        with waiting_lock(cell_lock_path(str(tmp_path), name), "sweep cell"):
            pass


def test_hangs_a_ray_address_that_does_not_answer_is_one_line(tmp_path, monkeypatch):
    """--engine ray --address HOST:PORT: a refused or silent address is one line naming the wait."""
    import socket

    from flatness.core import engines

    def silent(address, timeout):
        raise TimeoutError("timed out")

    with monkeypatch.context() as patch:
        patch.setattr(socket, "create_connection", silent)
        with pytest.raises(engines.FlatnessError, match=r"within 15 s \(no answer\)"):
            engines.check_ray_address("ray://10.255.255.1:6379")
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(engines, "check_engine", lambda engine: None)  # Ray need not be installed
    result = invoke(["sweep", "--engine", "ray", "--address", f"127.0.0.1:{port}", "--quick", "--out", tmp_path / "s"])
    one_line_error(result, f"no Ray cluster answers at 127.0.0.1:{port} within")
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- class 2: unbounded work

MANY_LRS = ",".join(f"0.{i:04d}1" for i in range(1000))
MANY_SEEDS = ",".join(str(i) for i in range(1000))
UNBOUNDED = [
    (["train", "--epochs", "1000000000"], "epochs is 1000000000, above flatness's bound of 100000"),
    (["train", "--image-size", "100000"], "bound of 4096 pixels per image side"),
    (["train", "--method", "amp", "--inner-iter", "1000000000"], "bound of 1000 AMP inner steps"),
    (["train", "--width", "100000000"], "bound of 65536 units per layer"),
    (["sweep", "--grid", "method=amp inner_iter=1000000000"], "inner_iter is 1000000000, above"),
    (["sweep", "--grid", f"lr={MANY_LRS}", "--seeds", MANY_SEEDS], "number of cells is 1000000, above"),
    (["probe", "CKPT", "--max-iter", "10000000000"], "bound of 100000 eigensolver iterations"),
    (["probe", "CKPT", "--trace-samples", "10000000000"], "bound of 100000 Hutchinson vectors"),
    (["surface", "CKPT", "--y=-1:1:60000"], "at most 1000000 are allowed"),
]


@pytest.mark.parametrize("args, needle", UNBOUNDED, ids=[f"{a[0]}-{a[1]}" for a, _ in UNBOUNDED])
def test_unbounded_work(tmp_path, digits_mlp_checkpoint, args, needle):
    """Every count that sets a command's time or memory has a bound, checked before any work."""
    args = [digits_mlp_checkpoint if a == "CKPT" else a for a in args]
    out = tmp_path / "out"
    one_line_error(invoke([*args, "--out", out]), needle)
    assert not out.exists()


def test_unbounded_work_correlate_draws(tmp_path):
    write_sweep(tmp_path, ["lambda_1"])
    before = sorted(os.listdir(tmp_path))
    one_line_error(invoke(["correlate", tmp_path, "--draws", "999999999999"]), "bound of 100000 bootstrap")
    assert sorted(os.listdir(tmp_path)) == before


def test_unbounded_work_bounds_are_documented():
    from flatness.core.limits import LIMITS

    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "reliability.md"), encoding="utf-8") as handle:
        doc = handle.read()
    for name, (bound, _) in LIMITS.items():
        assert f"| `{name}` | {bound} |" in doc, name


# --------------------------------------------------------------------------- class 5: bad data

BAD_DATA_FACTORIES = """
import torch
from torch.utils.data import Dataset, TensorDataset


class Listed(Dataset):
    def __init__(self, items, length=None):
        self.items, self.length = items, length

    def __len__(self):
        return self.length or len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def good(n):
    return [(torch.randn(4), i % 3) for i in range(n)]


def ragged():
    items = good(40)
    items[17] = (torch.randn(5), 1)
    return Listed(items), Listed(good(8))


def triples():
    items = good(40)
    items[3] = (torch.randn(4), 1, "extra")
    return Listed(items), Listed(good(8))


def wrong_len():
    return Listed(good(40), length=45), Listed(good(8))


def late_label():
    items = good(40)
    items[31] = (torch.randn(4), 10)
    return Listed(items), Listed(good(8))


def float_then_int():
    items = [(torch.randn(4), torch.tensor(1.0)) for _ in range(40)]
    items[12] = (torch.randn(4), 2)
    return Listed(items), Listed(good(8))
"""


def _npz(path, **changes):
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.normal(size=(40, 4)).astype(np.float32),
        "y_train": np.arange(40) % 3,
        "x_test": rng.normal(size=(8, 4)).astype(np.float32),
        "y_test": np.arange(8) % 3,
    }
    for key, (index, value) in changes.items():
        arrays[key] = arrays[key].copy()
        arrays[key][index] = value
    np.savez(path, **arrays)
    return str(path)


BAD_NPZ = [
    ("nan-input", {"x_train": (7, float("nan"))}, "train split: example 7 has a NaN or infinite input value"),
    ("inf-test-input", {"x_test": (2, float("inf"))}, "test split: example 2 has a NaN or infinite input value"),
    ("negative-label", {"y_train": (5, -1)}, "example 5 has the label -1"),
    ("label-beyond-classes", {"y_train": (33, 10)}, "gives 3 class scores but the data has the label 10"),
    ("test-label-beyond-classes", {"y_test": (3, 5)}, "gives 3 class scores but the data has the label 5"),
]


@pytest.mark.parametrize("name, changes, needle", BAD_NPZ, ids=[c[0] for c in BAD_NPZ])
def test_bad_data(tmp_path, name, changes, needle):
    """Every example is checked where the data is loaded: the first bad one is named, nothing runs."""
    (tmp_path / "f.py").write_text(FACTORIES)
    npz = _npz(tmp_path / "d.npz", **changes)
    out = tmp_path / "run"
    result = invoke(["train", "--model", f"{tmp_path / 'f.py'}:model", "--dataset", npz, "--out", out])
    one_line_error(result, needle)
    assert not out.exists()


BAD_FACTORIES = [
    ("ragged", "example 17 has inputs of shape [(5,)] but example 0 [(4,)]"),
    ("triples", "example 3 is 3 items, not an (inputs, target) pair"),
    ("wrong_len", "example 40 cannot be read (len() says 45 examples): IndexError"),
    ("late_label", "gives 3 class scores but the data has the label 10"),
    ("float_then_int", "example 12 has a int target () but example 0 a float target ()"),
]


@pytest.mark.parametrize("factory, needle", BAD_FACTORIES, ids=[c[0] for c in BAD_FACTORIES])
def test_bad_data_from_a_factory(tmp_path, factory, needle):
    (tmp_path / "f.py").write_text(FACTORIES)
    (tmp_path / "bad.py").write_text(BAD_DATA_FACTORIES)
    out = tmp_path / "run"
    model, data = f"{tmp_path / 'f.py'}:model", f"{tmp_path / 'bad.py'}:{factory}"
    one_line_error(invoke(["train", "--model", model, "--dataset", data, "--out", out]), needle)
    assert not out.exists()


def test_bad_data_image_folders(tmp_path):
    """A link loop in an image folder, and images of mixed sizes without --image-size."""
    from PIL import Image

    root = tmp_path / "images"
    for split in ("train", "test"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / split / label / f"{i}.png")
    out = tmp_path / "run"
    train = ["train", "--dataset", f"imagefolder:{root}", "--model", "mlp", "--epochs", "1", "--out", out]
    Image.new("RGB", (9, 8)).save(root / "train" / "b" / "odd.png")
    one_line_error(invoke(train), "has inputs of shape [(3, 8, 9)] but example 0 [(3, 8, 8)]")
    os.remove(root / "train" / "b" / "odd.png")
    os.symlink(root / "train", root / "train" / "a" / "loop")
    one_line_error(invoke(train), "a link to a folder walked already")
    assert not out.exists()


# --------------------------------------------------------------------------- class 7: statistics where none exist


def _sweep_with(folder, target_fn, measure_fn):
    from flatness.sweep.cells import write_table

    records = []
    for i in range(9):
        gap = target_fn(i)
        records.append(
            {
                "cell": f"c{i}",
                "params": {"method": "erm", "a": i % 3},
                "seed": i // 3,
                "train_acc": 90.0,
                "test_acc": 80.0,
                "gap": gap,
                "test_error": 20.0,
                "status": "done",
                "measures": {"lambda_1": measure_fn(i), "trace": measure_fn(i)},
            }
        )
    os.makedirs(folder, exist_ok=True)
    write_table(str(folder), records, ["a"])


UNDEFINED = [
    ("constant-target", lambda i: 5.0, lambda i: float(i), "the gap is 5 in every one of the 9 cells"),
    ("nan-target", lambda i: "nan", lambda i: float(i), "has gap = nan, not a finite number"),
    ("text-target", lambda i: "high", lambda i: float(i), "has gap = 'high', not a finite number"),
    ("constant-measures", lambda i: float(i), lambda i: 1.0, "every measure is constant or missing"),
]


@pytest.mark.parametrize("name, target, measure, needle", UNDEFINED, ids=[c[0] for c in UNDEFINED])
def test_statistics_where_none_exist_correlate(tmp_path, name, target, measure, needle):
    _sweep_with(tmp_path, target, measure)
    before = sorted(os.listdir(tmp_path))
    one_line_error(invoke(["correlate", tmp_path, "--draws", "20", "--no-figures"]), needle)
    assert sorted(os.listdir(tmp_path)) == before


def test_statistics_where_none_exist_plot(tmp_path):
    """An all-NaN surface and a NaN spectrum are errors, not empty pictures."""
    import h5py
    import numpy as np

    surface = tmp_path / "s.h5"
    with h5py.File(surface, "w") as f:
        f["xcoordinates"] = np.linspace(-1, 1, 5)
        f["train_loss"] = np.full(5, np.nan)
        f.attrs["accuracy_unit"] = "percent"
    out = tmp_path / "figs"
    one_line_error(invoke(["plot", surface, "--out", out]), "holds no computed point")
    probe = json.loads(json.dumps(PROBE))
    probe["hessian"]["eigenvalues"] = [float("nan"), 1.0]
    (tmp_path / "p.json").write_text(json.dumps(probe))
    one_line_error(invoke(["plot", tmp_path / "p.json", "--out", out]), "eigenvalue #1 is nan; no spectrum exists")
    assert not out.exists()


PROBE = {
    "format": "flatness-probe",
    "flatness_version": "0.1.0",
    "weight_norm": 10.0,
    "distance_from_init": 3.0,
    "sidecar": None,
    "checkpoint": {"path": "/r/last.pt", "method": "erm", "seed": 0, "dataset": "digits", "epoch": 3},
    "data": {"dataset": "digits", "split": "train", "samples": 100, "batch_size": 50},
    "loss": 0.05,
    "accuracy": 0.99,
    "num_params": 1000,
    "hessian": {"method": "lanczos", "eigenvalues": [2.0, 1.0], "residuals": [0.0, 0.0], "hvps": 10, "seconds": 1.0},
}


# --------------------------------------------------------------------------- class 9: messages


def test_messages_never_advise_the_unsafe_path_and_no_warning_comes_before_the_error(tmp_path):
    import warnings

    import click

    # a damaged npz: numpy's text about allow_pickle is not passed on
    import numpy as np

    from flatness.cli.main import FlatnessGroup
    from flatness.core.errors import FlatnessError

    np.save(tmp_path / "x_train.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    import zipfile

    with zipfile.ZipFile(tmp_path / "d.npz", "w") as archive:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            archive.write(tmp_path / "x_train.npy", f"{key}.npy")
    (tmp_path / "f.py").write_text(FACTORIES)
    model = f"{tmp_path / 'f.py'}:model"
    result = invoke(["train", "--model", model, "--dataset", tmp_path / "d.npz", "--out", tmp_path / "run"])
    line = one_line_error(result, "cannot read")
    assert "allow_pickle" not in line and "pickle=True" not in line and "never does" in line

    group = FlatnessGroup("g")

    def warn_then_fail():
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
        raise FlatnessError("torch says: Re-running `torch.load` with `weights_only` set to `False` will succeed.")

    def warn_then_succeed():
        warnings.warn("kept for the end", UserWarning, stacklevel=1)
        click.echo("done")

    group.add_command(click.Command("fail", callback=warn_then_fail))
    group.add_command(click.Command("ok", callback=warn_then_succeed))
    line = one_line_error(CliRunner().invoke(group, ["fail"]), "torch says:")
    assert "weights_only" not in line and "Warning" not in line
    result = CliRunner().invoke(group, ["ok"])
    assert result.exit_code == 0 and result.output.splitlines() == ["done", "Warning: kept for the end"]


# --------------------------------------------------------------------------- class 8: leftovers and files


@pytest.mark.parametrize("command", [["sweep", "--quick"], ["train", "--epochs", "1"], ["experiment", "--quick"]])
def test_leftovers_an_empty_out_is_refused_not_the_current_folder(tmp_path, monkeypatch, command):
    """``--out ''`` used to write a sweep into the current folder (and train into its default folder)."""
    monkeypatch.chdir(tmp_path)
    one_line_error(invoke([*command, "--out", ""]), "--out is empty")
    assert os.listdir(tmp_path) == []


def test_leftovers_a_run_that_failed_in_its_first_epoch_is_started_over_by_the_plain_rerun(tmp_path):
    """A run that diverged in epoch 1 kept its epoch-0 files; the corrected rerun was refused as "not empty"."""
    (tmp_path / "f.py").write_text(FACTORIES)
    out = tmp_path / "run"
    args = ["train", "--model", f"{tmp_path / 'f.py'}:model", "--dataset", f"{tmp_path / 'f.py'}:data"]
    args += ["--epochs", "1", "--no-progress", "--out", out]
    result = invoke([*args, "--lr", "1e30"])
    assert result.exit_code == 3 and "training diverged" in result.output, result.output
    assert (out / "last.pt").exists()
    result = invoke(args)
    assert result.exit_code == 0, result.output
    from flatness.formats.checkpoint import read_checkpoint, read_run_config

    assert read_checkpoint(str(out / "last.pt"))["epoch"] == 1 and read_run_config(str(out))["lr"] == 0.05
    assert sorted(os.listdir(out)) == ["config.json", "init.pt", "last.pt", "metrics.jsonl"]


def test_leftovers_a_surface_that_failed_before_its_first_point_is_replaced_by_the_plain_rerun(
    tmp_path, digits_mlp_checkpoint, monkeypatch
):
    from flatness.core.errors import FlatnessError
    from flatness.landscape import compute

    h5 = tmp_path / "s.h5"
    args = ["surface", digits_mlp_checkpoint, "--x=-1:1:3", "--samples", "64", "--out", h5, "--quiet"]

    def fails(*a, **k):
        raise FlatnessError("the first point failed")

    with monkeypatch.context() as patch:
        patch.setattr(compute, "_run_grid", fails)
        one_line_error(invoke(args), "the first point failed")
    assert h5.exists()  # made, no point in it
    result = invoke(args)
    assert result.exit_code == 0 and "3 points computed" in result.output, result.output
    one_line_error(invoke(args), "already exists; use --resume")  # a file with points is a result: kept


def test_leftovers_correlate_keeps_its_outputs_without_force(tmp_path):
    write_sweep(tmp_path, ["lambda_1"])
    assert invoke(["correlate", tmp_path, "--draws", "20"]).exit_code == 0
    names = ["correlation.json", "correlation.csv", "correlation.md", "report.html"]
    before = {n: ((tmp_path / n).read_bytes(), (tmp_path / n).stat().st_mtime_ns) for n in names}
    again = invoke(["correlate", tmp_path, "--draws", "30"])
    one_line_error(again, "correlation.json exists (and 5 more); pass --force")
    assert before == {n: ((tmp_path / n).read_bytes(), (tmp_path / n).stat().st_mtime_ns) for n in names}
    result = invoke(["correlate", tmp_path, "--draws", "30", "--force"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "correlation.json").stat().st_mtime_ns != before["correlation.json"][1]


# --------------------------------------------------------------------------- class 6: stale or swapped inputs


def _train_user_run(tmp_path, out, *extra, dataset=None):
    (tmp_path / "f.py").write_text(FACTORIES)
    args = ["train", "--model", f"{tmp_path / 'f.py'}:model", "--dataset", dataset or f"{tmp_path / 'f.py'}:data"]
    result = invoke([*args, "--epochs", "1", "--batch-size", "16", "--no-progress", "--out", out, *extra])
    assert result.exit_code == 0, result.output
    return args


def _stamps(folder):
    return {
        n: ((folder / n).read_bytes(), (folder / n).stat().st_mtime_ns)
        for n in sorted(os.listdir(folder))
        if (folder / n).is_file()
    }


def test_stale_or_swapped_inputs_a_last_pt_from_another_run_is_not_resumed(tmp_path):
    import shutil

    mine, other = tmp_path / "mine", tmp_path / "other"
    args = _train_user_run(tmp_path, mine)
    _train_user_run(tmp_path, other, "--lr", "0.1")
    shutil.copy(other / "last.pt", mine / "last.pt")
    before = _stamps(mine)
    result = invoke([*args, "--epochs", "2", "--no-progress", "--out", mine, "--resume"])
    one_line_error(result, "last.pt is not this run's checkpoint: it was trained with lr=0.1")
    assert _stamps(mine) == before  # config.json not rewritten


def _flip_payload_byte(path):
    """Flip one bit inside the first tensor's stored bytes (the zip's headers and CRCs stay as written)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 8)
    data = bytearray(open(path, "rb").read())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + 5] ^= 0x10
    open(path, "wb").write(bytes(data))


def test_stale_or_swapped_inputs_a_flipped_byte_is_refused(tmp_path, digits_mlp_checkpoint):
    import shutil

    import torch

    ckpt = tmp_path / "flipped.pt"
    shutil.copy(digits_mlp_checkpoint, ckpt)
    _flip_payload_byte(ckpt)
    torch.load(ckpt, weights_only=True)  # torch itself reads it without complaint: other numbers
    one_line_error(invoke(["probe", ckpt, "--top-k", "1", "--out", tmp_path / "p.json"]), "fails its CRC check")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    program = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 1, 8, 8),)), str(program))
    _flip_payload_byte(program)
    args = ["probe", program, "--dataset", "digits", "--top-k", "1", "--out", tmp_path / "q.json"]
    one_line_error(invoke(args), "m.pt2 is a damaged .pt2 program: member")
    assert not (tmp_path / "p.json").exists() and not (tmp_path / "q.json").exists()


def test_stale_or_swapped_inputs_a_replaced_npz_is_not_probed(tmp_path):
    npz = _npz(tmp_path / "d.npz")
    run = tmp_path / "run"
    _train_user_run(tmp_path, run, dataset=npz)
    model = f"{tmp_path / 'f.py'}:model"
    probe = ["probe", run, "--model", model, "--top-k", "1", "--out", tmp_path / "p.json"]
    assert invoke([*probe, "--quiet"]).exit_code == 0  # the recorded npz, unchanged: followed
    _npz(tmp_path / "d.npz", x_train=(0, 9.0))  # other data under the same name
    one_line_error(invoke([*probe, "--force"]), "d.npz is not the data")
    one_line_error(invoke([*probe, "--force", "--dataset", npz]), "sha256 differs from the recorded one")
    result = invoke([*probe, "--force", "--dataset", npz, "--allow-source-change", "--quiet"])
    assert result.exit_code == 0, result.output


def test_stale_or_swapped_inputs_a_recorded_data_path_outside_is_not_followed(tmp_path, digits_mlp_checkpoint):
    """A checkpoint is data from anywhere: the dataset path it records is read only when it proves its content."""
    import torch

    from flatness.formats.checkpoint import read_checkpoint, save_checkpoint

    secret = _npz(tmp_path.parent / f"{tmp_path.name}-private.npz")  # absolute, outside the checkpoint's folder
    payload = read_checkpoint(digits_mlp_checkpoint)
    model = torch.nn.Linear(4, 3)
    (tmp_path / "f.py").write_text(FACTORIES)
    spec = {"name": f"{tmp_path / 'f.py'}:model", "reference": f"{tmp_path / 'f.py'}:model", "args": None}
    crafted = tmp_path / "crafted.pt"
    config = {**payload["config"], "dataset": secret}
    save_checkpoint(str(crafted), model, model_spec=spec, config=config, epoch=1, sources={"model": spec})
    probe = ["probe", crafted, "--model", f"{tmp_path / 'f.py'}:model", "--top-k", "1", "--out", tmp_path / "p.json"]
    one_line_error(invoke(probe), "records no digest of it, so flatness does not follow that path")
    assert not (tmp_path / "p.json").exists()
    assert invoke([*probe, "--dataset", secret, "--quiet"]).exit_code == 0  # named by the command line: read


def test_stale_or_swapped_inputs_sweep_state_damaged_and_grid_key_order(tmp_path, monkeypatch):
    from flatness.core import engines
    from flatness.sweep.grid import expand, parse_grid

    one = expand(parse_grid("method=erm,sam lr=0.1,0.2 weight_decay=0"), [0])
    other = expand(parse_grid("weight_decay=0 lr=0.1,0.2 method=erm,sam"), [0])
    assert [c.name for c in one] == [c.name for c in other]  # the same cells, whatever the typed order
    ran = []
    monkeypatch.setattr(engines, "run_local", lambda tasks, *a, **k: ran.extend(tasks))
    out = tmp_path / "sweep"
    grid = ["--grid", "method=erm,sam lr=0.1"]
    assert invoke(["sweep", "--quick", *grid, "--seeds", "0", "--out", out, "--no-progress"]).exit_code == 0
    assert [t.name for t in ran] == ["method-erm_lr-0.1_seed-0", "method-sam_lr-0.1_seed-0"]
    for damage in ("{not json", json.dumps({"format": "flatness-sweep", "frozen": {"grid": {}}}), "[]"):
        (out / "sweep.json").write_text(damage)
        before = _stamps(out)
        result = invoke(["sweep", "--quick", "--grid", "lr=0.5", "--seeds", "0", "--out", out, "--no-progress"])
        one_line_error(result, "sweep.json is damaged")
        assert _stamps(out) == before


# --------------------------------------------------------------------------- class 2 (rest): planned sizes


def test_unbounded_work_long_jobs_print_their_planned_size_first(tmp_path, digits_mlp_checkpoint, monkeypatch):
    """train, probe, surface, experiment and sweep each say their size (epochs, HVPs, points, runs, cells)
    in one ``Plan:`` line before their first step (flatness.core.progress.plan_line), with their progress
    display (``--no-progress``/``--quiet`` leave it out, as they leave out the bars)."""
    from flatness.core import engines
    from flatness.core.errors import FlatnessError
    from flatness.study import experiment

    def first_line(args):
        result = invoke(args)
        assert result.exit_code in (0, 2), result.output
        return [ln for ln in result.output.splitlines() if ln.strip()][0]

    (tmp_path / "f.py").write_text(FACTORIES)
    model, data = f"{tmp_path / 'f.py'}:model", f"{tmp_path / 'f.py'}:data"
    train = ["train", "--model", model, "--dataset", data, "--epochs", "2", "--batch-size", "32"]
    assert first_line([*train, "--out", tmp_path / "run"]) == (
        "Plan: train: 2 epoch(s) (1-2), 5 steps of up to 32 examples each"
    )
    line = first_line(["probe", digits_mlp_checkpoint, "--top-k", "2", "--trace", "--out", tmp_path / "p.json"])
    assert line.startswith("Plan: probe: top-2 Hessian eigenvalues (lanczos, at most ") and "trace from" in line
    line = first_line(["surface", digits_mlp_checkpoint, "--x=-1:1:3", "--samples", "64", "--out", tmp_path / "s.h5"])
    assert line == "Plan: surface: 3 of 3 points, each a pass over 64 train examples"

    def stop(*args, **kwargs):
        raise FlatnessError("stopped after the plan")

    monkeypatch.setattr(experiment, "step_train", stop)
    study = [
        "experiment",
        "--model",
        model,
        "--dataset",
        data,
        "--quick",
        "--seeds",
        "0",
        "--epochs",
        "1",
        "--workers",
        "1",
    ]
    line = first_line([*study, "--out", tmp_path / "study"])
    assert line == "Plan: experiment: 3 run(s) of up to 1 epochs, each probed, 8 surfaces of 120 points in all"
    monkeypatch.setattr(engines, "run_local", lambda tasks, *a, **k: None)
    line = first_line(["sweep", "--quick", "--seeds", "0", "--out", tmp_path / "sweep", "--no-progress"])
    assert line == "Plan: sweep: 8 cell(s) to run of 8 in the grid, up to 2 epochs each"
