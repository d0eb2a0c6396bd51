"""Reliability (issue #7), the part with real processes: SIGKILL at seeded random moments during
`train`, `surface` and `experiment` (every file left is either absent, the previous valid version or
complete, and resuming gives the uninterrupted result), Ctrl-C (one line, exit 130, resumable), and two
processes writing one run folder or surface file (the second refuses at once).

Processes run `python -m flatness.cli` with OMP_NUM_THREADS=1. Random delays come from seeded
generators. No signal races the clock: every killed process is held (tests/holds.py) at a point of
its work that it reaches only after a seeded amount of it, and the amounts are chosen so that the
killed processes together can never finish the job; so every kill lands on unfinished work, whether
during the work (slow machine) or at the hold (fast machine), and the verdicts are the same on both.
"""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from holds import hold_env, wait_for_hold

import flatness
from flatness.formats.checkpoint import read_checkpoint
from flatness.formats.probe_file import read_probe
from flatness.formats.surface_file import read_surface

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
KILLS = 5


def cli(args):
    from flatness.cli.main import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def default_sigint():
    """In the child before Python starts: SIGINT back to its default action. A shell starts background
    jobs (`cmd &`) with SIGINT ignored, children inherit that, and Python then installs no Ctrl-C
    handler at all, so a test run from such a job would see its SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(args, log, env=None):
    handle = open(log, "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flatness.cli", *map(str, args)],
        env=env or ENV,
        stdout=handle,
        stderr=subprocess.STDOUT,
        preexec_fn=default_sigint,
    )
    proc.log_handle = handle
    return proc


def wait_for(proc, condition, timeout=60.0):
    """Poll until ``condition()`` or the process ends; True when the condition came first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


def mtime(path):
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def kill_after(proc, delay, sig=signal.SIGKILL):
    """Send ``sig`` after ``delay`` s; the process must still be running (it is held before its end).

    The delay only picks the moment: a held process is still there however long it is.
    """
    with contextlib.suppress(subprocess.TimeoutExpired):  # the expected outcome: still running after the delay
        proc.wait(timeout=delay)
    assert proc.poll() is None, f"the process ended (exit {proc.returncode}) though it was held"
    proc.send_signal(sig)
    proc.wait(timeout=120)
    proc.log_handle.close()


def strip_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def assert_same_run(a, b):
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    assert sa["epoch"] == sb["epoch"] and sa["step"] == sb["step"]
    for k in sa["model_state"]:
        assert torch.equal(sa["model_state"][k], sb["model_state"][k]), k
    for k, st in sa["optimizer_state"]["state"].items():
        for name, t in st.items():
            if torch.is_tensor(t):
                assert torch.equal(t, sb["optimizer_state"]["state"][k][name]), (k, name)
    assert strip_seconds(sa["metrics"]) == strip_seconds(sb["metrics"])


# --------------------------------------------------------------------------- train

TRAIN = dict(width=8, batch_size=64, epochs=40, milestones=[20], seed=3, save_every=4)


