"""Where independent tasks run: ``local`` worker processes on this machine, or ``ray`` tasks.

Both engines take a list of tasks (a sweep's ``CellTask``s, or any picklable task with a module-level
function, e.g. the experiment's steps), run ``fn(task)`` for each, and call ``on_done(result)`` in the
parent as each task finishes (in completion order). The tasks decide nothing about the engine, so the
numbers are the same whichever engine runs them, and in whichever order. One engine call is one job
with one pool of workers, however many tasks it ends up running:

* **Longest first.** At most one task per worker is in flight; a free worker gets the ready task of
  the largest ``cost(task)`` (ties: in the order given). The long tasks then start early and the short
  ones fill the end, instead of one long task running alone while the other workers idle.
* **Follow-ups.** ``on_done`` may return tasks that could not start before (a surface that needs its
  run's checkpoint): they join the ready tasks at once, in the same pool. The freed worker gets its next
  task before ``on_done`` runs, so the parent's bookkeeping never leaves a worker idle; follow-ups
  compete for the next free worker.
* **Failure.** A task's exception is raised in the parent; no further task starts, and the call returns
  only once the tasks already running have ended (their partial outputs stay resumable).

Engines:

* ``local``: with one worker (or one task to start with) everything runs in this process; with more, a
  pool of spawned processes (spawn, not fork: a forked copy of a process that has started torch's
  thread pools can hang). Each worker asks the kernel to kill it when the parent dies (Linux), so a
  killed job leaves no worker running on.
* ``ray``: each task a Ray task requesting one CPU (and one GPU when the device is CUDA), on the cluster
  at ``address`` or on a local instance of ``workers`` CPUs; as many in flight as the cluster has CPUs
  (GPUs). Ray is an optional extra.
"""

from __future__ import annotations

import ctypes
import importlib.util
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

import torch

from flatness.core.errors import FlatnessError
from flatness.core.validation import check_count

ENGINES = ("local", "ray")
MAX_WORKERS = 4096  # more processes than any machine runs at once is a typo
MAX_THREADS = 4096  # torch.set_num_threads overflows on absurd values; no machine has this many cores
RAY_MISSING = "--engine ray needs Ray, which is not installed: pip install 'flatness[ray]'"
# on_done(result) may return follow-up tasks (None: none).
OnDone = Callable[[Any], Iterable[Any] | None]
TaskFn = Callable[[Any], Any]
Cost = Callable[[Any], Any]


def check_engine(engine: str) -> None:
    """Refuse an unknown engine, or Ray when it is not installed (before anything starts)."""
    if engine not in ENGINES:
        raise FlatnessError(f"unknown engine {engine!r}; use local or ray")
    if engine == "ray":
        if importlib.util.find_spec("ray") is None:
            raise FlatnessError(RAY_MISSING)


def default_workers(workers: int | None, device: str | None = None) -> int:
    """How many tasks run at once: ``workers`` as given (checked), else one per CPU core.

    Args:
        workers: the ``--workers`` option (None: the default).
        device: where each task computes; on a GPU (``cuda...``, or ``auto`` with CUDA present) the
            default is 1, the tasks' work being on the one GPU. None: the cores whatever the device
            (a sweep's cells, one thread each, may share a GPU).

    Returns:
        The number of workers.
    """
    if workers is not None:
        return check_count(workers, "--workers", maximum=MAX_WORKERS)
    if device is not None:
        on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if on_gpu:
            return 1
    return max(1, os.cpu_count() or 1)


