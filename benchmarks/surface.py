"""Benchmark: a 21x21 loss surface of the default convnet on 1000 digits training images.

Compares, on the same model and data (one batch of 1000 images, eval mode):

* floor            441 x one forward pass over the 1000 images (nothing else)
* flatness         ``flatness.landscape.compute.compute_surface`` (grid time, i.e. the file's ``seconds``;
                   and the whole call, start-up and file writing included); and with
                   ``channels_last=True`` (``--channels-last``: NHWC layout, same values to ~1e-6)
* plain loop       per point: deepcopy the model, add a·x + b·y to its parameters, ``evaluate``
* loss-landscapes  the ``loss-landscapes`` package's ``random_plane`` (steps=21, filter
                   normalisation) with its ``Loss`` metric, as documented (no ``no_grad``), and
                   the same call wrapped in ``torch.no_grad()``

Usage:  .venv/bin/python benchmarks/surface.py [--threads 1] [--rounds 3] [--allocator both|tuned|default]

On the CPU flatness keeps freed memory in the process (``flatness.core.cpu_memory``: glibc's mmap and trim
thresholds raised), which makes every forward pass ~25% cheaper; the floor and loss-landscapes gain
from it just as much when they run in such a process. So every row is measured twice, in two
processes: once with malloc as shipped (flatness not tuning either) and once tuned for all.

loss-landscapes is not a project dependency; it is installed on first use with
``pip install --no-deps --target .bench/ll loss-landscapes`` (skipped, and said so, if that fails).
Other processes may share the CPU: the floor is measured before and after the others, and every
row is reported as a ratio to the mean floor.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, ".bench", "surface")
LL_DIR = os.path.join(ROOT, ".bench", "ll")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
GRID = 21
SAMPLES = 1000


def import_loss_landscapes():
    if not os.path.isdir(os.path.join(LL_DIR, "loss_landscapes")):
        try:
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", LL_DIR, "loss-landscapes"],
                check=True,
                timeout=300,
            )
        except (subprocess.SubprocessError, OSError) as err:
            print(f"loss-landscapes could not be installed ({err}); its rows are skipped")
            return None
    sys.path.insert(0, LL_DIR)
    try:
        import loss_landscapes
        import loss_landscapes.metrics

        return loss_landscapes
    except Exception as err:  # an old package against a new torch/numpy
        print(f"loss-landscapes does not import ({type(err).__name__}: {err}); its rows are skipped")
        return None


def timed(fn, *args, **kwargs):
    """Time one call of ``fn(*args, **kwargs)``.

    Args:
        fn: the callable timed; its arguments are passed here, not captured, so that a call made
            inside a loop sees that round's values.
        *args: positional arguments of ``fn``.
        **kwargs: keyword arguments of ``fn``.

    Returns:
        (wall seconds, result); the process CPU time of the same call is left in ``timed.cpu``.
    """
    start, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    timed.cpu = time.process_time() - cpu
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads for every row (default 1)")
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run every row this many times, interleaved, and keep each row's fastest"
    )
    parser.add_argument(
        "--allocator",
        choices=("both", "tuned", "default"),
        default="both",
        help="tuned: glibc keeps freed memory (what flatness does on the CPU, flatness.core.cpu_memory) "
        "for every row; default: malloc as the C library ships it, for every row, flatness "
        "included; both (default): each in its own process, one after the other",
    )
    args = parser.parse_args()
    if args.allocator == "both":
        # The allocator setting is per process and cannot be undone: one child process per setting.
        for mode in ("default", "tuned"):
            subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--allocator", mode], check=True)
        return
    from flatness.core.cpu_memory import ENV_SWITCH, retain_freed_memory

    if args.allocator == "default":
        os.environ[ENV_SWITCH] = "default"  # read at flatness's first CPU device: no row tunes malloc
    elif not retain_freed_memory():
        print("glibc's mallopt is not available here: the 'tuned' rows run with the default allocator")
    torch.set_num_threads(args.threads)
    os.makedirs(BENCH, exist_ok=True)

    from flatness.core.evaluation import evaluate
    from flatness.data.probe_data import load_probe_data
    from flatness.formats.checkpoint import load_checkpoint
    from flatness.landscape.compute import compute_surface
    from flatness.landscape.directions import random_directions

    ckpt = os.path.join(BENCH, "convnet.pt")
    if not os.path.exists(ckpt):  # the digits convnet after 100 SGD steps, as the tests make it
        from conftest import quick_digits_checkpoint

        quick_digits_checkpoint(ckpt, steps=100)
    model, _ = load_checkpoint(ckpt)
    data = load_probe_data("digits", "train", SAMPLES, SAMPLES)
    x_all, y_all = data.batches[0]
    points = GRID * GRID
    best = {}

    def record(name, seconds, cpu):
        """Keep each row's fastest wall time and, separately, its smallest CPU time."""
        old_wall, old_cpu = best.get(name, (float("inf"), None))
        best[name] = (min(old_wall, seconds), cpu if old_cpu is None else min(old_cpu, cpu))

    for _ in range(args.rounds):
        rows = []

        def floor():
            with torch.no_grad():
                for _ in range(points):
                    model(x_all)

        with torch.no_grad():
            model(x_all)  # warm-up
        t_floor1, _ = timed(floor)
        rows.append(("floor (441 forward passes), before", t_floor1, timed.cpu))

        out = os.path.join(BENCH, "surface.h5")
        t_call, summary = timed(
            compute_surface,
            ckpt,
            out,
            x=(-1, 1, GRID),
            y=(-1, 1, GRID),
            samples=SAMPLES,
            batch_size=SAMPLES,
            device="cpu",
            force=True,
            progress=False,
        )
        rows.append(("flatness compute_surface: grid time", summary["seconds"], summary["cpu_seconds"]))
        rows.append(("flatness compute_surface: whole call", t_call, timed.cpu))
        summary = compute_surface(
            ckpt,
            out,
            x=(-1, 1, GRID),
            y=(-1, 1, GRID),
            samples=SAMPLES,
            batch_size=SAMPLES,
            device="cpu",
            force=True,
            progress=False,
            channels_last=True,
        )
        rows.append(("flatness --channels-last: grid time", summary["seconds"], summary["cpu_seconds"]))

        if not args.skip_plain:
            dx, dy = random_directions(model, 2, seed=0)
            coords = torch.linspace(-1, 1, GRID).tolist()

            # The loop's values come in as arguments so that the timed call sees this round's.
            def plain(coords, dx, dy):
                out_values = []
                for a in coords:
                    for b in coords:
                        m = copy.deepcopy(model)
                        with torch.no_grad():
                            for name, p in m.named_parameters():
                                p.add_(a * dx[name] + b * dy[name])
                        out_values.append(evaluate(m, data))
                return out_values

            t_plain, _ = timed(plain, coords, dx, dy)
            rows.append(("plain loop (deepcopy + add + evaluate)", t_plain, timed.cpu))

        ll = import_loss_landscapes()
        if ll is not None:
            metric = ll.metrics.Loss(torch.nn.CrossEntropyLoss(), x_all, y_all)
            model.eval()
            try:
                t_ll, _ = timed(
                    ll.random_plane, model, metric, distance=1, steps=GRID, normalization="filter", deepcopy_model=True
                )
                rows.append(("loss-landscapes random_plane (as documented)", t_ll, timed.cpu))

                def ll_nograd(ll, metric):
                    with torch.no_grad():
                        return ll.random_plane(
                            model, metric, distance=1, steps=GRID, normalization="filter", deepcopy_model=True
                        )

                t_ll2, _ = timed(ll_nograd, ll, metric)
                rows.append(("loss-landscapes random_plane under no_grad", t_ll2, timed.cpu))
            except Exception as err:
                print(f"loss-landscapes random_plane failed ({type(err).__name__}: {err}); its rows are skipped")

        t_floor2, _ = timed(floor)
        rows.append(("floor (441 forward passes), after", t_floor2, timed.cpu))
        for name, seconds, cpu in rows:
            record(name, seconds, cpu)
    rows = [(name, seconds, cpu) for name, (seconds, cpu) in best.items()]
    floor_mean = (best["floor (441 forward passes), before"][0] + best["floor (441 forward passes), after"][0]) / 2
    cpu_floor = (best["floor (441 forward passes), before"][1] + best["floor (441 forward passes), after"][1]) / 2
    print(
        f"\n21x21 surface, convnet, {SAMPLES} digits training images in one batch, CPU, "
        f"{args.threads} torch thread(s), torch {torch.__version__}, "
        f"fastest of {args.rounds} interleaved round(s), allocator: {args.allocator}"
    )
    print("wall = elapsed seconds; cpu = this process's CPU seconds (less disturbed by other processes)")
    print(f"{'method':46s} {'wall s':>7s} {'pts/s':>6s} {'x floor':>7s} {'cpu s':>7s} {'x floor':>7s}")
    for name, seconds, cpu in rows:
        cpu_cols = f"{cpu:7.2f} {cpu / cpu_floor:7.2f}" if cpu is not None else f"{'':7s} {'':7s}"
        print(f"{name:46s} {seconds:7.2f} {points / seconds:6.1f} {seconds / floor_mean:7.2f} {cpu_cols}")


if __name__ == "__main__":
    main()
