"""Keep a copy's memory bounded by what it has in flight.

A copy allocates and frees 4 MiB buffers on several threads. glibc serves
the first from mmap, but after the first free it raises its mmap threshold
(up to 32 MiB) and serves the rest from per-thread arenas, which keep the
memory after it is freed: RSS grows well past what is in flight. Setting
the threshold explicitly turns that adjustment off, so large buffers are
always mmapped and go back to the system when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

LOG = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3


def pin_mmap_threshold(size: int = 1 << 20) -> bool:
    """Best effort: False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(M_MMAP_THRESHOLD, size))
    except (OSError, AttributeError):
        LOG.debug("mallopt is not available", exc_info=True)
        return False
