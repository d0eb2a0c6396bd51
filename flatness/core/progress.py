"""The one way long loops show progress: a tqdm bar that a ``progress=False`` call keeps silent."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(enabled: bool, total: int, desc: str, unit: str = "it", leave: bool = False):
    """A tqdm bar over ``total`` steps (a no-op bar when not ``enabled``); use it as a context manager."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=leave, dynamic_ncols=True)
