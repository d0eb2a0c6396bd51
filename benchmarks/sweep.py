"""Cells per minute of ``flatness sweep`` with 1 and 2 local workers and with a local Ray instance.

The same cells every time (a fresh folder per engine), so the ratios compare engines only. Goals on a
2-core machine: 2 workers >= 1.8x one; Ray >= 0.9x local processes with the same worker count.

    python benchmarks/sweep.py            # 8 quick cells on digits (about a minute per engine)
    python benchmarks/sweep.py --full     # 16 MNIST-1D cells of the default sweep's size
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time

from flatness.sweep.run import SweepSettings, run_sweep

QUICK = dict(grid="method=erm,sam lr=0.02,0.1 weight_decay=0,0.0005", seeds="0", dataset="digits", quick=True)
FULL = dict(grid="method=erm,sam lr=0.05,0.2 batch_size=32,128", seeds="0,1")


def cells_per_minute(options, workers: int, engine: str) -> float:
    with tempfile.TemporaryDirectory() as root:
        began = time.perf_counter()
        result = run_sweep(
            SweepSettings(out=os.path.join(root, "sweep"), workers=workers, engine=engine, progress=False, **options),
            echo=None,
        )
        seconds = time.perf_counter() - began
    return 60.0 * result["ran"] / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the default sweep's cell size (MNIST-1D, 60 epochs)")
    args = parser.parse_args()
    options = FULL if args.full else QUICK
    rates = {"local x1": cells_per_minute(options, 1, "local"), "local x2": cells_per_minute(options, 2, "local")}
    if importlib.util.find_spec("ray") is not None:
        rates["ray x2"] = cells_per_minute(options, 2, "ray")
    for name, rate in rates.items():
        print(f"{name:>9}: {rate:6.2f} cells/min")
    print(f"2 workers / 1 worker: {rates['local x2'] / rates['local x1']:.2f}x (goal >= 1.8x)")
    if "ray x2" in rates:
        print(f"Ray / local (2 workers): {rates['ray x2'] / rates['local x2']:.2f}x (goal >= 0.9x)")
    print(
        f"(os.cpu_count() = {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; "
        "other processes on the machine lower every figure)"
    )


if __name__ == "__main__":
    main()
