"""Process-level settings that make NumPy training faster without changing any number."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_done = False


def tune_allocator() -> bool:
    """Keep freed memory in the process instead of returning it to the OS (glibc only).

    A training step allocates and frees arrays of several MB. glibc serves those with mmap
    and unmaps them on free, so the next step touches fresh pages and the kernel zeroes
    them again: measured here, a quarter of a NumPy training step. Raising the mmap and trim
    thresholds keeps the pages. Results are unchanged. Returns whether it applied.
    """
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 32 * 2**20)  # the largest glibc accepts
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2**30)
        ok &= libc.mallopt(_M_TOP_PAD, 64 * 2**20)
    except (OSError, AttributeError):
        return False
    _done = bool(ok)
    return _done


def total_memory_bytes() -> int | None:
    """Physical memory of this machine in bytes, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None
