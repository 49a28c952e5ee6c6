"""Keep freed host memory in the process: glibc's mmap and trim thresholds.

A training step of a generated module allocates and frees the same large arrays
on every call (XLA's buffers on CPU, NumPy's temporaries). glibc serves each
allocation over its mmap threshold with a fresh ``mmap`` and unmaps it on free,
so every step touches new pages: measured on the char-LM workload, tens of
thousands of page faults per LSTM step and, for the JAX module at H=128, a
third of the step time (docs/performance.md). Raising the mmap and trim
thresholds makes glibc keep that memory on its heap and hand it out again.

The setting is process-wide, so only rnnc's own commands make it, when they
import a generated module (``rnnc train``, ``eval``, ``sample``); a generated
module never does. ``bench/bench_all.py --malloc-keep`` measures every framework
with it. ``RNNC_MALLOC=default`` leaves the allocator alone. Elsewhere than glibc it
is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys


ENV = "RNNC_MALLOC"
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Allocations up to this size come from the heap; older glibc refuses more than 32 MiB.
THRESHOLDS = (1 << 30, 32 << 20)

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap/trim thresholds once per process; True if they were set."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get(ENV, "").strip().lower() in {"default", "off", "0", "no"}:
        return False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    for threshold in THRESHOLDS:
        if mallopt(M_MMAP_THRESHOLD, threshold):
            _done = bool(mallopt(M_TRIM_THRESHOLD, 2 * threshold))
            break
    return _done
