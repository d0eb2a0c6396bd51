"""Options gathered into one settings object: a command receives ``settings``, not one parameter per option.

A command's options named after the fields of its settings class (``ProbeSettings``, ``SurfaceSettings``)
are taken out of the keyword arguments click passes and handed over as one ``settings`` argument; the
library checks them (``settings.checked()``), never the command.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import click


def into_settings(cls: type, **nested: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a click command so that its options named after ``cls``'s fields arrive as ``settings``.

    Args:
        cls: the settings dataclass; an option whose parameter name is one of its fields goes into it.
        nested: field name -> dataclass of a nested settings field (``sharpness=SharpnessSettings``):
            options named after its fields (not already ``cls``'s) build that field.

    Returns:
        The decorator; the command function is called with ``settings=cls(...)`` and the other options.
    """
    own = [f.name for f in dataclasses.fields(cls) if f.name not in nested]

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def command(**options: Any) -> Any:
            values = {name: options.pop(name) for name in own if name in options}
            for name, inner in nested.items():
                fields = [f.name for f in dataclasses.fields(inner) if f.name not in own]
                values[name] = inner(**{f: options.pop(f) for f in fields if f in options})
            return function(settings=cls(**values), **options)

        return command

    return decorate


def quiet_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--quiet``: no progress bars (the settings' ``progress`` is False)."""
    return click.option("--quiet", "progress", is_flag=True, flag_value=False, default=True, help="No progress bars.")(
        function
    )
