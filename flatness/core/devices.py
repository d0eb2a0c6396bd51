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


def describe_runtime() -> str:
    """One line naming the torch build and the device ``--device auto`` would use (``flatness --version``).

    Returns:
        e.g. ``torch 2.4.1+cpu, device cpu (no CUDA)`` or ``torch 2.4.1, device cuda:0 (NVIDIA H100, CUDA 12.4)``.
    """
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        where = f"device cuda:{index} ({torch.cuda.get_device_name(index)}, CUDA {torch.version.cuda})"
    else:
        where = "device cpu (no CUDA)" if torch.version.cuda is None else "device cpu (CUDA build, no GPU found)"
    return f"torch {torch.__version__}, {where}"
