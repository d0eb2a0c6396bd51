"""The engines of flatness.core.engines: the costliest ready task first, follow-ups only after the tasks
they need, one pool per job, and a task's exception ends the job; in this process, on 2 local worker
processes and on Ray.

No test depends on timing. On 2 workers the order is checked through marker files: a task writes
``done-<name>`` when it ends and, when it starts, counts the markers already there. With at most one
task per worker in flight, the i-th costliest task cannot start before i - 1 tasks have ended, whatever
the speed of either worker; a follow-up checks that the markers of the tasks it needs exist.
"""

import importlib.util
import multiprocessing
import os
from dataclasses import dataclass

import pytest

from flatness.core.engines import run_local, run_ray
from flatness.core.errors import FlatnessError

WORKERS = 2


@dataclass(frozen=True)
class Job:
    name: str
    cost: float
    folder: str
    needs: tuple[str, ...] = ()


def do_job(job: Job) -> dict:
    """The task: note what had ended at its start, check its needs, leave its own marker."""
    if job.name.startswith("boom"):
        raise FlatnessError(f"task {job.name} failed")
    ended = sorted(n[len("done-") :] for n in os.listdir(job.folder) if n.startswith("done-"))
    with open(os.path.join(job.folder, f"done-{job.name}"), "w") as handle:
        handle.write(job.name)
    return {"name": job.name, "ended_before": ended, "value": len(job.name) * job.cost}


def jobs_and_follow_ups(folder, boom_needs):
    """Six tasks given in no order of cost; follow-ups F after A, G after A and B, and a failing one."""
    costs = {"C": 3.0, "A": 6.0, "E": 1.0, "B": 5.0, "F0": 0.5, "D": 4.0}
    first = [Job(name, cost, str(folder)) for name, cost in costs.items()]
    follow_ups = [
        Job("F", 10.0, str(folder), ("A",)),
        Job("G", 0.0, str(folder), ("A", "B")),
        Job("boom", 7.0, str(folder), boom_needs),
    ]
    return first, follow_ups


def run_job(engine, workers, folder, boom_needs, monkeypatch):
    """Run the tasks and follow-ups on an engine until the failing one; returns the results in completion order."""
    first, follow_ups = jobs_and_follow_ups(folder, boom_needs)
    results, waiting, ended = [], list(follow_ups), set()

    def on_done(result):
        results.append(result)
        ended.add(result["name"])
        ready = [job for job in waiting if set(job.needs) <= ended]
        for job in ready:
            waiting.remove(job)
        return ready

    cost = lambda job: job.cost  # noqa: E731
    with pytest.raises(FlatnessError, match="task boom failed"):  # raised in this process, whatever the engine
        if engine == "ray":
            # Ray's workers import this module by name (tests.core.test_engines): they get the repository
            # root on their path, and the tests folder for the shared helpers
            tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.path.dirname(tests), tests]))
            run_ray(first, workers, on_done, do_job, cost=cost)
        else:
            run_local(first, workers, on_done, fn=do_job, cost=cost)
    return results


ALL = ("A", "B", "C", "D", "E", "F", "F0", "G")


def test_in_this_process_the_costliest_first_follow_ups_when_ready_and_nothing_after_a_failure(tmp_path, monkeypatch):
    results = run_job("local", 1, tmp_path, ALL, monkeypatch)
    # A (6) first; F (10) is ready once A is done and outranks everything; G (0) once B is done, last
    assert [r["name"] for r in results] == ["A", "F", "B", "D", "C", "E", "F0", "G"]
    assert results[1]["ended_before"] == ["A"] and set(results[-1]["ended_before"]) >= {"A", "B"}
    # a task that fails once B is done (cost 7, so next): raised, and none of the others starts
    again = tmp_path / "again"
    again.mkdir()
    assert [r["name"] for r in run_job("local", 1, again, ("B",), monkeypatch)] == ["A", "F", "B"]
    assert sorted(os.listdir(again)) == ["done-A", "done-B", "done-F"]


ENGINES = [
    "local",
    pytest.param(
        "ray", marks=pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray is an optional extra")
    ),
]


