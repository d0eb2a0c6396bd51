"""Where independent tasks run: ``local`` worker processes on this machine, or ``ray`` tasks.

Both engines take a list of tasks (a sweep's ``CellTask``s, or any picklable task with a module-level
function, e.g. the experiment's steps) and call ``on_done(result)`` in the parent as each task
finishes (in completion order); the tasks themselves decide nothing about the engine, so the numbers
are the same whichever runs them.

* ``local``: with one worker the cells run in this process; with more, a pool of spawned processes
  (spawn, not fork: a forked copy of a process that has started torch's thread pools can hang). Each
  worker asks the kernel to kill it when the parent dies (Linux), so a killed sweep leaves no worker
  running on.
* ``ray``: each cell a Ray task requesting one CPU (and one GPU when the device is CUDA), on the
  cluster at ``address`` or on a local instance of ``workers`` CPUs. Ray is an optional extra.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from flatness.core.errors import FlatnessError

ENGINES = ("local", "ray")
RAY_MISSING = "--engine ray needs Ray, which is not installed: pip install 'flatness[ray]'"
OnDone = Callable[[Any], None]
TaskFn = Callable[[Any], Any]


def check_engine(engine: str) -> None:
    """Refuse an unknown engine, or Ray when it is not installed (before anything starts)."""
    if engine not in ENGINES:
        raise FlatnessError(f"unknown engine {engine!r}; use local or ray")
    if engine == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise FlatnessError(RAY_MISSING)


def _die_with_parent() -> None:
    """Worker initialiser: SIGKILL this worker when its parent dies (Linux prctl; elsewhere nothing)."""
    import signal

    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def run_local(tasks: Sequence[Any], workers: int, on_done: OnDone, fn: TaskFn) -> None:
    """Run ``fn(task)`` for every task on ``workers`` local processes (in this process when ``workers`` is 1).

    Args:
        tasks: the tasks (picklable).
        workers: how many at a time.
        on_done: called with each task's result as it finishes.
        fn: a module-level function (workers import it by name): a sweep's ``run_cell``, the experiment's
            ``run_study_task``.
    """
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            on_done(fn(task))
        return
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=context, initializer=_die_with_parent)
    try:
        pending = {pool.submit(fn, t) for t in tasks}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                on_done(future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_ray(
    tasks: Sequence[Any],
    workers: int,
    on_done: OnDone,
    fn: TaskFn,
    address: str | None = None,
    gpu: bool = False,
) -> None:
    """Run ``fn(task)`` for every task as Ray tasks.

    Args:
        tasks: the tasks.
        workers: CPUs of a local Ray instance (ignored when joining a cluster at ``address``).
        on_done: called with each task's result as it finishes.
        fn: a module-level function.
        address: a Ray cluster's address (None: start a local instance, or join the one ``ray.init``
            finds by itself, e.g. through ``RAY_ADDRESS``).
        gpu: request one GPU per task.
    """
    check_engine("ray")
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"address": address} if address else {"num_cpus": workers}
        # The workers import flatness from the same place as this process.
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = {
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
            "OMP_NUM_THREADS": "1",
        }
        ray.init(log_to_driver=False, include_dashboard=False, runtime_env={"env_vars": env}, **options)
    try:
        remote = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=0)(fn)
        pending: list[Any] = [remote.remote(t) for t in tasks]
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            for ref in finished:
                on_done(ray.get(ref))
    finally:
        if started_here:
            ray.shutdown()
