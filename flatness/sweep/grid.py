"""The sweep's grid: ``"KEY=V1,V2 KEY=V1,V2"`` parsed and expanded into cells.

Keys are ``TrainConfig`` fields (``GRID_KEYS``). A key that only one method reads (``METHOD_KEYS``:
AMP's epsilon, inner_lr, inner_iter, ball; SAM's rho, adaptive) multiplies that method's cells only,
so ERM is not trained once per ε. The cells are the Cartesian product, per method, of the keys that
apply to it, times the seeds; their order is fixed (methods as given, then keys in ``GRID_KEYS``'s order
however they were typed, values as given, the seed last), so every process that expands one grid gets
the same list, and a grid typed with its keys in another order names the same cells.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flatness.core.errors import FlatnessError
from flatness.core.limits import check_limit
from flatness.core.validation import check_seed

#: The grid keys and how their values are read.
GRID_KEYS: dict[str, type] = {
    "method": str,
    "lr": float,
    "batch_size": int,
    "epochs": int,
    "weight_decay": float,
    "momentum": float,
    "nesterov": bool,
    "schedule": str,
    "grad_clip": float,
    "width": int,
    "depth": int,
    "augment": bool,
    "epsilon": float,
    "inner_lr": float,
    "inner_iter": int,
    "ball": str,
    "rho": float,
    "adaptive": bool,
}
#: Keys read by one method only.
METHOD_KEYS = {"epsilon": "amp", "inner_lr": "amp", "inner_iter": "amp", "ball": "amp", "rho": "sam", "adaptive": "sam"}
_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its hyperparameters (the keys that apply to its method) and seed."""

    params: tuple[tuple[str, Any], ...]
    seed: int

    @property
    def values(self) -> dict[str, Any]:
        """The hyperparameters as a dict."""
        return dict(self.params)

    @property
    def name(self) -> str:
        """The cell's folder name: ``key-value`` pairs and the seed, e.g. ``method-amp_lr-0.1_seed-0``.

        A name longer than ``MAX_NAME_BYTES`` (many keys, long values) keeps its head and replaces
        the tail by a hash of the whole name: a file name has at most 255 bytes, and the cell's lock
        file adds to it.
        """
        parts = [f"{k}-{_text(v)}" for k, v in self.params] + [f"seed-{self.seed}"]
        return bounded_name("_".join(parts))


#: The longest cell folder name, in UTF-8 bytes (file systems allow 255; the lock file adds ~12).
MAX_NAME_BYTES = 160
_HASH_CHARS = 16


def bounded_name(name: str, limit: int = MAX_NAME_BYTES) -> str:
    """``name`` if it fits in ``limit`` UTF-8 bytes, else its head, ``-h``, and 16 hex digits of its sha256."""
    data = name.encode("utf-8")
    if len(data) <= limit:
        return name
    head = data[: limit - _HASH_CHARS - 2].decode("utf-8", errors="ignore")
    return f"{head}-h{hashlib.sha256(data).hexdigest()[:_HASH_CHARS]}"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _parse_value(key: str, text: str) -> Any:
    kind = GRID_KEYS[key]
    if kind is bool:
        low = text.lower()
        if low not in _TRUE + _FALSE:
            raise FlatnessError(f"grid key {key} takes true or false, got {text!r}")
        return low in _TRUE
    if kind is str:
        return text.lower()
    try:
        value = kind(text)
    except ValueError:
        raise FlatnessError(f"grid key {key} takes {'integers' if kind is int else 'numbers'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise FlatnessError(f"grid key {key} takes finite numbers, got {text!r}")
    return value


def parse_grid(text: str | None) -> dict[str, list[Any]]:
    """``"KEY=V1,V2 KEY=V1"`` as {key: [values]}, keys in ``GRID_KEYS``'s order, values as typed.

    Args:
        text: the grid as typed; None or blank gives an empty grid.

    Returns:
        The keys and their values; raises FlatnessError (one line) for an unknown key, a value of the
        wrong type, a key given twice, a repeated value or a key without values.
    """
    grid: dict[str, list[Any]] = {}
    for item in (text or "").split():
        key, sep, values = item.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep or not key:
            raise FlatnessError(f"grid entries look like KEY=V1,V2; got {item!r}")
        if key not in GRID_KEYS:
            raise FlatnessError(f"unknown grid key {key!r}; known: {', '.join(GRID_KEYS)}")
        if key in grid:
            raise FlatnessError(f"grid key {key} is given twice")
        parsed = [_parse_value(key, v.strip()) for v in values.split(",") if v.strip()]
        if not parsed:
            raise FlatnessError(f"grid key {key} has no values")
        if len({repr(v) for v in parsed}) != len(parsed):
            raise FlatnessError(f"grid key {key} repeats a value")
        grid[key] = parsed
    # One grid, one set of cell names: keys in GRID_KEYS's order whatever order they were typed in
    # (a folder name lists them in this order; typed orders would name every cell anew on a rerun).
    return {k: grid[k] for k in GRID_KEYS if k in grid}


def parse_seeds(text: Any) -> list[int]:
    """``"0,1,2"`` (or a sequence of ints) as a list of distinct valid seeds."""
    parts = [p.strip() for p in text.split(",") if p.strip()] if isinstance(text, str) else list(text)
    try:
        seeds = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise FlatnessError(f"--seeds takes integers separated by commas, got {text!r}") from None
    if not seeds:
        raise FlatnessError("--seeds is empty")
    if len(set(seeds)) != len(seeds):
        raise FlatnessError("--seeds repeats a value")
    check_limit(len(seeds), "seeds", "the number of --seeds")
    return [check_seed(s, "--seeds") for s in seeds]


def expand(grid: dict[str, list[Any]], seeds: Sequence[int]) -> list[Cell]:
    """The cells of ``grid`` x ``seeds``, method-specific keys applied to their method only.

    Args:
        grid: from ``parse_grid`` (no ``method`` key: ERM only).
        seeds: the seeds.

    Returns:
        The cells in their fixed order; raises FlatnessError when a method-specific key has no cell
        of its method to apply to, or when the grid is empty.
    """
    methods = grid.get("method", ["erm"])
    for key, method in METHOD_KEYS.items():
        if key in grid and method not in methods:
            raise FlatnessError(f"grid key {key} applies only to {method} cells, and the grid has no method={method}")
    # counted before any cell is made: a 10^6-cell grid is refused at once, not after its validation
    count = len(seeds) * sum(
        math.prod(len(grid[k]) for k in grid if k != "method" and METHOD_KEYS.get(k, m) == m) for m in methods
    )
    check_limit(count, "cells", "the grid's number of cells")
    cells = []
    for method in methods:
        keys = [k for k in grid if k != "method" and METHOD_KEYS.get(k, method) == method]
        for combo in itertools.product(*(grid[k] for k in keys)):
            params = ((("method", method),) if "method" in grid else ()) + tuple(zip(keys, combo))
            cells.extend(Cell(params, seed) for seed in seeds)
    if not cells:
        raise FlatnessError("the grid is empty: nothing to run")
    return cells


def varied_keys(cells: Sequence[Cell]) -> list[str]:
    """The grid keys that take at least two values over the cells (the cells.csv's hyperparameter columns).

    A method-specific key with one value varies only with the method, so it is no column of its own.
    """
    order: list[str] = []
    for cell in cells:
        order.extend(k for k, _ in cell.params if k not in order)
    return [k for k in order if len({repr(c.values[k]) for c in cells if k in c.values}) >= 2]
