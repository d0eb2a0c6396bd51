"""Keep the memory that CPU tensors free inside the process, so repeated forward passes stop page-faulting.

Why this exists: a forward pass on the CPU allocates and frees activation tensors of several
megabytes. glibc's malloc gives such blocks back to the kernel (``munmap`` of large blocks, trimming
of the heap top), so the next pass faults every page in again. Measured on the development VM
(default convnet, 1000 digits in one batch, 1 thread): 21.8 ms per forward pass, of which 5.8 ms
were system time for about 3,000 page faults; with the thresholds below, 16.5 ms and no faults.
Every loop of this toolkit (surface points, HVPs, sharpness oracles, training steps) repeats the
same passes, so it pays this everywhere. PyTorch's CPU tuning guide gives the same cause and
suggests preloading jemalloc or tcmalloc; raising glibc's own thresholds needs no preload and no
extra package.

Cost: the process keeps its peak heap until it exits instead of returning it to the kernel
(the peak itself does not grow). Set ``FLATNESS_CPU_ALLOCATOR=default`` to leave malloc alone.
Only glibc is touched; on other C libraries (macOS, musl, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

# glibc's mallopt parameter numbers (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

# Blocks below this come from the heap and are reused, not mmapped and unmapped per pass; 256 MiB
# covers a batch of 256 CIFAR images through a ResNet's widest layer (67 MB). Older glibc caps the
# value at 32 MiB, so that is the fallback.
MMAP_THRESHOLD = 256 << 20
MMAP_THRESHOLD_FALLBACK = 32 << 20
# Free memory at the heap top is given back only beyond this (mallopt takes a C int: 2 GiB - 1).
TRIM_THRESHOLD = (1 << 31) - 1

ENV_SWITCH = "FLATNESS_CPU_ALLOCATOR"


@functools.cache  # once per process: later calls return the first answer
def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they are in effect.

    Idempotent and silent: a C library without ``mallopt`` (or the opt-out variable) leaves malloc
    as it was and returns False.
    """
    if os.environ.get(ENV_SWITCH, "").strip().lower() == "default":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mmap_ok = (
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        or libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_FALLBACK) == 1
    )
    trim_ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return bool(mmap_ok and trim_ok)