def default_threads(threads: int | None, workers: int, device: str, tiny_model: bool = False) -> int | None:
    """The torch threads of each worker process: ``threads`` as given (checked), else the rule below.

    A tiny model on the CPU (``tiny_model``: MNIST-1D's and digits' default models) uses 1 thread: it
    gains nothing from more, and loses a lot on a busy machine. Several workers share the cores
    (cores // workers each, no oversubscription). Otherwise None: PyTorch's choice.

    Args:
        threads: the ``--threads`` option (None: the default).
        workers: the workers that run at once (``default_workers``).
        device: the ``--device`` option.
        tiny_model: the model is one of the tiny default ones.

    Returns:
        The threads per process, or None for PyTorch's choice.
    """
    if threads is not None:
        return check_count(threads, "--threads", maximum=MAX_THREADS)
    if tiny_model and device in ("cpu", "auto") and not torch.cuda.is_available():
        return 1
    if workers > 1:
        return max(1, (os.cpu_count() or 1) // workers)
    return None


class ReadyTasks:
    """The tasks that may start now, taken costliest first (ties: first added, first taken).

    Each task's cost is computed once, when it is added. A list scanned at each take, not a heap: the
    costs need only be comparable (numbers or tuples), and a job has at most a few hundred tasks.
    """

    def __init__(self, tasks: Iterable[Any], cost: Cost | None) -> None:
        self._cost = cost
        self._costs: list[Any] = []
        self._tasks: list[Any] = []
        self.add(tasks)

    def add(self, tasks: Iterable[Any] | None) -> None:
        """Make ``tasks`` (e.g. ``on_done``'s follow-ups; None: nothing) ready to start."""
        for task in tasks or ():
            self._costs.append(0 if self._cost is None else self._cost(task))
            self._tasks.append(task)

    def take(self) -> Any:
        """Remove and return the costliest ready task."""
        index = self._costs.index(max(self._costs))  # index(): the first of equal costs
        del self._costs[index]
        return self._tasks.pop(index)

    def __len__(self) -> int:
        return len(self._tasks)


def die_with_parent(parent_pid: int) -> None:
    """Worker initialiser: SIGKILL this worker when its parent dies (Linux prctl; elsewhere nothing).

    The death signal only covers a parent that dies after it is set, and a spawned worker reaches this
    initialiser seconds after it starts (it imports torch first). A parent killed in that window left
    the worker running on forever, blocked on a queue its siblings keep open (seen: 26 idle orphans of
    ~800 MB each after a day of crash tests). So the worker checks that its parent is still the one
    that started it, after setting the signal, and exits if not.

    Args:
        parent_pid: the pid of the process that started the pool.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


def run_local(tasks: Sequence[Any], workers: int, on_done: OnDone, fn: TaskFn, cost: Cost | None = None) -> None:
    """Run ``fn(task)`` for every task, and every follow-up, on ``workers`` local processes.

    Args:
        tasks: the tasks ready at the start (picklable).
        workers: how many at a time (1, or a single task to start with: in this process).
        on_done: called in this process with each task's result as it finishes; may return follow-up
            tasks.
        fn: a module-level function (workers import it by name): a sweep's ``run_cell``, the experiment's
            ``run_study_task``.
        cost: the expected cost of a task (larger starts first; None: in the order given).
    """
    ready = ReadyTasks(tasks, cost)
    if workers <= 1 or len(ready) <= 1:
        while ready:
            ready.add(on_done(fn(ready.take())))
        return

    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
    )
    running: set[Any] = set()

    def top_up() -> None:
        while ready and len(running) < workers:
            running.add(pool.submit(fn, ready.take()))

    try:
        top_up()
        while running:
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                result = future.result()  # a task's exception is raised here, and ends the job
                top_up()
                ready.add(on_done(result))
            top_up()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


#: How long a Ray cluster named by ``--address`` may take to accept a connection.
RAY_CONNECT_SECONDS = 15.0


def check_ray_address(address: str | None, timeout: float = RAY_CONNECT_SECONDS) -> None:
    """Fail in one line when nothing answers at a ``HOST:PORT`` (or ``ray://HOST:PORT``) address.

    ``ray.init`` waits without end for a cluster that does not answer; a TCP connection within
    ``timeout`` seconds is asked for first. ``auto``, ``local`` and None are Ray's own lookups.

    Args:
        address: the ``--address`` given.
        timeout: seconds to wait for the connection.
    """
    if not address or address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FlatnessError(f"--address {address!r}: give HOST:PORT (or ray://HOST:PORT, auto)")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        reason = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise FlatnessError(
            f"no Ray cluster answers at {address} within {timeout:g} s ({reason}); is `ray start --head` running there?"
        ) from None


def run_ray(
    tasks: Sequence[Any],
    workers: int,
    on_done: OnDone,
    fn: TaskFn,
    address: str | None = None,
    gpu: bool = False,
    cost: Cost | None = None,
) -> None:
    """Run ``fn(task)`` for every task, and every follow-up, as Ray tasks (the semantics of ``run_local``).

    Args:
        tasks: the tasks ready at the start.
        workers: CPUs of a local Ray instance (ignored when joining a cluster at ``address``).
        on_done: called in this process with each task's result as it finishes; may return follow-ups.
        fn: a module-level function.
        address: a Ray cluster's address (None: start a local instance, or join the one ``ray.init``
            finds by itself, e.g. through ``RAY_ADDRESS``).
        gpu: request one GPU per task.
        cost: the expected cost of a task (larger starts first; None: in the order given).
    """
    check_engine("ray")
    import ray  # noqa: PLC0415 - Ray is optional (flatness[ray]); only --engine ray needs it

    started_here = not ray.is_initialized()
    if started_here:
        check_ray_address(address)
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
        # As many in flight as the cluster can run at once: the rest wait here, where the costliest
        # (or a follow-up) can still be chosen, not in Ray's queue in the order submitted.
        slots = max(1, int(ray.cluster_resources().get("GPU" if gpu else "CPU", 1)))
        ready = ReadyTasks(tasks, cost)
        running: list[Any] = []
        while ready or running:
            while ready and len(running) < slots:
                running.append(remote.remote(ready.take()))
            finished, running = ray.wait(running, num_returns=1)
            for ref in finished:
                result = ray.get(ref)
                if ready and len(running) < slots:
                    running.append(remote.remote(ready.take()))
                ready.add(on_done(result))
    finally:
        if started_here:
            ray.shutdown()
