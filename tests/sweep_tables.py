"""Sweep cell tables written by hand for the tests of ``flatness correlate``: the library's
(sweep/test_correlate.py) and the command's (cli/test_correlate.py); importable by name, as tests/ is on the path."""

from flatness.sweep.cells import write_table


def write_stop_sweep(folder, reached_fn):
    """12 cells where lambda_1 ranks the gap perfectly among the cells that reached the stop loss and
    backwards among those that did not (so including them must change τ)."""
    records = []
    for i in range(12):
        a, seed = i % 3 + 1, i // 3
        reached = reached_fn(i)
        gap = float(i) if reached else 100.0 + i
        records.append(
            {
                "cell": f"c{i}",
                "params": {"method": "erm", "a": a},
                "seed": seed,
                "train_acc": 100.0,
                "test_acc": 100.0 - gap,
                "gap": gap,
                "test_error": gap,
                "stopped_epoch": 40 if reached else 200,
                "reached_stop_loss": reached,
                "status": "done",
                "measures": {"lambda_1": float(i) if reached else -float(i), "weight_norm": 1.0 + i % 2},
            }
        )
    write_table(str(folder), records, ["a"])
