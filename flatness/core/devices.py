"""Device selection shared by every command (`--device auto|cpu|cuda|cuda:N`)."""

import torch

from flatness.core.cpu_memory import retain_freed_memory
from flatness.core.errors import FlatnessError


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a user's device string into a torch.device; `auto` picks CUDA when present.

    Choosing the CPU also keeps freed tensor memory in the process (`cpu_memory`): without it every
    repeated forward pass page-faults its activations in again, about a quarter of its time.
    """
    device = _parse_device(name)
    if device.type == "cpu":
        retain_freed_memory()
    return device


def _parse_device(name: str) -> torch.device:
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise FlatnessError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FlatnessError(f"device {name!r} asked for, but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise FlatnessError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    return device
