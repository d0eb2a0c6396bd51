"""Property-based tests of every command's options (issue 15), with Hypothesis.

For each command, each numeric option is given 0, negative, NaN, infinities, a huge value, a tiny
one, non-numeric text and nothing; each path option a missing folder, a folder where a file goes, an
input of the command, a link loop, a dangling link and a name that is not UTF-8. Every outcome must
be a one-line `Error: ...` with exit 2 or a success, and no file that existed before may change.

Training and the whole study are stubbed after their validation (`_train_locked`, `_run_locked`): what
is under test is that every value is checked before the first step; a success there means the value
passed every check. Probe, surface, compare and plot run for real on tiny inputs. The examples per
command are printed at the end (`pytest -s`) and recorded in docs/reliability.md.
"""

import collections
import contextlib
import os
import shutil
from unittest import mock

import pytest
from click.testing import CliRunner
from conftest import quick_digits_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NUMBERS = ["0", "-1", "-0.5", "nan", "inf", "-inf", "1e400", str(2**64), "1e-320", "abc", "", "3"]
PATH_KINDS = ["missing-folder", "folder", "input", "loop", "dangling", "not-utf8", "fresh"]
EXAMPLES = collections.Counter()
OUTCOMES = collections.Counter()  # exit code -> examples
FAST = dict(
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

TRAIN_NUMERIC = [
    "--epochs",
    "--batch-size",
    "--lr",
    "--momentum",
    "--weight-decay",
    "--grad-clip",
    "--seed",
    "--epsilon",
    "--inner-lr",
    "--inner-iter",
    "--rho",
    "--width",
    "--depth",
    "--save-every",
    "--nproc",
]
PROBE_NUMERIC = [
    "--samples",
    "--batch-size",
    "--top-k",
    "--tol",
    "--max-iter",
    "--trace-samples",
    "--density-steps",
    "--density-vectors",
    "--draws",
    "--ascent-steps",
    "--seed",
    "--rho",
    "--epsilon",
]
SURFACE_NUMERIC = ["--samples", "--batch-size", "--seed", "--x", "--y"]
PLOT_NUMERIC = ["--vmin", "--vmax"]
EXPERIMENT_NUMERIC = ["--epochs", "--samples", "--grid", "--threads", "--seeds"]


def stamp(root):
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            if os.path.isfile(full):
                st = os.stat(full)
                with open(full, "rb") as handle:
                    out[os.path.relpath(full, root)] = (hash(handle.read()), st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The inputs every example reads: a checkpoint, a run folder with a probe, 1D and 2D surfaces."""
    from flatness.cli.main import main

    root = tmp_path_factory.mktemp("props")
    run = root / "run"
    run.mkdir()
    ckpt = quick_digits_checkpoint(run / "last.pt", model_name="mlp", width=8, depth=1, steps=10)
    (run / "config.json").write_text('{"method": "erm", "seed": 0, "dataset": "digits", "model": "mlp"}\n')
    (run / "metrics.jsonl").write_text('{"epoch": 1, "test_acc": 0.5, "test_loss": 1.0}\n')
    runner = CliRunner()
    for args in (
        [
            "probe",
            ckpt,
            "--samples",
            "16",
            "--batch-size",
            "16",
            "--top-k",
            "1",
            "--max-iter",
            "3",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            run / "probe.json",
        ],
        ["surface", ckpt, "--x=-1:1:3", "--samples", "16", "--device", "cpu", "--quiet", "--out", root / "s1.h5"],
        [
            "surface",
            ckpt,
            "--x=-1:1:3",
            "--y=-1:1:3",
            "--samples",
            "16",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            root / "s2.h5",
        ],
    ):
        result = runner.invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    yield {
        "root": str(root),
        "run": str(run),
        "ckpt": ckpt,
        "probe": str(run / "probe.json"),
        "s1": str(root / "s1.h5"),
        "s2": str(root / "s2.h5"),
    }
    print("\nHypothesis examples per command:", dict(EXAMPLES), "outcomes (exit code: examples):", dict(OUTCOMES))


def path_of(kind, ws, scratch, name):
    """A path of one hostile kind for an option (inputs of the command are the workspace's files)."""
    if kind == "missing-folder":
        return os.path.join(scratch, "no", "such", name)
    if kind == "folder":
        return ws["root"]
    if kind == "input":
        return ws["ckpt"]
    if kind == "loop":
        loop = os.path.join(scratch, "loop")
        os.symlink(loop, loop)
        return loop
    if kind == "dangling":
        link = os.path.join(scratch, "dangling")
        os.symlink(os.path.join(scratch, "nothing"), link)
        return link
    if kind == "not-utf8":
        return os.fsdecode(os.fsencode(scratch) + b"/caf\xe9-" + name.encode())
    return os.path.join(scratch, name)


def check_outcome(result, ws, before):
    """Exit 0, or exit 2 with exactly one `Error:` line; and no pre-existing file changed."""
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    OUTCOMES[result.exit_code] += 1
    assert result.exit_code in (0, 2), (result.exit_code, result.output, result.exception)
    if result.exit_code == 2:
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
        assert "Internal error" not in result.output and "Traceback" not in result.output
    assert stamp(ws["root"]) == before


@contextlib.contextmanager
def scratch_dir(ws):
    scratch = os.path.join(os.path.dirname(ws["root"]), "scratch")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def invoke(args):
    from flatness.cli.main import main

    return CliRunner().invoke(main, [str(a) for a in args])


def train_stub(config, out_dir, resume, progress, verbose, main_rank, on_epoch=None):
    """Stands in for the training loop: it is reached only with a config that passed every check."""
    import math

    for name in ("lr", "momentum", "weight_decay", "epsilon", "inner_lr", "rho"):
        assert math.isfinite(getattr(config, name)), name
    assert config.epochs >= 1 and config.batch_size >= 1 and config.inner_iter >= 1
    return out_dir


def experiment_stub(cfg, started, progress, echo):
    assert cfg.samples >= 1 and cfg.grid >= 3 and (cfg.epochs is None or cfg.epochs >= 1)
    return {"verdict": [], "steps": [], "report": "r", "html": "h", "seconds": 0.0}


# --------------------------------------------------------------------------- numbers


@settings(max_examples=30, **FAST)
@given(option=st.sampled_from(TRAIN_NUMERIC), value=st.sampled_from(NUMBERS))
def test_train_numbers(ws, option, value):
    EXAMPLES["train"] += 1
    before = stamp(ws["root"])
    with (
        scratch_dir(ws) as scratch,
        mock.patch("flatness.training.loop._train_locked", train_stub),
        mock.patch("flatness.cli.train.relaunch_under_torchrun", lambda nproc, logger: 0),
    ):  # --nproc 3: no torchrun
        result = invoke(
            ["train", "--no-progress", "--device", "cpu", "--out", os.path.join(scratch, "r"), option, value]
        )
    check_outcome(result, ws, before)


def measure_command(ws, command, out_name, options):
    """Run ``probe``/``surface`` on the workspace checkpoint with ``options``, writing into a scratch folder."""
    with scratch_dir(ws) as scratch:
        return invoke(
            [command, ws["ckpt"], "--device", "cpu", "--quiet", "--out", os.path.join(scratch, out_name)]
            + [a for kv in options.items() for a in kv]
        )


@settings(max_examples=24, **FAST)
@given(option=st.sampled_from(PROBE_NUMERIC), value=st.sampled_from(NUMBERS))
def test_probe_numbers(ws, option, value):
    EXAMPLES["probe"] += 1
    before = stamp(ws["root"])
    base = {"--samples": "16", "--batch-size": "16", "--top-k": "1", "--max-iter": "3"}
    base[option] = value
    check_outcome(measure_command(ws, "probe", "p.json", base), ws, before)


@settings(max_examples=16, **FAST)
@given(option=st.sampled_from(SURFACE_NUMERIC), value=st.sampled_from(NUMBERS))
def test_surface_numbers(ws, option, value):
    EXAMPLES["surface"] += 1
    before = stamp(ws["root"])
    base = {"--samples": "16", "--batch-size": "16", "--x": "-1:1:3"}
    if option in ("--x", "--y"):
        value = {
            "0": "-1:1:0",
            "-1": "1:-1:3",
            "-0.5": "-1:1:2.5",
            "nan": "nan:1:3",
            "inf": "-1:inf:3",
            "-inf": "-inf:1:3",
            "1e400": "-1e400:1:3",
            str(2**64): f"-1:1:{2**64}",
            "1e-320": "0:1e-320:3",
            "abc": "a:b:c",
            "": "",
            "3": "-1e300:1e300:3",
        }[value]
    base[option] = value
    check_outcome(measure_command(ws, "surface", "s.h5", base), ws, before)


@settings(max_examples=12, **FAST)
@given(vmin=st.sampled_from(NUMBERS), vmax=st.sampled_from(NUMBERS))
def test_plot_numbers(ws, vmin, vmax):
    EXAMPLES["plot"] += 1
    before = stamp(ws["root"])
    with scratch_dir(ws) as scratch:
        result = invoke(["plot", ws["s2"], "--kind", "heatmap", "--out", scratch, "--vmin", vmin, "--vmax", vmax])
    check_outcome(result, ws, before)


@settings(max_examples=20, **FAST)
@given(option=st.sampled_from(EXPERIMENT_NUMERIC), value=st.sampled_from(NUMBERS))
def test_experiment_numbers(ws, option, value):
    EXAMPLES["experiment"] += 1
    before = stamp(ws["root"])
    with scratch_dir(ws) as scratch, mock.patch("flatness.study.experiment._run_locked", experiment_stub):
        result = invoke(
            [
                "experiment",
                "--quick",
                "--no-progress",
                "--device",
                "cpu",
                "--out",
                os.path.join(scratch, "study"),
                option,
                value,
            ]
        )
    check_outcome(result, ws, before)


# --------------------------------------------------------------------------- paths

COMMAND_PATHS = {
    # command -> (arguments with {OPT} placeholders, the options that take a hostile path)
    "train": (
        ["train", "--no-progress", "--device", "cpu", "--out", "{--out}", "--data-dir", "{--data-dir}"],
        ["--out", "--data-dir"],
    ),
    "probe": (
        [
            "probe",
            "{CHECKPOINT}",
            "--samples",
            "16",
            "--batch-size",
            "16",
            "--top-k",
            "1",
            "--max-iter",
            "3",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            "{--out}",
        ],
        ["CHECKPOINT", "--out"],
    ),
    "surface": (
        ["surface", "{CHECKPOINT}", "--x=-1:1:3", "--samples", "16", "--device", "cpu", "--quiet", "--out", "{--out}"],
        ["CHECKPOINT", "--out"],
    ),
    "compare": (["compare", "{RUN}", "--json", "{--json}", "--csv", "{--csv}"], ["RUN", "--json", "--csv"]),
    "plot": (["plot", "{FILE}", "--kind", "heatmap", "--out", "{--out}"], ["FILE", "--out"]),
    "experiment": (["experiment", "--quick", "--no-progress", "--out", "{--out}"], ["--out"]),
}
DEFAULTS = {
    "--out": "out",
    "--data-dir": None,
    "CHECKPOINT": "{ckpt}",
    "RUN": "{run}",
    "--json": "c.json",
    "--csv": "c.csv",
    "FILE": "{s2}",
}
FOLDER_OUTPUTS = {("train", "--out"), ("plot", "--out"), ("experiment", "--out")}


@settings(max_examples=48, **FAST)
@given(command=st.sampled_from(sorted(COMMAND_PATHS)), which=st.integers(0, 2), kind=st.sampled_from(PATH_KINDS))
def test_paths(ws, command, which, kind):
    EXAMPLES[f"{command} (paths)"] += 1
    template, options = COMMAND_PATHS[command]
    option = options[which % len(options)]
    before = stamp(ws["root"])
    with (
        scratch_dir(ws) as scratch,
        mock.patch("flatness.training.loop._train_locked", train_stub),
        mock.patch("flatness.study.experiment._run_locked", experiment_stub),
    ):
        values = {}
        for opt in options:
            default = DEFAULTS[opt]
            if default is None:
                values[opt] = os.path.join(scratch, "data")
            elif default.startswith("{"):
                values[opt] = ws[default.strip("{}")]
            else:
                values[opt] = os.path.join(scratch, default if (command, opt) not in FOLDER_OUTPUTS else "o")
        values[option] = path_of(kind, ws, scratch, "x.json")
        args = [values.get(a.strip("{}"), a) if a.startswith("{") else a for a in template]
        result = invoke(args)
    check_outcome(result, ws, before)


def test_unreadable_inputs_need_a_user_without_root(ws):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading, so 'unreadable' cannot be made")
    os.chmod(ws["ckpt"], 0)
    try:
        result = invoke(["probe", ws["ckpt"], "--device", "cpu", "--quiet"])
        assert result.exit_code == 2 and "not readable" in result.output, result.output
    finally:
        os.chmod(ws["ckpt"], 0o644)


# --------------------------------------------------------------------------- issue 20: new inputs
# Grid strings, npz contents (dtypes, NaN, labels, shapes) and what a user's model factory does. The
# sweep runs no cell (its engine is stubbed after the plan and the folder checks), training stops after
# the run is built (the data loaded and checked, the model built and fitted to it, init.pt written).

GRID_KEYS_AND_JUNK = ["lr", "epochs", "width", "inner_iter", "method", "batch_size", "momentum", "seed", "Lr", ""]
GRID_VALUES = [
    "0.1",
    "0.000123456789012345678",
    "-1",
    "0",
    "nan",
    "inf",
    "1e400",
    "abc",
    "amp",
    "sam",
    "erm",
    str(2**64),
    "1000000000",
    "3",
    "",
]


def _grid_text(entries):
    return " ".join(f"{key}={','.join(values)}" for key, values in entries)


@settings(max_examples=25, **FAST)
@given(
    entries=st.lists(
        st.tuples(st.sampled_from(GRID_KEYS_AND_JUNK), st.lists(st.sampled_from(GRID_VALUES), min_size=1, max_size=3)),
        min_size=1,
        max_size=4,
    )
)
def test_sweep_grid_strings(ws, entries):
    from flatness.sweep.grid import MAX_NAME_BYTES

    EXAMPLES["sweep (grid)"] += 1
    before = stamp(ws["root"])
    with scratch_dir(ws) as scratch, mock.patch("flatness.core.engines.run_local", lambda *a, **k: None):
        out = os.path.join(scratch, "sweep")
        result = invoke(["sweep", "--grid", _grid_text(entries), "--seeds", "0", "--no-progress", "--out", out])
        if result.exit_code == 0:
            names = os.listdir(os.path.join(out, "cells")) if os.path.isdir(os.path.join(out, "cells")) else []
            assert all(len(n.encode()) <= MAX_NAME_BYTES + 12 for n in names)
    check_outcome(result, ws, before)


NPZ_DTYPES = ["float32", "float64", "float16", "int64", "uint8", "bool"]
LABEL_KINDS = ["good", "negative", "too-large", "float", "one-hot", "int8"]


def _write_npz(path, x_dtype, nan_at, label_kind):
    import numpy as np

    rng = np.random.default_rng(1)
    x = (rng.normal(size=(24, 4)) * 3).astype(x_dtype)
    y = np.arange(24) % 3
    if nan_at is not None and x.dtype.kind == "f":
        x[nan_at, 1] = np.nan
    if label_kind == "negative":
        y[nan_at or 5] = -1
    elif label_kind == "too-large":
        y[nan_at or 5] = 7
    elif label_kind == "float":
        y = y.astype(np.float32) + 0.5
    elif label_kind == "one-hot":
        y = np.eye(3, dtype=np.int64)[y]
    elif label_kind == "int8":
        y = y.astype(np.int8)
    np.savez(path, x_train=x[:16], y_train=y[:16], x_test=x[16:], y_test=y[16:])
    # integer inputs stay integer (token ids), which the float Linear test model cannot take: a one-line error
    usable_inputs = x.dtype.kind == "f" and bool(np.isfinite(x).all())
    # float targets are refused under the default cross-entropy (a regression needs --loss mse)
    labels_ok = label_kind in ("good", "int8")
    return usable_inputs and labels_ok


USER_MODEL = """
import torch


def model(**kwargs):
    return torch.nn.Linear(4, 3)
"""


@settings(max_examples=20, **FAST)
@given(
    x_dtype=st.sampled_from(NPZ_DTYPES),
    nan_at=st.one_of(st.none(), st.integers(0, 23)),
    label_kind=st.sampled_from(LABEL_KINDS),
)
def test_train_npz_contents(ws, x_dtype, nan_at, label_kind):
    """Any npz: exit 0 only for data that is finite with usable labels, else one Error line, exit 2."""
    EXAMPLES["train (npz)"] += 1
    before = stamp(ws["root"])
    with scratch_dir(ws) as scratch, mock.patch("flatness.training.loop._loop", lambda run, start: None):
        npz = os.path.join(scratch, "d.npz")
        valid = _write_npz(npz, x_dtype, nan_at, label_kind)
        with open(os.path.join(scratch, "m.py"), "w") as handle:
            handle.write(USER_MODEL)
        model = os.path.join(scratch, "m.py") + ":model"
        result = invoke(
            ["train", "--model", model, "--dataset", npz, "--batch-size", "8", "--no-progress", "--out", f"{scratch}/r"]
        )
    check_outcome(result, ws, before)
    assert (result.exit_code == 0) == valid, (x_dtype, nan_at, label_kind, result.output)


FACTORY_OUTCOMES = {
    "model": "return torch.nn.Linear(4, 3)",
    "not-a-model": "return 42",
    "none": "return None",
    "value-error": "raise ValueError('bad width')",
    "exit-0": "sys.exit(0)",
    "exit-3": "sys.exit(3)",
    "keyboard-interrupt": "raise KeyboardInterrupt",
    "generator-exit": "raise GeneratorExit",
    "base-exception": "raise BaseException('odd')",
    "import-time-exit": None,
}


@settings(max_examples=12, **FAST)
@given(outcome=st.sampled_from(sorted(FACTORY_OUTCOMES)))
def test_train_model_factory_outcomes(ws, outcome):
    """Whatever a model factory does, the exit is 0 (a model) or 2 with one line: never 3, 130 or a traceback."""
    EXAMPLES["train (factory)"] += 1
    before = stamp(ws["root"])
    body = FACTORY_OUTCOMES[outcome]
    source = (
        "import sys\nimport torch\nsys.exit(0)\n"
        if body is None
        else f"import sys\nimport torch\n\n\ndef model(**kwargs):\n    {body}\n"
    )
    with scratch_dir(ws) as scratch, mock.patch("flatness.training.loop._loop", lambda run, start: None):
        npz = os.path.join(scratch, "d.npz")
        _write_npz(npz, "float32", None, "good")
        with open(os.path.join(scratch, "f.py"), "w") as handle:
            handle.write(source)
        ref = os.path.join(scratch, "f.py") + ":model"
        result = invoke(
            ["train", "--model", ref, "--dataset", npz, "--batch-size", "8", "--no-progress", "--out", f"{scratch}/r"]
        )
    check_outcome(result, ws, before)
    assert (result.exit_code == 0) == (outcome == "model"), result.output
    if result.exit_code == 2:
        assert ref in result.output or "importing" in result.output, result.output


NPZ_CHANGES = ["untouched", "saved-again", "one-value", "one-label", "rows-swapped"]


@settings(max_examples=12, **FAST)
@given(change=st.sampled_from(NPZ_CHANGES), index=st.integers(0, 15), named=st.booleans(), allow=st.booleans())
def test_probe_of_a_run_whose_npz_changed(ws, change, index, named, allow):
    """A run's npz after training: probed only while its bytes are the recorded ones (sha256), or when the
    command line names it with --allow-source-change; else one Error line (issue 20, class 6)."""
    import numpy as np

    from flatness.core.fileio import sha256_file

    EXAMPLES["probe (changed npz)"] += 1
    before = stamp(ws["root"])
    with scratch_dir(ws) as scratch, mock.patch("flatness.training.loop._loop", lambda run, start: None):
        npz = os.path.join(scratch, "d.npz")
        _write_npz(npz, "float32", None, "good")
        with open(os.path.join(scratch, "m.py"), "w") as handle:
            handle.write(USER_MODEL)
        model = os.path.join(scratch, "m.py") + ":model"
        run = f"{scratch}/r"
        trained = invoke(
            ["train", "--model", model, "--dataset", npz, "--batch-size", "8", "--no-progress", "--out", run]
        )
        assert trained.exit_code == 0, trained.output
        recorded = sha256_file(npz)
        if change != "untouched":
            arrays = dict(np.load(npz))
            if change == "one-value":
                arrays["x_train"][index, 0] += 1.0
            elif change == "one-label":
                arrays["y_train"][index] = (arrays["y_train"][index] + 1) % 3
            elif change == "rows-swapped":
                arrays["x_train"][[index, (index + 1) % 16]] = arrays["x_train"][[(index + 1) % 16, index]]
            np.savez(npz, **arrays)
        same = sha256_file(npz) == recorded
        args = ["probe", run, "--model", model, "--top-k", "0", "--out", f"{scratch}/p.json", "--quiet"]
        if named:
            args += ["--dataset", npz, *(["--allow-source-change"] if allow else [])]
        result = invoke(args)
    check_outcome(result, ws, before)
    assert (result.exit_code == 0) == (same or (named and allow)), (change, named, allow, result.output)
    if result.exit_code == 2:
        assert "is not the data" in result.output, result.output
