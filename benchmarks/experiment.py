"""Wall time of ``flatness experiment`` (the default study, MNIST-1D) on 1 and on 2 local workers.

Each setting runs the whole command in a fresh folder, as a user would (the command's start-up
included), then the two ``comparison.json`` are checked to hold the same numbers
(``scripts/same_results.py``). Goal on a 2-core machine: 2 workers <= 0.6x the time of one process.

    python benchmarks/experiment.py                   # the default study (about 1.5 minutes for 1 worker)
    python benchmarks/experiment.py --keep /tmp/exp   # keep the two study folders there
    python benchmarks/experiment.py --quick           # the --quick study (a smoke test of this script)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed_study(out: str, workers: int, quick: bool) -> float:
    """Run ``flatness experiment`` into ``out`` with ``workers`` workers; returns its wall seconds."""
    command = [sys.executable, "-m", "flatness.cli", "experiment", "--out", out, "--workers", str(workers)]
    command += ["--no-progress"] + (["--quick"] if quick else [])
    began = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default=None, help="a folder to keep the two studies in (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="the --quick study instead of the default one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or scratch
        folders = {workers: os.path.join(root, f"workers-{workers}") for workers in (1, 2)}
        seconds = {workers: timed_study(folder, workers, args.quick) for workers, folder in folders.items()}
        same = subprocess.run(
            [sys.executable, os.path.join(ROOT, "scripts", "same_results.py")]
            + [os.path.join(folders[w], "comparison.json") for w in (1, 2)],
            capture_output=True,
            text=True,
        )
    for workers, wall in seconds.items():
        print(f"{workers} worker(s): {wall:6.1f} s")
    print(f"2 workers / 1 worker: {seconds[2] / seconds[1]:.2f}x the time (goal <= 0.6x)")
    print(f"same results: {'yes' if same.returncode == 0 else 'NO'} ({same.stdout.strip().splitlines()[:1]})")
    print(f"(os.cpu_count() = {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}: other processes slow every row)")


if __name__ == "__main__":
    main()
