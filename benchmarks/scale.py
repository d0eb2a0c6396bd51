"""Scaling over torch.distributed ranks on the CPU: 2 gloo ranks of 1 thread against 1 rank of 1 thread.

Two workloads, each timed inside the ranks (start-up excluded), on the default convnet and digits:
  * surface: an 11x11 random filter-normalised surface on 1000 training images (grid points split
    across ranks);
  * HVP: 20 Hessian-vector products over 1000 training images in batches of 100 (probe batches
    sharded across ranks, one all-reduce per product).
Goal: at least 1.8x with 2 ranks. Needs 2 free cores. Usage: python benchmarks/scale.py
"""

import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

from flatness import distributed  # noqa: E402


def make_checkpoint(folder):
    from conftest import quick_digits_checkpoint

    return quick_digits_checkpoint(os.path.join(folder, "convnet.pt"), steps=100)


def surface_job(checkpoint, out, grid):
    from flatness.landscape.compute import compute_surface

    distributed.barrier()
    summary = compute_surface(
        checkpoint, out, x=(-1, 1, grid), y=(-1, 1, grid), samples=1000, batch_size=1000, device="cpu", progress=False
    )
    return summary["seconds"]


def hvp_job(checkpoint, count):
    from flatness.data.probe_data import load_probe_data
    from flatness.formats.checkpoint import load_checkpoint
    from flatness.hessian import HessianOperator

    model, _ = load_checkpoint(checkpoint)
    data = load_probe_data("digits", "train", 1000, 100).shard(distributed.rank(), distributed.world_size())
    op = HessianOperator(model, data)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
    op.matvec(v)  # warm-up
    distributed.barrier()
    start = time.perf_counter()
    for _ in range(count):
        v = op.matvec(v)
        v = v / v.norm()
    return time.perf_counter() - start


def main():
    grid, hvps = 11, 20
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(tmp)
        rows = []
        one = distributed.spawn_local(surface_job, 1, ckpt, os.path.join(tmp, "s1.h5"), grid)[0]
        two = distributed.spawn_local(surface_job, 2, ckpt, os.path.join(tmp, "s2.h5"), grid)[0]
        rows.append((f"surface {grid}x{grid}, 1000 images", one, two))
        one = distributed.spawn_local(hvp_job, 1, ckpt, hvps)[0]
        two = max(distributed.spawn_local(hvp_job, 2, ckpt, hvps))
        rows.append((f"{hvps} HVPs, 1000 images in 10 batches", one, two))
    print(f"CPU cores: {os.cpu_count()}; torch {torch.__version__}; every rank 1 thread (gloo)")
    print(f"{'workload':40} {'1 rank s':>9} {'2 ranks s':>10} {'speed-up':>9}  goal >= 1.8x")
    for name, one, two in rows:
        print(f"{name:40} {one:9.2f} {two:10.2f} {one / two:8.2f}x  {'ok' if one / two >= 1.8 else 'MISSED'}")


if __name__ == "__main__":
    main()
