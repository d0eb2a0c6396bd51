"""The one way long jobs show progress: their planned size first, then a tqdm bar.

``show_plan`` prints the size before the first step; ``progress_bar`` is a bar that ``progress=False`` keeps silent.
"""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(enabled: bool, total: int, desc: str, unit: str = "it", leave: bool = False):
    """A tqdm bar over ``total`` steps (a no-op bar when not ``enabled``); use it as a context manager."""
    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=leave, dynamic_ncols=True)


def plan_line(command: str, *parts: str) -> str:
    """The line a long job prints before its first step: ``Plan: COMMAND: PART, PART, ...`` (empty parts left out).

    Args:
        command: the job (``train``, ``surface``, ``probe``, ``sweep``).
        *parts: its sizes in words, e.g. ``"3 epochs (1-3)"``, ``"17 steps of 64 examples each"``.

    Returns:
        The line.
    """
    return f"Plan: {command}: " + ", ".join(p for p in parts if p)


def show_plan(enabled: bool, command: str, *parts: str) -> None:
    """Print ``plan_line`` (when ``enabled``: a job that shows progress), above any progress bar."""
    if enabled:
        tqdm.write(plan_line(command, *parts))
