"""Reliability (issue #7): every command meets bad options, broken and hostile files, unwritable
places, a full disk and held locks with one `Error: ...` line, a non-zero exit, no traceback, and the
user's files untouched (sha256 + mtime). The table of cases is docs/reliability.md; every row there is
one entry of CASES (same number and test name), checked by test_docs_table_lists_every_case.

SIGKILL / SIGINT / two real processes: tests/test_cli_crash.py. The cases stay together here, on one
shared workspace (a trained run, good, broken and hostile files of every kind), rather than in the
command's test file: they are the rows of one table. Plain data of the wrong types in a checkpoint, a
library refusal with no workspace: formats/test_checkpoint.py.
"""

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess

import pytest
import torch
from click.testing import CliRunner

import flatness
from flatness.core import locking
from flatness.core.errors import FlatnessError
from flatness.formats.checkpoint import save_checkpoint

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(HERE, os.pardir, "docs", "reliability.md")
PROBE_FAST = ["--samples", "32", "--batch-size", "32", "--top-k", "1", "--max-iter", "3", "--device", "cpu", "--quiet"]
SURF_FAST = ["--samples", "32", "--batch-size", "32", "--device", "cpu", "--quiet"]


# --------------------------------------------------------------------------- hostile files


class RunsCode:
    """Unpickling this runs `touch MARKER`: what a malicious checkpoint does with plain pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def crafted_payload(marker):
    return {
        "format": "flatness-checkpoint",
        "format_version": 1,
        "model_spec": {"name": "mlp"},
        "model_state": {},
        "config": {"dataset": "digits"},
        "epoch": 1,
        "hook": RunsCode(marker),
    }


def write_crafted(path, marker, kind="zip"):
    import pickle

    payload = crafted_payload(marker)
    if kind == "zip":
        torch.save(payload, path)
    elif kind == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle, no torch container at all
        with open(path, "wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    return path


def foreign_state_dict():
    """A state_dict of some unrelated torchvision model (not a flatness checkpoint)."""
    try:
        import torchvision

        return torchvision.models.squeezenet1_1(num_classes=10).state_dict()
    except Exception:  # torchvision missing: a state_dict shaped like torchvision's ResNet stem
        return {
            "conv1.weight": torch.randn(64, 3, 7, 7),
            "bn1.weight": torch.ones(64),
            "bn1.running_mean": torch.zeros(64),
            "fc.weight": torch.randn(10, 512),
            "fc.bias": torch.zeros(10),
        }


def stamp_tree(root):
    """{relative path: (sha256, mtime_ns)} of every file under root."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                digest = hashlib.sha256(handle.read()).hexdigest()
            out[os.path.relpath(path, root)] = (digest, os.stat(path).st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The workspace every case runs against: a real run, good outputs of every kind, and broken or
    hostile versions of each file type."""
    from flatness.cli.main import main
    from flatness.training.config import TrainConfig
    from flatness.training.loop import train

    root = tmp_path_factory.mktemp("ws")
    p = {
        k: str(root / v)
        for k, v in {
            "run": "run",
            "good": "good.pt",
            "trunc": "trunc.pt",
            "empty": "empty.pt",
            "garbage": "garbage.pt",
            "foreign": "foreign_state_dict.pt",
            "module": "pickled_module.pt",
            "evil_zip": "evil_zip.pt",
            "evil_legacy": "evil_legacy.pt",
            "evil_raw": "evil_raw.pt",
            "nan": "nan.pt",
            "inf": "inf.pt",
            "evil_run": "evil_run",
            "pca_evil": "pca_evil",
            "surf": "surf.h5",
            "surf2d": "surf2d.h5",
            "corrupt_h5": "corrupt.h5",
            "probe": "probe.json",
            "bad_json": "bad.json",
            "trunc_json": "trunc.json",
            "types_json": "types.json",
            "sidecar_json": "sidecar.json",
            "figs": "figs",
            "afile": "afile.txt",
            "busy": "busy",
            "study": "study",
            "other": "other.pt",
            "marker": "MARKER",
        }.items()
    }
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(
            TrainConfig(width=8, batch_size=64, epochs=2, save_every=1, seed=1), p["run"], progress=False, verbose=False
        )
        shutil.copy(os.path.join(p["run"], "last.pt"), p["good"])
        shutil.copy(os.path.join(p["run"], "epoch-001.pt"), p["other"])
        data = open(p["good"], "rb").read()
        open(p["trunc"], "wb").write(data[: len(data) // 2])
        open(p["empty"], "wb").close()
        open(p["garbage"], "wb").write(b"\x00not a checkpoint\xff" * 64)
        torch.save(foreign_state_dict(), p["foreign"])
        torch.save(torch.nn.Linear(3, 2), p["module"])
        for kind in ("zip", "legacy", "raw"):
            write_crafted(p[f"evil_{kind}"], p["marker"], kind)
        model, info = flatness.load_checkpoint(p["good"])
        for key, value in (("nan", float("nan")), ("inf", float("inf"))):
            with torch.no_grad():
                bad = [t for t in model.parameters()][0]
                saved = bad.clone()
                bad.view(-1)[0] = value
            save_checkpoint(p[key], model, model_spec=info["model_spec"], config=info["config"], epoch=2)
            with torch.no_grad():
                bad.copy_(saved)
        shutil.copytree(p["run"], p["evil_run"])
        write_crafted(os.path.join(p["evil_run"], "last.pt"), p["marker"])
        shutil.copytree(p["run"], p["pca_evil"])
        write_crafted(os.path.join(p["pca_evil"], "epoch-001.pt"), p["marker"])
        runner = CliRunner()
        for args in (
            ["surface", p["good"], "--x=-1:1:3", "--out", p["surf"], *SURF_FAST],
            ["surface", p["good"], "--x=-1:1:3", "--y=-1:1:3", "--out", p["surf2d"], *SURF_FAST],
            ["probe", p["good"], "--out", p["probe"], *PROBE_FAST],
            ["plot", p["surf"], "--out", p["figs"]],
        ):
            result = runner.invoke(main, args, catch_exceptions=False)
            assert result.exit_code == 0, result.output
    finally:
        torch.set_num_threads(before)
    open(p["corrupt_h5"], "wb").write(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)  # an HDF5 signature, then nothing
    good_probe = json.load(open(p["probe"]))
    open(p["bad_json"], "w").write("{not json")
    open(p["trunc_json"], "w").write(open(p["probe"]).read()[:120])
    typed = dict(good_probe, hessian=dict(good_probe["hessian"], eigenvalues=["big", None]))
    typed["checkpoint"] = dict(typed["checkpoint"], seed=99)
    json.dump(typed, open(p["types_json"], "w"))
    hostile = dict(good_probe, sidecar="../../../../etc/passwd")
    hostile["checkpoint"] = dict(hostile["checkpoint"], seed=98)
    json.dump(hostile, open(p["sidecar_json"], "w"))
    open(p["afile"], "w").write("keep me")
    os.makedirs(p["busy"])
    open(os.path.join(p["busy"], "notes.txt"), "w").write("mine")
    os.makedirs(p["study"])
    json.dump(
        {"config": {"grid": 9, "quick": True}, "steps": []}, open(os.path.join(p["study"], "experiment.json"), "w")
    )
    p["root"] = str(root)
    return p


# --------------------------------------------------------------------------- the table


def C(num, command, args, expect, code=2, test=None, creates=False, input_desc=None):
    return dict(num=num, command=command, args=args, expect=expect, code=code, creates=creates, input=input_desc)


T, P, S = "train", "probe", "surface"
CASES = [
    # train: options
    C(1, T, ["--epochs", "0"], "epochs must be an integer >= 1"),
    C(2, T, ["--epochs", "abc"], "Invalid value for '--epochs'"),
    C(3, T, ["--lr", "nan"], "lr must be a positive number"),
    C(4, T, ["--lr", "-0.1"], "lr must be a positive number"),
    C(5, T, ["--batch-size", "100000"], "exceeds the 1437 training examples"),
    C(6, T, ["--dataset", "imagenet"], "unknown dataset"),
    C(7, T, ["--device", "tpu"], "unknown device"),
    # train: output folder and resume
    C(8, T, ["--out", "{afile}"], "is a file"),
    C(9, T, ["--out", "{busy}"], "already exists and is not empty"),
    C(10, T, ["--out", "{run}", "--resume", "--lr", "0.5"], "cannot change lr"),
    C(11, T, ["--out", "{evil_run}", "--resume"], "refusing to load"),
    C(12, T, ["--out", "/proc/flatness-run"], "Error:"),
    C(
        13,
        T,
        ["--out", "{new}/div", "--lr", "1e6", "--epochs", "2"],
        "training diverged: the loss is",
        code=3,
        creates=True,
    ),
    # probe: checkpoints
    C(14, P, ["{new}/missing.pt"], "checkpoint not found"),
    C(15, P, ["{empty}"], "is empty, not a checkpoint"),
    C(16, P, ["{trunc}"], "not a readable checkpoint"),
    C(17, P, ["{garbage}"], "not a readable checkpoint"),
    C(18, P, ["{foreign}"], "not a flatness checkpoint"),
    C(19, P, ["{module}"], "refusing to load"),
    C(20, P, ["{evil_zip}"], "refusing to load"),
    C(21, P, ["{evil_legacy}"], "refusing to load"),
    C(22, P, ["{evil_raw}"], "refusing to load"),
    C(23, P, ["{evil_run}"], "refusing to load"),
    C(24, P, ["{nan}"], "weights are not finite"),
    C(25, P, ["{inf}"], "weights are not finite"),
    # probe: options and outputs
    C(26, P, ["{good}", "--samples", "0"], "--samples must be >= 1"),
    C(27, P, ["{good}", "--top-k", "-1"], "top-k must be >= 0"),
    C(28, P, ["{good}", "--split", "val"], "unknown split"),
    C(29, P, ["{good}", "--sharpness", "nope"], "unknown sharpness metric"),
    C(30, P, ["{good}", "--sharpness", "all", "--rho", "-1"], "--rho values must be finite and > 0"),
    C(31, P, ["{good}", "--out", "{probe}"], "exists; pass --force"),
    C(32, P, ["{good}", "--out", "/proc/flatness-probe.json"], "cannot write"),
    C(33, P, ["{good}", "--out", "{afile}/probe.json"], "does not exist"),
    # surface
    C(34, S, ["{evil_zip}", "--x=-1:1:3"], "refusing to load"),
    C(35, S, ["{good}", "--x=-1:1:3", "--dir", "interp:{evil_zip}"], "refusing to load"),
    C(36, S, ["{good}", "--x=-1:1:3", "--y=-1:1:3", "--dir", "pca:{pca_evil}"], "refusing to load"),
    C(37, S, ["{good}", "--x=-1:1:3", "--dir", "interp:{foreign}"], "not a flatness checkpoint"),
    C(38, S, ["{nan}", "--x=-1:1:3"], "weights are not finite"),
    C(39, S, ["{good}", "--x=-1:1:3", "--dir", "interp:{inf}"], "weights are not finite"),
    C(40, S, ["{good}", "--x=1:2"], "MIN:MAX:N"),
    C(41, S, ["{good}", "--x=-1:1:1000000000000"], "at most 100000 points"),
    C(42, S, ["{good}", "--x=-1:1:3", "--bn", "sideways"], "Invalid value for '--bn'"),
    C(43, S, ["{good}", "--x=-1:1:5", "--out", "{surf}", "--resume"], "made for another x_num"),
    C(44, S, ["{other}", "--x=-1:1:3", "--out", "{surf}", "--resume"], "made for another checkpoint"),
    C(45, S, ["{good}", "--x=-1:1:3", "--out", "{corrupt_h5}", "--resume"], "cannot be opened as a surface file"),
    C(46, S, ["{good}", "--x=-1:1:3", "--out", "{surf}"], "already exists; use --resume"),
    C(47, S, ["{good}", "--x=-1:1:3", "--out", "{figs}"], "is a folder"),
    C(48, S, ["{good}", "--x=-1:1:3", "--out", "/proc/flatness-surface.h5"], "cannot write"),
    # plot
    C(49, "plot", ["{bad_json}", "--out", "{new}"], "not a readable probe file"),
    C(50, "plot", ["{trunc_json}", "--out", "{new}"], "not a readable probe file"),
    C(51, "plot", ["{types_json}", "--out", "{new}"], "'hessian.eigenvalues' holds 'big', not a number"),
    C(52, "plot", ["{sidecar_json}", "--out", "{new}"], "'sidecar' must be a file name"),
    C(53, "plot", ["{corrupt_h5}", "--out", "{new}"], "not a readable surface file"),
    C(54, "plot", ["{surf}", "--out", "{figs}"], "exists; pass --force"),
    C(55, "plot", ["{surf2d}", "--kind", "pie", "--out", "{new}"], "unknown plot kind"),
    C(56, "plot", ["{surf}", "--out", "{afile}"], "is a file"),
    # compare
    C(57, "compare", ["{bad_json}", "{probe}"], "not a readable probe file"),
    C(58, "compare", ["{types_json}", "{probe}"], "not a number"),
    C(59, "compare", ["{sidecar_json}", "{probe}"], "'sidecar' must be a file name"),
    C(60, "compare", [], "no inputs"),
    C(61, "compare", ["{run}", "{run}"], "given twice"),
    C(62, "compare", ["{run}", "--json", "{probe}"], "exists; pass --force"),
    C(63, "compare", ["{run}", "--csv", "/proc/flatness.csv"], "cannot write"),
    # experiment
    C(64, "experiment", ["--quick", "--grid", "1", "--out", "{new}/e"], "--grid must be >= 3"),
    C(65, "experiment", ["--quick", "--methods", "amp", "--out", "{new}/e"], "must include erm"),
    C(66, "experiment", ["--quick", "--seeds", "a,b", "--out", "{new}/e"], "comma-separated list of ints"),
    C(67, "experiment", ["--quick", "--out", "{afile}"], "is a file"),
    C(68, "experiment", ["--quick", "--out", "{study}"], "holds a study made with grid=9"),
    C(69, "experiment", ["--quick", "--dataset", "imagenet", "--out", "{new}/e"], "unknown dataset"),
    # later additions (numbers continue after the rows checked by their own tests)
    C(87, P, ["{good}", "--params", "layer9.*"], "matches no trainable parameter"),
]
FIXED = {
    T: ["--no-progress", "--width", "8", "--epochs", "1"],
    P: PROBE_FAST,
    S: SURF_FAST,
    "experiment": ["--no-progress", "--device", "cpu"],
}
OUT_DEFAULT = {T: "{new}/run", P: "{new}/p.json", S: "{new}/s.h5"}


def case_id(case):
    return f"{case['num']:02d}-{case['command']}"


def expand(args, ws, new):
    values = dict(ws, new=new)
    return [a.format(**values) for a in args]


def command_line(case, ws, new):
    args = expand(case["args"], ws, new)
    extra = list(FIXED.get(case["command"], []))
    if case["command"] in OUT_DEFAULT and "--out" not in args:
        extra += ["--out", OUT_DEFAULT[case["command"]].format(new=new)]
    if case["command"] == T and "--epochs" in args:
        extra = [a for i, a in enumerate(extra) if a != "--epochs" and extra[i - 1] != "--epochs"]
    return [case["command"], *expand(extra, ws, new), *args]  # the case's own values come last and win


def invoke(args, debug=False):
    from flatness.cli.main import main

    return CliRunner().invoke(main, (["--debug"] if debug else []) + [str(a) for a in args])


def assert_one_line_error(result, expect, code):
    from click.exceptions import Exit

    assert result.exception is None or isinstance(result.exception, (SystemExit, Exit)), repr(result.exception)
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert expect in lines[0], (expect, lines[0])
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bad_input_table(case, ws, tmp_path):
    new = str(tmp_path / "new")
    os.makedirs(new)
    before = stamp_tree(ws["root"])
    result = invoke(command_line(case, ws, new))
    assert_one_line_error(result, case["expect"], case["code"])
    assert stamp_tree(ws["root"]) == before  # every file byte-identical, same mtime, nothing added
    assert not os.path.exists(ws["marker"])
    if not case["creates"]:
        assert os.listdir(new) == []
    if case["num"] == 13:  # the diverged run keeps its last good (finite) checkpoint
        model, info = flatness.load_checkpoint(os.path.join(new, "div"))
        assert info["epoch"] == 0


def test_docs_table_lists_every_case():
    text = open(DOC, encoding="utf-8").read()
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*(\d+)\s*\|\s*`?(\w+)`?\s*\|.*\|\s*(\d+)\s*\|\s*`?([\w\[\]\-.:]+)`?\s*\|\s*$", line)
        if m:
            rows[int(m.group(1))] = (m.group(2), int(m.group(3)), m.group(4))
    for case in CASES:
        assert case["num"] in rows, case["num"]
        command, code, test = rows[case["num"]]
        assert command == case["command"] and code == case["code"], (case["num"], rows[case["num"]])
        assert test == f"test_bad_input_table[{case_id(case)}]", (case["num"], test)
    extra = [n for n in rows if n not in {c["num"] for c in CASES}]
    for n in extra:  # rows checked by their own tests below
        assert rows[n][2].startswith("test_"), rows[n]
        assert rows[n][2].split("[")[0] in globals() or rows[n][2].split("[")[0] in CRASH_TESTS, rows[n]


CRASH_TESTS = {
    "test_sigint_train_then_resume",
    "test_sigint_surface_then_resume",
    "test_two_train_processes_one_folder",
}


# --------------------------------------------------------------------------- --debug, the library, hostile files


def test_debug_shows_the_traceback_instead(ws):
    result = invoke(["probe", ws["evil_zip"], *PROBE_FAST, "--out", ws["root"] + "/nowhere.json"], debug=True)
    assert isinstance(result.exception, FlatnessError)
    assert not os.path.exists(ws["marker"])


@pytest.mark.parametrize("which", ["evil_zip", "evil_legacy", "evil_raw", "module"])
def test_load_checkpoint_never_runs_code(ws, which):
    from flatness.formats.checkpoint import read_checkpoint

    for fn in (flatness.load_checkpoint, read_checkpoint):
        with pytest.raises(FlatnessError, match="refusing to load|not a readable checkpoint") as info:
            fn(ws[which])
        assert "\n" not in str(info.value) and "weights_only=False" not in str(info.value)
    assert not os.path.exists(ws["marker"])


def test_stored_paths_are_never_followed_for_writing(ws, tmp_path):
    """A probe JSON's sidecar and a surface's 'checkpoint' attribute are data: reading them never leads
    to a file outside the input's folder, and outputs are named from the command line only."""
    import h5py

    from flatness.formats.probe_file import read_probe, read_probe_arrays

    with pytest.raises(FlatnessError, match="sidecar"):
        read_probe(ws["sidecar_json"])
    with pytest.raises(FlatnessError, match="sidecar"):
        read_probe_arrays(ws["sidecar_json"])
    surf = str(tmp_path / "s.h5")
    shutil.copy(ws["surf"], surf)
    victim = tmp_path / "victim.pt"
    victim.write_bytes(b"precious")
    with h5py.File(surf, "r+") as f:  # a file claiming another checkpoint path: the path is never used
        f.attrs["checkpoint"] = str(victim)
    before = stamp_tree(str(tmp_path))
    assert invoke(["plot", surf, "--out", str(tmp_path / "figs")]).exit_code == 0
    after = stamp_tree(str(tmp_path))
    assert after["victim.pt"] == before["victim.pt"] and after["s.h5"] == before["s.h5"]


# --------------------------------------------------------------------------- unwritable places, full disk


def test_permission_denied_keeps_the_old_file(ws, tmp_path, monkeypatch):
    """EACCES when the finished file is renamed into place (tests run as root, where chmod does not stop
    writes): one line, the old file byte-identical, no temporary file left."""
    out = tmp_path / "p.json"
    shutil.copy(ws["probe"], out)
    before = stamp_tree(str(tmp_path))

    def denied(src, dst):
        raise PermissionError(errno.EACCES, "Permission denied", dst)

    monkeypatch.setattr(os, "replace", denied)
    result = invoke(["probe", ws["good"], *PROBE_FAST, "--out", str(out), "--force"])
    monkeypatch.undo()
    assert "Permission denied" in assert_one_line_error(result, "cannot write", 2)
    assert stamp_tree(str(tmp_path)) == before


@contextlib.contextmanager
def tiny_disk(path, size="64k"):
    """A tmpfs of ``size`` at ``path``; yields False where mounting is not allowed."""
    os.makedirs(path, exist_ok=True)
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_full_disk(ws, tmp_path, monkeypatch):
    """ENOSPC on a real 64 KiB tmpfs (or, where mounting is not allowed, a simulated one): every
    command says 'No space left on device' in one line and the file that was there survives."""
    disk = tmp_path / "disk"
    with tiny_disk(disk) as mounted:
        if not mounted:  # simulate: every write into the 'disk' fails with ENOSPC
            real_fdopen = os.fdopen

            class Full:
                def __init__(self, handle):
                    self.handle = handle

                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    self.handle.close()

                def write(self, data):
                    raise OSError(errno.ENOSPC, "No space left on device")

                def __getattr__(self, name):
                    return getattr(self.handle, name)

            monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
        old = disk / "p.json"
        shutil.copy(ws["probe"], old)
        if mounted:  # fill the disk up to the last byte
            fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 512)
            os.close(fd)
        before = stamp_tree(str(disk))
        line = assert_one_line_error(
            invoke(["probe", ws["good"], *PROBE_FAST, "--out", str(old), "--force"]), "cannot write", 2
        )
        assert "No space left on device" in line
        line = assert_one_line_error(
            invoke(["train", "--no-progress", "--width", "8", "--epochs", "1", "--out", str(disk / "run")]),
            "No space left on device",
            2,
        )
        if mounted:
            assert_one_line_error(
                invoke(["surface", ws["good"], "--x=-1:1:3", *SURF_FAST, "--out", str(disk / "s.h5")]),
                "No space left on device",
                2,
            )
        after = stamp_tree(str(disk))
        assert after["p.json"] == before["p.json"]
        assert not [n for n in after if n.endswith(".tmp")]  # no half-written temporary left behind
        assert not any(n.endswith(".pt") for n in after)
        monkeypatch.undo()


