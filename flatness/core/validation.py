"""Checks of option values shared by every command.

Each command refuses a bad value before its first step and in the same words: counts are whole numbers
>= their minimum (0 is an error, never "the default"), seeds fit the 64 bits that PyTorch's generators
take.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from flatness.core.errors import FlatnessError

# torch.manual_seed and torch.Generator.manual_seed take any integer in [-2**63, 2**64).
SEED_MIN = -(2**63)
SEED_MAX = 2**64 - 1


def check_seed(value: Any, label: str = "--seed") -> int:
    """A seed PyTorch can take.

    Args:
        value: the seed given.
        label: the option name for the message.

    Returns:
        The seed as an int.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not SEED_MIN <= value <= SEED_MAX:
        raise FlatnessError(f"{label} must be a whole number from {SEED_MIN} to {SEED_MAX}, got {value!r}")
    return int(value)


# A count beyond the native index size cannot address anything (itertools, numpy and h5py refuse it
# with internal errors), whatever the data: it is refused here with the option's name.
COUNT_MAX = sys.maxsize


def check_count(value: Any, label: str, minimum: int = 1, maximum: int | None = COUNT_MAX) -> int:
    """A whole number of things (examples, points, steps) within [minimum, maximum].

    Args:
        value: the value given.
        label: the option name for the message.
        minimum: the least value allowed.
        maximum: the largest value allowed (default: the native index size; None: no bound).

    Returns:
        The count as an int.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise FlatnessError(f"{label} must be >= {minimum} (a whole number), got {value!r}")
    if maximum is not None and value > maximum:
        raise FlatnessError(f"{label} must be at most {maximum}, got {value}")
    return int(value)


def parse_samples(value: Any, label: str = "--samples") -> int | None:
    """A number of probe examples: a whole number >= 1, or ``"all"`` (None: every example).

    Args:
        value: an int, a string of digits, ``"all"`` or None (every example).
        label: the option name for the message.

    Returns:
        The count, or None for all examples.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "all"):
        return None
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise FlatnessError(f"{label} must be a whole number >= 1 or 'all', got {value!r}") from None
    return check_count(value, label)


def check_number(value: Any, label: str, positive: bool = True) -> float:
    """A finite real number, > 0 (``positive``) or >= 0.

    Args:
        value: the value given.
        label: the option name for the message.
        positive: whether 0 is refused too.

    Returns:
        The number as a float.
    """
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (value > 0 if positive else value >= 0):
        raise FlatnessError(f"{label} must be a finite number {'>' if positive else '>='} 0, got {value!r}")
    return float(value)
