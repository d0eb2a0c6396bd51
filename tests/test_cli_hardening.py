"""Hardening, second round (issue 15): one test per class of fault, each failing on the code before
its fix. The classes and these test names are listed in docs/reliability.md.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from holds import hold_env, wait_for_hold

from flatness.core import paths
from flatness.core.errors import FlatnessError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--width", "4", "--no-progress", "--device", "cpu"]
PROBE_FAST = ["--samples", "32", "--batch-size", "32", "--top-k", "1", "--max-iter", "3", "--device", "cpu", "--quiet"]


def one_line_error(result, needle, code=2):
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], result.output
    return lines[0]


def stamp(root):
    """{relative path: (bytes, mtime_ns)} of every file under root."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            with open(full, "rb") as handle:
                out[os.path.relpath(full, root)] = (handle.read(), os.stat(full).st_mtime_ns)
    return out


def subprocess_env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    """A finished 2-epoch ERM run (tiny convnet), made once; tests copy it before changing anything."""
    from click.testing import CliRunner

    from flatness.cli.main import main

    out = tmp_path_factory.mktemp("run") / "erm2"
    result = CliRunner().invoke(main, ["train", "--epochs", "2", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return str(out)


# --------------------------------------------------------------------------- 1. own input destroyed


def test_same_file_compares_identities_through_links(tmp_path):
    real = tmp_path / "a.pt"
    real.write_bytes(b"x")
    os.symlink(real, tmp_path / "link.pt")
    os.link(real, tmp_path / "hard.pt")
    (tmp_path / "sub").mkdir()
    assert paths.same_file(str(tmp_path / "link.pt"), str(real))
    assert paths.same_file(str(tmp_path / "hard.pt"), str(real))
    assert paths.same_file(str(tmp_path / "sub" / ".." / "a.pt"), str(real))
    assert not paths.same_file(str(tmp_path / "b.pt"), str(real))
    assert paths.same_file(str(tmp_path / "sub" / ".." / "new.h5"), str(tmp_path / "new.h5"))  # not yet there


def test_an_output_that_is_its_own_input_is_refused_force_or_not(digits_checkpoint, tmp_path, cli):
    ckpt = tmp_path / "c.pt"
    shutil.copy(digits_checkpoint, ckpt)
    os.symlink(ckpt, tmp_path / "alias.pt")
    before = stamp(str(tmp_path))
    for out in (ckpt, tmp_path / "alias.pt"):
        one_line_error(cli(["probe", ckpt, *PROBE_FAST, "--out", out, "--force"]), "is the same file as the input")
    assert stamp(str(tmp_path)) == before


# --------------------------------------------------------------------------- 2. locks that do not lock


def test_train_resume_lock_holds_across_tmpdir_and_symlinks(run2, tmp_path, cli, monkeypatch):
    """A real `train --resume` under one TMPDIR; a second one under another TMPDIR, through a symlink
    to the same folder, is refused while the first runs.

    The first is held (tests/holds.py) before its second epoch, under its lock, until it is killed:
    it cannot finish, and release its lock, during the second's grace period."""
    run = tmp_path / "run"
    shutil.copytree(run2, run)
    os.symlink(run, tmp_path / "alias")
    (tmp_path / "tmp-a").mkdir()
    (tmp_path / "tmp-b").mkdir()
    log = open(tmp_path / "first.log", "w")
    env = hold_env(subprocess_env(TMPDIR=str(tmp_path / "tmp-a")), "train-epoch", 1, tmp_path / "held")
    first = subprocess.Popen(
        [sys.executable, "-m", "flatness.cli", "train", "--out", str(run), "--resume", "--epochs", "200", *TINY],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_for_hold(first, tmp_path / "held", tmp_path / "first.log")
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 3  # it trained epoch 3, under its lock
        monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp-b"))
        monkeypatch.setattr(tempfile, "tempdir", None)
        assert tempfile.gettempdir() == str(tmp_path / "tmp-b")
        one_line_error(
            cli(["train", "--out", tmp_path / "alias", "--resume", "--epochs", "200", *TINY]),
            "another flatness process is writing this run folder",
        )
        assert first.poll() is None  # still held: the refusal was the lock's
    finally:
        first.kill()
        first.wait()
        log.close()


# --------------------------------------------------------------------------- 3. work before validation


@pytest.mark.parametrize(
    "option, value, needle",
    [
        ("--grid", "100000", "--grid must be at most"),
        ("--grid", "0", "--grid must be >= 3"),
        ("--samples", "0", "--samples must be >= 1"),
        ("--epochs", "0", "--epochs must be >= 1"),
        ("--seeds", str(2**64), "--seeds must be a whole number"),
    ],
)
def test_experiment_checks_every_option_before_the_first_step(tmp_path, cli, monkeypatch, option, value, needle):
    import flatness.study.experiment_steps

    def no_training(*args, **kwargs):
        raise AssertionError("experiment trained before it checked every option")

    monkeypatch.setattr(flatness.study.experiment_steps, "train", no_training)
    study = tmp_path / "study"
    one_line_error(
        cli(["experiment", "--quick", "--no-progress", "--device", "cpu", "--out", study, option, value]), needle
    )
    assert not study.exists()


@pytest.mark.parametrize(
    "value, needle",
    [
        ("0", "--samples must be >= 1"),
        ("-3", "--samples must be >= 1"),
        ("some", "--samples must be a whole number >= 1 or 'all'"),
    ],
)
def test_surface_samples_is_a_count_or_all_never_zero(digits_checkpoint, tmp_path, cli, value, needle):
    out = tmp_path / "s.h5"
    one_line_error(cli(["surface", digits_checkpoint, "--x=-1:1:3", "--samples", value, "--out", out]), needle)
    assert not out.exists()


# --------------------------------------------------------------------------- 4. internal errors on input


def test_a_seed_beyond_64_bits_is_a_one_line_error(digits_checkpoint, tmp_path, cli):
    one_line_error(cli(["train", "--seed", 2**64, *TINY, "--out", tmp_path / "r"]), "seed must be")
    one_line_error(
        cli(["probe", digits_checkpoint, *PROBE_FAST, "--seed", 2**64, "--out", tmp_path / "p.json"]), "--seed must be"
    )
    assert os.listdir(tmp_path) == []


def test_a_path_that_is_not_utf8_is_a_one_line_error(digits_checkpoint, tmp_path, cli):
    bad = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9")
    one_line_error(cli(["train", *TINY, "--out", bad]), "is not a valid UTF-8 name")
    one_line_error(cli(["probe", digits_checkpoint, *PROBE_FAST, "--out", bad + ".json"]), "not a valid UTF-8 name")
    one_line_error(cli(["experiment", "--quick", "--out", bad]), "is not a valid UTF-8 name")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- 5. wrong results with exit 0


def test_compare_refuses_runs_of_other_settings_and_a_copied_seed(run2, tmp_path, cli):
    copy = tmp_path / "copy"
    shutil.copytree(run2, copy)
    one_line_error(cli(["compare", run2, copy]), "one seed counts once")
    longer = tmp_path / "erm4"
    shutil.copytree(run2, longer)
    config = json.loads((longer / "config.json").read_text())
    config.update(epochs=4, seed=1)
    (longer / "config.json").write_text(json.dumps(config))
    one_line_error(cli(["compare", run2, longer]), "differ in epochs (2 vs 4)")


def test_resume_with_fewer_epochs_than_done_changes_nothing(run2, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(run2, run)
    before = stamp(str(run))
    one_line_error(cli(["train", "--out", run, "--resume", "--epochs", "1", *TINY]), "already trained 2 epochs")
    assert stamp(str(run)) == before


# --------------------------------------------------------------------------- 6. signals


def test_sigterm_is_reported_like_ctrl_c(run2, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run2, run)
    log = tmp_path / "train.log"
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flatness.cli", "train", "--out", str(run), "--resume", "--epochs", "200", *TINY],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=hold_env(subprocess_env(), "train-epoch", 1, tmp_path / "held"),  # held before epoch 4
        )
    wait_for_hold(proc, tmp_path / "held", log)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    output = log.read_text()
    lines = [ln for ln in output.splitlines() if ln.strip() and not ln.startswith(("epoch ", "Plan: "))]
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert len(lines) == 1 and lines[0].startswith("Terminated (SIGTERM).") and "--resume" in lines[0], output
    assert "Traceback" not in output
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3


def test_sigterm_during_a_surface_keeps_the_finished_points_and_resumes(digits_checkpoint, tmp_path):
    """The child is held (tests/holds.py) as its 6th point starts: SIGTERM lands with 5 points done."""
    out = tmp_path / "s.h5"
    args = [
        sys.executable,
        "-m",
        "flatness.cli",
        "surface",
        digits_checkpoint,
        "--x=-1:1:9",
        "--y=-1:1:9",
        "--samples",
        "200",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        str(out),
    ]
    log = tmp_path / "surface.log"
    env = hold_env(subprocess_env(), "surface-point", 5, tmp_path / "held")
    with open(log, "w") as handle:
        proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env)
    wait_for_hold(proc, tmp_path / "held", log)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    output = log.read_text()
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert len(lines) == 1 and lines[0].startswith("Terminated (SIGTERM).") and "--resume" in lines[0], output
    from flatness.formats.surface_file import read_surface

    assert int(read_surface(str(out))["computed"].sum()) == 5  # written on the way out, the 6th not
    resumed = subprocess.run(args + ["--resume"], capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"{9 * 9 - 5} points computed (resumed)" in resumed.stdout
    assert read_surface(str(out))["computed"].all()


def test_sigterm_handler_is_installed_only_while_a_command_runs():
    from flatness.cli.main import Terminated, sigterm_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as caught:
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at once
    assert isinstance(caught.value, Terminated)
    assert signal.getsignal(signal.SIGTERM) == before


# --------------------------------------------------------------------------- 7. links and shared outputs


def test_two_outputs_of_one_command_that_are_one_file_are_refused(run2, tmp_path, cli):
    os.symlink(tmp_path, tmp_path / "here")
    for json_path, csv_path in ((tmp_path / "x", tmp_path / "x"), (tmp_path / "x", tmp_path / "here" / "x")):
        one_line_error(cli(["compare", run2, "--json", json_path, "--csv", csv_path]), "are the same file")
    assert sorted(os.listdir(tmp_path)) == ["here"]


def test_a_link_loop_at_an_output_is_refused_and_kept(tmp_path, cli):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    one_line_error(cli(["train", *TINY, "--out", loop]), "loop of symbolic links")
    one_line_error(cli(["compare", tmp_path, "--json", loop]), "loop of symbolic links")
    assert os.path.islink(loop) and os.readlink(loop) == str(loop)


def test_check_paths_unit(tmp_path):
    (tmp_path / "in.pt").write_bytes(b"x")
    with pytest.raises(FlatnessError, match="same file as the input"):
        paths.check_paths({"CKPT": [str(tmp_path)]}, {"--out": str(tmp_path / "in.pt")})  # a folder's file
    with pytest.raises(FlatnessError, match="does not exist"):
        paths.check_paths({}, {"--out": str(tmp_path / "no" / "x.h5")})
    with pytest.raises(FlatnessError, match="is a folder"):
        paths.check_paths({}, {"--out": str(tmp_path)})
    paths.check_paths({"CKPT": [str(tmp_path / "in.pt")]}, {"--out": str(tmp_path / "out.h5")})


# --------------------------------------------------------------------------- a full disk (a real small file system)


def _mount_tmpfs(where, size):
    """Mount a tmpfs of ``size`` bytes at ``where``; returns None or the reason it cannot."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return "mounting a file system needs root and mount(8)"
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True
    )
    return None if done.returncode == 0 else f"mount -t tmpfs refused: {done.stderr.strip()}"


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs and fill(leave): a filler file that leaves ``leave`` bytes free; free() removes it."""
    where = tmp_path / "disk"
    where.mkdir()
    reason = _mount_tmpfs(where, 1 << 20)
    if reason:
        print(f"SKIP full-disk test: {reason}; test_a_file_size_limit_... covers the same path with ulimit -f")
        pytest.skip(reason)
    filler = where / ".filler"

    def fill(leave):
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()
        free = os.statvfs(where).f_bavail * os.statvfs(where).f_frsize
        with open(filler, "wb") as handle:
            handle.write(b"\0" * max(0, free - leave))

    def free():
        filler.unlink()

    try:
        yield where, fill, free
    finally:
        subprocess.run(["umount", str(where)], check=False)


def assert_nothing_half_written(folder):
    """No temporary left behind; every checkpoint, JSON and HDF5 file there is whole."""
    import h5py

    from flatness.formats.checkpoint import read_checkpoint

    for base, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(base, name)
            assert not name.endswith(".tmp"), full
            if name.endswith(".pt"):
                read_checkpoint(full)
            elif name.endswith(".json"):
                json.loads(open(full).read())
            elif name.endswith(".h5"):
                with h5py.File(full, "r"):
                    pass


@pytest.fixture(scope="module")
def disk_inputs(run2, tmp_path_factory):
    """A probe JSON and a 2D surface of the 2-epoch run, for compare and plot."""
    from click.testing import CliRunner

    from flatness.cli.main import main

    root = tmp_path_factory.mktemp("disk-inputs")
    run = root / "run"
    shutil.copytree(run2, run)
    for args in (
        ["probe", run / "last.pt", *PROBE_FAST, "--out", run / "probe.json"],
        [
            "surface",
            run / "last.pt",
            "--x=-1:1:3",
            "--y=-1:1:3",
            "--samples",
            "16",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            root / "s.h5",
        ],
    ):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 0, result.output
    return {"run": str(run), "ckpt": str(run / "last.pt"), "surface": str(root / "s.h5")}


FULL_DISK_COMMANDS = {
    "train": lambda d, i: ["train", "--epochs", "2", *TINY, "--out", d / "run"],
    "probe": lambda d, i: ["probe", i["ckpt"], *PROBE_FAST, "--density", "--save-vectors", "--out", d / "p.json"],
    "surface": lambda d, i: [
        "surface",
        i["ckpt"],
        "--x=-1:1:5",
        "--y=-1:1:5",
        "--samples",
        "16",
        "--device",
        "cpu",
        "--quiet",
        "--out",
        d / "s.h5",
    ],
    "compare": lambda d, i: ["compare", i["run"], "--out", d / "cmp", "--json", d / "c.json", "--csv", d / "c.csv"],
    "plot": lambda d, i: ["plot", i["surface"], "--out", d / "figs"],
}


@pytest.mark.parametrize("command", sorted(FULL_DISK_COMMANDS))
def test_a_full_disk_is_a_clear_error_and_the_rerun_completes(command, small_disk, disk_inputs, cli):
    disk, fill, free = small_disk
    (disk / "keep.txt").write_text("a file that was there before\n")
    inputs_before = stamp(os.path.dirname(disk_inputs["run"]))
    args = FULL_DISK_COMMANDS[command](disk, disk_inputs)
    failures = 0
    for leave in (0, 8 << 10, 48 << 10):
        fill(leave)
        result = cli(
            args + (["--force"] if command != "train" else ["--resume"] if (disk / "run" / "last.pt").exists() else [])
        )
        if result.exit_code != 0:
            failures += 1
            line = one_line_error(result, "")
            assert "No space left on device" in line or "disk full" in line, line
        free()
        assert_nothing_half_written(disk)
        assert (disk / "keep.txt").read_text() == "a file that was there before\n"
        assert stamp(os.path.dirname(disk_inputs["run"])) == inputs_before
    assert failures, "the disk was never full enough to fail"
    extra = ["--force"] if command != "train" else (["--resume"] if (disk / "run" / "last.pt").exists() else [])
    result = cli(args + extra)
    assert result.exit_code == 0, result.output
    assert_nothing_half_written(disk)


def test_a_file_size_limit_is_a_clear_error_and_the_rerun_completes(tmp_path, cli):
    """Where no file system can be mounted: ``ulimit -f`` makes writes fail (EFBIG; Python ignores
    SIGXFSZ), the same path through the code as a full disk."""
    import resource

    run = tmp_path / "run"
    limit = 12 * 1024  # config.json and init.pt fit, last.pt (weights + optimizer state) does not

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "flatness.cli", "train", "--epochs", "2", *TINY, "--out", str(run)],
        preexec_fn=cap,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip() and not ln.startswith("epoch ")]
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(lines) == 1 and lines[0].startswith("Error: cannot write") and "File too large" in lines[0], lines
    assert_nothing_half_written(run)
    result = cli(["train", "--epochs", "2", *TINY, "--out", run] + (["--resume"] if (run / "last.pt").exists() else []))
    assert result.exit_code == 0, result.output
    assert_nothing_half_written(run)


# --------------------------------------------------------------------------- wired into surface and plot


def test_surface_refuses_its_own_input_an_overflowing_range_and_another_precision(digits_checkpoint, tmp_path, cli):
    ckpt = tmp_path / "c.pt"
    shutil.copy(digits_checkpoint, ckpt)
    fast = ["--samples", "16", "--device", "cpu", "--quiet"]
    before = stamp(str(tmp_path))
    one_line_error(cli(["surface", ckpt, "--x=-1:1:3", *fast, "--out", ckpt, "--force"]), "same file as the input")
    one_line_error(
        cli(["surface", ckpt, "--x=-1e300:1e300:3", *fast, "--out", tmp_path / "o.h5"]), "MIN and MAX must lie within"
    )
    one_line_error(
        cli(["surface", ckpt, "--x=-1:1:3", *fast, "--dir", f"interp:{ckpt}", "--out", tmp_path / "i.h5"]),
        "an interpolation needs two checkpoints",
    )
    assert stamp(str(tmp_path)) == before
    out = tmp_path / "s.h5"
    assert cli(["surface", ckpt, "--x=-1:1:3", *fast, "--out", out]).exit_code == 0
    made = stamp(str(tmp_path))
    one_line_error(
        cli(["surface", ckpt, "--x=-1:1:3", *fast, "--out", out, "--resume", "--precision", "bf16"]),
        "another precision",
    )
    assert stamp(str(tmp_path)) == made


def test_plot_refuses_bad_colour_limits_and_two_inputs_with_one_stem(digits_checkpoint, tmp_path, cli):
    fast = ["--samples", "16", "--device", "cpu", "--quiet"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        assert (
            cli(
                ["surface", digits_checkpoint, "--x=-1:1:3", "--y=-1:1:3", *fast, "--out", tmp_path / folder / "s.h5"]
            ).exit_code
            == 0
        )
    figs = tmp_path / "figs"
    a, b = tmp_path / "a" / "s.h5", tmp_path / "b" / "s.h5"
    one_line_error(cli(["plot", a, "--out", figs, "--vmin", "2", "--vmax", "1"]), "--vmin must be below --vmax")
    one_line_error(cli(["plot", a, "--out", figs, "--vmin", "nan"]), "--vmin must be a finite number")
    one_line_error(cli(["plot", a, b, "--out", figs, "--kind", "heatmap"]), "are the same file")
    assert not figs.exists()


def test_damaged_surface_shapes_are_refused_by_plot_and_resume(digits_checkpoint, tmp_path, cli):
    import h5py

    fast = ["--samples", "16", "--device", "cpu", "--quiet"]
    good = tmp_path / "good.h5"
    assert cli(["surface", digits_checkpoint, "--x=-1:1:3", *fast, "--out", good]).exit_code == 0
    short, flat2d = tmp_path / "short.h5", tmp_path / "flat2d.h5"
    for path in (short, flat2d):
        shutil.copy(good, path)
    with h5py.File(short, "r+") as f:  # a 1-D file whose loss array is one point short
        del f["train_loss"]
        f["train_loss"] = [1.0, 2.0]
    with h5py.File(flat2d, "r+") as f:  # 2-D values, but no y coordinates
        for key in ("train_loss", "train_acc", "computed"):
            data = f[key][()]
            del f[key]
            f[key] = data.reshape(1, -1)
    before = stamp(str(tmp_path))
    one_line_error(cli(["plot", short, "--out", tmp_path / "figs"]), "does not fit its coordinates")
    one_line_error(cli(["plot", flat2d, "--out", tmp_path / "figs"]), "the file has no y coordinates")
    one_line_error(
        cli(["surface", digits_checkpoint, "--x=-1:1:3", *fast, "--out", short, "--resume"]),
        "does not fit its coordinates",
    )
    assert stamp(str(tmp_path)) == before