def train_args(out):
    return [
        "train",
        "--width",
        8,
        "--batch-size",
        64,
        "--epochs",
        40,
        "--milestones",
        20,
        "--seed",
        3,
        "--save-every",
        4,
        "--out",
        out,
        "--no-progress",
    ]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run every killed or interrupted one must equal, bit for bit."""
    from flatness.training.config import TrainConfig
    from flatness.training.loop import train

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(
            TrainConfig(**TRAIN), str(tmp_path_factory.mktemp("straight") / "run"), progress=False, verbose=False
        )
    finally:
        torch.set_num_threads(before)


def check_run_folder(run):
    """Whatever a kill left: every file under its real name is complete and consistent."""
    if not run.exists():
        return None
    names = os.listdir(run)
    for name in names:
        if name.startswith("."):
            assert name.endswith(".tmp"), name  # an atomic write cut short: never read
            continue
        path = str(run / name)
        if name.endswith(".pt"):
            read_checkpoint(path)  # a FlatnessError here would be a half-written checkpoint
        elif name == "config.json":
            json.load(open(path))
    epoch = None
    if "last.pt" in names:
        epoch = read_checkpoint(str(run / "last.pt"))["epoch"]
        rows = [json.loads(line) for line in open(run / "metrics.jsonl")] if "metrics.jsonl" in names else []
        assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))
        assert len(rows) in (epoch, epoch - 1), (len(rows), epoch)  # metrics.jsonl follows last.pt
        for e in range(0, epoch + 1, TRAIN["save_every"]):
            assert f"epoch-{e:03d}.pt" in names, e
    return epoch


STEPS_PER_EPOCH = 23  # 1437 digits in batches of 64


def test_sigkill_train_at_random_moments_then_resume_is_bitwise(tmp_path, straight):
    rng = random.Random(1234)
    run = tmp_path / "run"
    seen = []
    for kill in range(KILLS):
        args = train_args(run) + (["--resume"] if (run / "config.json").exists() else [])
        before = mtime(run / "last.pt")
        # held after at most 6 epochs of steps: 5 kills leave at least 10 of the 40 epochs undone
        steps = rng.randint(STEPS_PER_EPOCH // 2, 6 * STEPS_PER_EPOCH)
        held = tmp_path / f"held{kill}"
        proc = spawn(args, tmp_path / f"train{kill}.log", env=hold_env(ENV, "train-step", steps, held))
        if rng.random() < 0.7:  # most kills once this process has written a checkpoint, the others anywhere
            wait_for(proc, lambda before=before, held=held: mtime(run / "last.pt") != before or held.exists())
            delay = rng.uniform(0.0, 0.6)
        else:
            delay = rng.uniform(0.2, 4.0)
        kill_after(proc, delay)
        assert proc.returncode == -signal.SIGKILL, open(tmp_path / f"train{kill}.log").read()
        seen.append(check_run_folder(run))
    assert (seen[-1] or 0) < TRAIN["epochs"]
    result = cli(train_args(run) + (["--resume"] if (run / "config.json").exists() else []))
    assert result.exit_code == 0, result.output
    assert_same_run(run / "last.pt", os.path.join(straight, "last.pt"))
    for e in range(0, TRAIN["epochs"] + 1, TRAIN["save_every"]):
        a = torch.load(run / f"epoch-{e:03d}.pt", weights_only=True)["model_state"]
        b = torch.load(os.path.join(straight, f"epoch-{e:03d}.pt"), weights_only=True)["model_state"]
        assert all(torch.equal(a[k], b[k]) for k in a), e
    assert not [n for n in os.listdir(run) if n.endswith(".tmp")]  # the resume removed cut-short temporaries
    print("train kills left last.pt at epochs", seen)


def test_sigint_train_then_resume(tmp_path, straight):
    run = tmp_path / "run"
    held = tmp_path / "held"
    # held 7 steps into epoch 5 (epoch-004.pt written): Ctrl-C always lands in the middle of an epoch
    env = hold_env(ENV, "train-step", 4 * STEPS_PER_EPOCH + 7, held)
    proc = spawn(train_args(run), tmp_path / "train.log", env=env)
    wait_for_hold(proc, held, tmp_path / "train.log")
    kill_after(proc, 0.0, signal.SIGINT)
    log = open(tmp_path / "train.log").read()
    assert proc.returncode == 130, log
    assert "Traceback" not in log
    lines = [ln for ln in log.splitlines() if not ln.startswith("epoch ")]
    assert len(lines) == 1 and lines[0].startswith("Interrupted.") and "--resume" in lines[0], log
    assert check_run_folder(run) == 4
    result = cli(train_args(run) + ["--resume"])
    assert result.exit_code == 0, result.output
    assert_same_run(run / "last.pt", os.path.join(straight, "last.pt"))


def test_two_train_processes_one_folder(tmp_path):
    run = tmp_path / "run"
    held = tmp_path / "held"
    # The first process is held before its 3rd epoch, under its lock, until it is stopped with Ctrl-C: it
    # cannot finish during the second's 2 s lock grace (CI once saw a 40-epoch first run do just that).
    first = spawn(train_args(run), tmp_path / "first.log", env=hold_env(ENV, "train-epoch", 2, held))
    wait_for_hold(first, held, tmp_path / "first.log")
    second = cli(train_args(run) + ["--resume"])
    assert second.exit_code == 2 and second.output.count("\n") == 1, second.output
    assert second.output.startswith("Error: another flatness process is writing this run folder")
    second = cli(train_args(run))  # without --resume: refused too (lock first, then the folder check)
    assert second.exit_code == 2 and "another flatness process" in second.output, second.output
    assert first.poll() is None  # still held: both refusals were the lock's
    kill_after(first, 0.0, signal.SIGINT)
    assert first.returncode == 130, open(tmp_path / "first.log").read()
    epoch = check_run_folder(run)  # the refused second process left the first's folder intact
    assert epoch == 2
    assert flatness.load_checkpoint(str(run))[1]["epoch"] == epoch


# --------------------------------------------------------------------------- surface


def surface_args(ckpt, out):
    return ["surface", ckpt, "--x=-1:1:9", "--y=-1:1:9", "--samples", "all", "--device", "cpu", "--quiet", "--out", out]


SURFACE_POINTS = 81


def surface_env(after, marker):
    """Held as point ``after`` + 1 starts; the file is written after every point."""
    return hold_env(ENV, "surface-point", after, marker, flush_every_point=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from flatness.training.config import TrainConfig
    from flatness.training.loop import train

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = train(
            TrainConfig(width=8, batch_size=64, epochs=2, seed=0),
            str(tmp_path_factory.mktemp("surfckpt") / "run"),
            progress=False,
            verbose=False,
        )
    finally:
        torch.set_num_threads(before)
    return os.path.join(run, "last.pt")


@pytest.fixture(scope="module")
def surface_reference(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("surfref") / "ref.h5"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = cli(surface_args(checkpoint, out))
    finally:
        torch.set_num_threads(before)
    assert result.exit_code == 0, result.output
    return read_surface(str(out))


def check_surface(path, reference):
    """A file a kill left: absent, or readable with every point marked computed equal to the reference."""
    if not os.path.exists(path):
        return 0
    surf = read_surface(str(path))
    done = surf["computed"]
    for key in ("train_loss", "train_acc"):
        assert np.array_equal(surf[key][done], reference[key][done]), key
    return int(done.sum())


def test_sigkill_surface_at_random_moments_then_resume_is_identical(checkpoint, surface_reference, tmp_path):
    rng = random.Random(99)
    out = tmp_path / "s.h5"
    done = []
    for kill in range(KILLS):
        args = surface_args(checkpoint, out) + (["--resume"] if out.exists() else [])
        before = mtime(out)
        # held after at most 12 points: 5 kills leave at least 21 of the 81 undone
        held = tmp_path / f"held{kill}"
        proc = spawn(args, tmp_path / f"surface{kill}.log", env=surface_env(rng.randint(1, 12), held))
        if rng.random() < 0.8:  # most kills once this process has written points, the others anywhere
            wait_for(proc, lambda before=before, held=held: mtime(out) != before or held.exists())
            delay = rng.uniform(0.0, 0.7)
        else:
            delay = rng.uniform(0.5, 5.0)
        kill_after(proc, delay)
        assert proc.returncode == -signal.SIGKILL, open(tmp_path / f"surface{kill}.log").read()
        done.append(check_surface(out, surface_reference))
    assert done[-1] < SURFACE_POINTS
    result = cli(surface_args(checkpoint, out) + (["--resume"] if out.exists() else []))
    assert result.exit_code == 0, result.output
    final = read_surface(str(out))
    assert final["computed"].all()
    for key in ("train_loss", "train_acc", "xcoordinates", "ycoordinates"):
        assert np.array_equal(final[key], surface_reference[key]), key
    print("surface kills left computed points:", done)


def test_sigint_surface_then_resume(checkpoint, surface_reference, tmp_path, monkeypatch):
    """Also two processes on one surface file: while the first writes, a second refuses at once."""
    import flatness.core.locking

    # refuse without the grace period (meant for locks of just-killed processes), while the first writes
    monkeypatch.setattr(flatness.core.locking, "BUSY_GRACE_SECONDS", 0.0)
    out = tmp_path / "s.h5"
    held = tmp_path / "held"
    proc = spawn(surface_args(checkpoint, out), tmp_path / "surface.log", env=surface_env(10, held))
    wait_for_hold(proc, held, tmp_path / "surface.log")  # 10 points written, the 11th starting
    second = cli(surface_args(checkpoint, out) + ["--resume"])
    assert second.exit_code == 2 and second.output.count("\n") == 1, second.output
    assert "another flatness process is writing this surface file" in second.output
    kill_after(proc, 0.0, signal.SIGINT)
    log = open(tmp_path / "surface.log").read()
    assert proc.returncode == 130, log
    lines = [ln for ln in log.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Interrupted."), log
    assert check_surface(out, surface_reference) == 10
    result = cli(surface_args(checkpoint, out) + ["--resume"])
    assert result.exit_code == 0 and f"{SURFACE_POINTS - 10} points computed (resumed)" in result.output, result.output
    final = read_surface(str(out))
    assert np.array_equal(final["train_loss"], surface_reference["train_loss"])


# --------------------------------------------------------------------------- experiment


def check_study(study):
    """Every file of the study that exists under its real name reads as valid."""
    if not study.exists():
        return
    for folder, _, names in os.walk(study):
        for name in names:
            path = os.path.join(folder, name)
            if name.startswith("."):
                assert name.endswith(".tmp"), path
            elif name.endswith(".pt"):
                read_checkpoint(path)
            elif name == "probe.json":
                read_probe(path)
            elif name.endswith(".json"):
                json.load(open(path))
            elif name.startswith("surface") and name.endswith(".h5") or "interp-" in name and name.endswith(".h5"):
                read_surface(path)


def test_sigkill_experiment_at_random_moments_then_it_completes(tmp_path):
    """The figures step is always held, so no killed process finishes the study; and each process (the
    parent, each worker) is held once it has done one step, so the kills spread over the study's steps."""
    rng = random.Random(5)
    study = tmp_path / "study"
    args = ["experiment", "--quick", "--seeds", "0", "--device", "cpu", "--no-progress", "--out", study]
    for kill in range(KILLS):
        env = hold_env(ENV, "study-step", 1, tmp_path / f"held{kill}")
        proc = spawn(args, tmp_path / f"exp{kill}.log", env=env)
        kill_after(proc, rng.uniform(1.5, 6.0))
        assert proc.returncode == -signal.SIGKILL, open(tmp_path / f"exp{kill}.log").read()
        check_study(study)
    assert not (study / "REPORT.md").exists()
    result = cli(args)
    assert result.exit_code == 0, result.output
    check_study(study)
    assert (study / "REPORT.md").stat().st_size > 0 and (study / "report.html").exists()
    for method in ("erm", "amp"):
        run = study / "runs" / f"{method}-s0"
        assert flatness.load_checkpoint(str(run))[1]["epoch"] == 1
        assert read_probe(str(run / "probe.json"))["hessian"]
        assert read_surface(str(run / "surface-2d.h5"))["computed"].all()