# --------------------------------------------------------------------------- locks (in-process holder)


@pytest.mark.parametrize("what", ["train", "train-resume", "surface", "probe", "experiment"])
def test_a_held_lock_refuses_the_second_writer_at_once(ws, tmp_path, what):
    """flock locks belong to an open file: holding one here is exactly what a second process sees."""
    run = tmp_path / "run"
    shutil.copytree(ws["run"], run)
    out = {
        "train": tmp_path / "fresh",
        "train-resume": run,
        "surface": tmp_path / "s.h5",
        "probe": tmp_path / "p.json",
        "experiment": tmp_path / "study",
    }[what]
    args = {
        "train": ["train", "--no-progress", "--out", out],
        "train-resume": ["train", "--no-progress", "--out", out, "--resume", "--epochs", "3"],
        "surface": ["surface", ws["good"], "--x=-1:1:3", *SURF_FAST, "--out", out],
        "probe": ["probe", ws["good"], *PROBE_FAST, "--out", out],
        "experiment": ["experiment", "--quick", "--no-progress", "--out", out],
    }[what]
    what_name = {
        "train": "run folder",
        "train-resume": "run folder",
        "surface": "surface file",
        "probe": "probe file",
        "experiment": "study folder",
    }[what]
    before = stamp_tree(str(tmp_path))
    with locking.exclusive(str(out), what_name):
        assert_one_line_error(invoke(args), f"another flatness process is writing this {what_name}", 2)
    assert stamp_tree(str(tmp_path)) == before
    if what == "train-resume":  # the lock is gone with its holder: resuming works
        result = invoke(args)
        assert result.exit_code == 0, result.output
        assert flatness.load_checkpoint(str(run))[1]["epoch"] == 3


