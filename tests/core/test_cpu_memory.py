"""`cpu_memory.retain_freed_memory`: repeated CPU forward passes stop page-faulting their activations.

Checked by behaviour, not by the call: a child process counts its minor page faults over repeated
forward passes of a small conv net, once with malloc left alone (the opt-out variable) and once
after `resolve_device("cpu")`, which is where every command turns the setting on.
"""

import json
import os
import platform
import subprocess
import sys

import pytest

CHILD = r"""
import json, resource, sys, torch
torch.set_num_threads(1)
from flatness.core.devices import resolve_device
from flatness.core.cpu_memory import retain_freed_memory
device = resolve_device("cpu")
from flatness.models.registry import build_from_spec, model_spec
net = build_from_spec(model_spec("convnet", 1, 8, 10)).eval()  # the default digits model
x = torch.randn(1000, 1, 8, 8)  # activations of 4-8 MiB, as in a 1000-image surface point
with torch.no_grad():
    for _ in range(10):
        net(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        net(x)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
print(json.dumps({"applied": retain_freed_memory(), "faults_per_pass": faults}))
"""


def run_child(allocator_env):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("FLATNESS_CPU_ALLOCATOR", None)
    if allocator_env is not None:
        env["FLATNESS_CPU_ALLOCATOR"] = allocator_env
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the allocator setting is glibc-only; elsewhere it is a documented no-op",
)
def test_cpu_device_keeps_freed_memory_and_stops_page_faults():
    default = run_child("default")
    tuned = run_child(None)
    assert default["applied"] is False and tuned["applied"] is True
    # Under glibc's defaults each pass faults its activations in again (4 KiB pages: thousands);
    # with the thresholds raised, the pages are reused.
    # (measured: 1,200-4,100 against 0-200 per pass over 20 passes, after 10 warm-up passes)
    assert default["faults_per_pass"] > 500, default
    assert tuned["faults_per_pass"] < 0.1 * default["faults_per_pass"], (default, tuned)


def test_cuda_device_leaves_malloc_alone(monkeypatch):
    """Only a CPU device turns the setting on (a CUDA run keeps the C library's defaults)."""
    import torch

    from flatness.core import cpu_memory, devices

    calls = []
    monkeypatch.setattr(devices, "retain_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("cuda").type == "cuda"
    assert calls == []
    assert devices.resolve_device("cpu").type == "cpu"
    assert calls == [1]
    assert cpu_memory.ENV_SWITCH == "FLATNESS_CPU_ALLOCATOR"
