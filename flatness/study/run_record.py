"""``RunRecord``: one trained run (one method, one seed) and what was measured on it.

Read by ``flatness.study.runs``, measured by ``flatness.study.quantities``; a module of its own so that
neither needs the other for the type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RunRecord:
    """One trained run (one method, one seed) and what was measured on it."""

    source: str
    method: str
    seed: int | None = None
    run_dir: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    probe: dict[str, Any] | None = None
    probe_path: str | None = None
    surfaces: list[str] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The run as tables and legends name it, e.g. ``AMP seed 1`` (just ``AMP`` without a seed)."""
        return f"{self.method.upper()}" + (f" seed {self.seed}" if self.seed is not None else "")