# --------------------------------------------------------------------------- numerical guards


def test_surface_of_a_nan_interpolation_end_and_nan_snapshot_is_refused(ws, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(ws["run"], run)
    shutil.copy(ws["nan"], run / "epoch-001.pt")
    assert_one_line_error(
        invoke(
            [
                "surface",
                ws["good"],
                "--x=-1:1:3",
                "--y=-1:1:3",
                *SURF_FAST,
                "--out",
                tmp_path / "s.h5",
                "--dir",
                f"pca:{run}",
            ]
        ),
        "not finite",
        2,
    )
    assert not (tmp_path / "s.h5").exists()


def test_diverging_amp_run_stops_cleanly_and_resume_is_refused_by_the_same_guard(tmp_path):
    out = tmp_path / "div"
    line = assert_one_line_error(
        invoke(
            ["train", "--no-progress", "--width", "8", "--epochs", "2", "--method", "amp", "--lr", "1e6", "--out", out]
        ),
        "training diverged",
        3,
    )
    assert re.search(r"at epoch 1, step \d+ of \d+", line) and "last good checkpoint is kept" in line
    model, info = flatness.load_checkpoint(str(out))
    assert info["epoch"] == 0 and all(torch.isfinite(p).all() for p in model.parameters())
    assert sorted(os.listdir(out)) == ["config.json", "init.pt", "last.pt", "metrics.jsonl"]


def test_experiment_refuses_a_crafted_checkpoint_in_its_study(ws, tmp_path):
    """A study whose finished runs hold crafted last.pt files: the probe step refuses them, nothing runs,
    and the study's files stay as they were (experiment.json, its own state file, is rewritten)."""
    study = tmp_path / "study"
    for method in ("erm", "amp"):
        run = study / "runs" / f"{method}-s0"
        run.mkdir(parents=True)
        write_crafted(str(run / "last.pt"), ws["marker"])
        (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    before = stamp_tree(str(study))
    # --workers 1: the runs are probed in order, so the first refusal is erm-s0's
    result = invoke(
        [
            "experiment",
            "--quick",
            "--methods",
            "erm,amp",
            "--seeds",
            "0",
            "--device",
            "cpu",
            "--no-progress",
            "--workers",
            "1",
            "--out",
            study,
        ]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error: ")]  # after the study's progress lines ([probe] ...)
    assert errors == [lines[-1]] and "refusing to load" in errors[0] and "runs/erm-s0/last.pt" in errors[0]
    after = stamp_tree(str(study))
    assert {k: v for k, v in after.items() if k != "experiment.json"} == before
    assert not os.path.exists(ws["marker"])
