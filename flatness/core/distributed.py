"""torch.distributed glue, used the same way by training, the Hessian and surfaces.

Launch with ``torchrun --nproc_per_node=N -m flatness.cli COMMAND ...``: every rank runs the same
command; ``init_from_env`` joins the process group torchrun describes (gloo on CPU, NCCL on GPU).
Without torchrun everything here degrades to single-process no-ops, so library code calls these
helpers unconditionally.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

T = TypeVar("T")


def is_distributed() -> bool:
    """True when a process group with more than one rank is running (else every call is local)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the process group (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of ranks (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the rank that writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when torchrun's environment asks for more than one process (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device, timeout_s: float = 600.0) -> bool:
    """Join the process group that torchrun's environment describes; return True when distributed.

    The backend follows the device: NCCL for CUDA, gloo for CPU. Each CUDA rank takes the GPU of its
    LOCAL_RANK. A rank that dies makes the others fail at their next collective (after ``timeout_s``),
    so a run fails cleanly instead of hanging forever.
    """
    if not launched_by_torchrun():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def local_device(device: torch.device) -> torch.device:
    """The device this rank computes on: its own GPU under torchrun, else ``device`` unchanged."""
    if device.type == "cuda" and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard(items: Sequence[T], rank_: int = None, world: int = None) -> list[T]:
    """This rank's share of ``items``: every world-th item starting at its rank (round robin)."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    return list(items[rank_::world])


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op when not distributed)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s ``obj`` on every rank (for small plain data: configs, grid plans)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    """Wait for every rank (nothing to wait for when not distributed)."""
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group if one was joined, so that the process can exit cleanly."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _spawn_entry(rank_: int, world: int, port: int, fn, args, out_dir: str, threads: int) -> None:
    os.environ.update(
        {
            "WORLD_SIZE": str(world),
            "RANK": str(rank_),
            "LOCAL_RANK": str(rank_),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(threads)
    init_from_env(torch.device("cpu"), timeout_s=300)
    try:
        torch.save(fn(*args), os.path.join(out_dir, f"rank{rank_}.pt"))
    finally:
        shutdown()


def spawn_local(fn, world: int, *args, threads: int = 1) -> list:
    """Run ``fn(*args)`` on ``world`` local CPU processes joined by gloo (what torchrun does).

    For tests, benchmarks and notebooks; ``fn`` must be picklable (a module-level function) and its
    result ``torch.save``-able.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_spawn_entry, args=(world, port, fn, args, out_dir, threads), nprocs=world, join=True)
        # our own files, written just above by our own processes: full unpickling is safe here
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]
