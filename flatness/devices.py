"""Device selection shared by every command (`--device auto|cpu|cuda|cuda:N`)."""
import torch

from .errors import FlatnessError


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a user's device string into a torch.device; `auto` picks CUDA when present."""
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