@pytest.mark.parametrize("engine", ENGINES)
def test_two_workers_start_the_costliest_first_follow_ups_after_their_needs_and_stop_on_a_failure(
    engine, tmp_path, monkeypatch
):
    # the failing task is ready only once every other task has ended, so all of them ran
    results = run_job(engine, WORKERS, tmp_path, ALL, monkeypatch)
    by_name = {r["name"]: r for r in results}
    assert sorted(by_name) == sorted(ALL) and len(results) == len(ALL)  # each once
    first, follow_ups = jobs_and_follow_ups(tmp_path, ALL)
    for rank, job in enumerate(sorted(first, key=lambda j: -j.cost)):
        # the rank-th costliest is started after at least rank - (WORKERS - 1) tasks have ended
        assert len(by_name[job.name]["ended_before"]) >= rank - (WORKERS - 1), (job.name, by_name[job.name])
    for job in follow_ups[:2]:
        assert set(job.needs) <= set(by_name[job.name]["ended_before"]), job.name
    assert multiprocessing.active_children() == []  # the failure shut the pool down, its workers are gone
    # the same results as in this process, whatever the order
    alone = tmp_path / "alone"
    alone.mkdir()
    expected = {r["name"]: r["value"] for r in run_job("local", 1, alone, ALL, monkeypatch)}
    assert {r["name"]: r["value"] for r in results} == expected


PARENT_KILLED_AT_START = """
import multiprocessing, os, signal, sys, threading, time
from flatness.core.engines import run_local

def wait_for_workers():  # progress, not time: the pool has started its processes
    while not multiprocessing.active_children():
        time.sleep(0.001)

def kill_once_workers_exist():
    wait_for_workers()
    with open(sys.argv[1], "w") as handle:
        handle.write(" ".join(str(p.pid) for p in multiprocessing.active_children()))
    os.kill(os.getpid(), signal.SIGKILL)  # no worker has reached its initialiser: each is held before it

threading.Thread(target=kill_once_workers_exist, daemon=True).start()
run_local([1, 2, 3], 2, lambda result: None, fn=os.getpid)
"""


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to see the workers (Linux)")
def test_workers_of_a_parent_killed_while_they_start_do_not_outlive_it(tmp_path):
    """The death signal covers only a parent that dies after it is set; a worker must also notice a
    parent that died while it was starting (it used to wait on its queue forever).

    Each worker is held (tests/holds.py) before its initialiser until the parent is dead, so the parent
    always dies while they start, however fast they start."""
    import subprocess
    import sys
    import time

    from holds import hold_env

    pids_file, release = tmp_path / "pids", tmp_path / "parent-is-dead"
    env = hold_env(os.environ, "worker-start", 0, tmp_path / "held", release=release)
    proc = subprocess.run([sys.executable, "-c", PARENT_KILLED_AT_START, str(pids_file)], env=env, timeout=300)
    assert proc.returncode == -9
    pids = [int(p) for p in pids_file.read_text().split()]
    assert pids
    release.touch()  # now the workers reach their initialiser, with their parent gone
    deadline = time.monotonic() + 300  # only against a hang: they exit within seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    assert not [p for p in pids if alive(p)], "a worker outlived its killed parent"


def test_default_workers_and_threads_follow_the_documented_rule(monkeypatch):
    """One home for how many workers and threads run (experiment and sweep): 8 cores, with and without CUDA."""
    from flatness.core import engines

    monkeypatch.setattr(engines.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(engines.torch.cuda, "is_available", lambda: False)
    assert engines.default_workers(3, "cuda") == 3  # given: as given, whatever the device
    assert engines.default_workers(None, "cpu") == 8 and engines.default_workers(None, "auto") == 8
    assert engines.default_workers(None, "cuda:1") == 1
    assert engines.default_workers(None) == 8  # a sweep: the cores whatever the device
    assert engines.default_threads(5, 4, "cpu", tiny_model=True) == 5
    assert engines.default_threads(None, 1, "cpu", tiny_model=True) == 1
    assert engines.default_threads(None, 4, "cpu") == 2  # 4 workers share 8 cores
    assert engines.default_threads(None, 1, "cpu") is None  # one worker: PyTorch's choice
    monkeypatch.setattr(engines.torch.cuda, "is_available", lambda: True)
    assert engines.default_workers(None, "auto") == 1 and engines.default_workers(None, "cpu") == 8
    assert engines.default_threads(None, 8, "cpu", tiny_model=True) == 1  # 8 // 8, not the tiny rule
    with pytest.raises(FlatnessError, match="--workers"):
        engines.default_workers(0)
    with pytest.raises(FlatnessError, match="--threads"):
        engines.default_threads(engines.MAX_THREADS + 1, 1, "cpu")
