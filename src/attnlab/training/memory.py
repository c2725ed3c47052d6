"""Keep freed memory in the process during CPU training, instead of handing it back to the system.

A training step allocates and frees the same large activation buffers every step. With glibc's
defaults a buffer above the (dynamic) mmap threshold is mapped fresh and unmapped on free, and the top
of the heap is trimmed back to the system once enough of it is free, so every step touches new pages
again: thousands of page faults per step, each a trip into the kernel that also zeroes the page
(measured, `base` Transformer, batches of 64 sentences on a 2-core AMD EPYC: 5,000-16,000 faults and
0.13-0.23 s of system time per 4 steps). `keep_freed_memory()` sets glibc's mmap threshold to its
largest value (32 MiB on 64-bit systems) and trim threshold to 1 GiB, so that those buffers come back
from the heap already mapped: ~0 faults per step. The process's resident memory stays at its peak,
which a training process reaches at its first steps anyway.

Process-wide (it also speeds up anything else that runs in the process); only on Linux with glibc; off
with ATTNLAB_MALLOC_TUNING=0. The same can be had without attnlab by setting the environment variables
MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ before Python starts.

Place in the layering: training; imports only from data and the parts below it (tests/test_layering.py).
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit on 64-bit systems (4 MiB * sizeof(long))
TRIM_THRESHOLD = 1 << 30

_done: dict[str, bool] = {}


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as above (once per process); True where it took effect."""
    if "result" in _done:
        return _done["result"]
    ok = False
    if (os.environ.get("ATTNLAB_MALLOC_TUNING", "1") != "0" and sys.platform == "linux"
            and platform.libc_ver()[0] == "glibc"):
        try:
            libc = ctypes.CDLL(None)
            ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        except (OSError, AttributeError):  # no mallopt to call: left as it is
            pass
    _done["result"] = ok
    return ok
