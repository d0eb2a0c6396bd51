"""Run a function on N gloo ranks (CPU processes), the way torchrun would, and collect results."""

from flatness.core.distributed import spawn_local


def run_ranks(fn, world=2, *args):
    """fn(*args) on `world` ranks of one thread each; the list of each rank's return value."""
    return spawn_local(fn, world, *args, threads=1)
