"""flatness.core.devices: what --device auto|cpu|cuda|cuda:N becomes, with CUDA's availability
monkeypatched so that the CUDA path's logic is tested on a CPU-only machine too."""

import pytest
import torch

import flatness.core.devices as devices
from flatness.core.errors import FlatnessError


@pytest.fixture
def no_memory_setting(monkeypatch):
    """Records the calls of retain_freed_memory (made for the CPU only) instead of changing the process."""
    calls = []
    monkeypatch.setattr(devices, "retain_freed_memory", lambda: calls.append(1))
    return calls


@pytest.mark.parametrize("available, expected", [(True, "cuda"), (False, "cpu")])
def test_auto_picks_cuda_exactly_when_it_is_available(monkeypatch, no_memory_setting, available, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    for name in ("auto", " AUTO ", "", None):
        assert devices.resolve_device(name) == torch.device(expected)
    assert len(no_memory_setting) == (0 if available else 4)  # freed CPU memory kept only for the CPU


def test_cuda_names_parse_when_cuda_is_there_and_are_refused_when_not(monkeypatch, no_memory_setting):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert devices.resolve_device("CUDA") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(FlatnessError, match=r"^device 'cuda:1' asked for, but CUDA is not available"):
        devices.resolve_device("cuda:1")
    assert devices.resolve_device("cpu") == torch.device("cpu") and no_memory_setting == [1]


@pytest.mark.parametrize(
    "name, message", [("gpu", "unknown device 'gpu'"), ("cuda:x", "unknown device"), ("meta", "unsupported device")]
)
def test_other_names_are_one_line_errors(no_memory_setting, name, message):
    with pytest.raises(FlatnessError, match=message) as info:
        devices.resolve_device(name)
    assert "\n" not in str(info.value) and "auto, cpu, cuda or cuda:N" in str(info.value)
