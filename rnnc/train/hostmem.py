"""Keep freed host memory in the process: one glibc arena, no mmap, a high trim threshold.

A training step of a generated module allocates and frees the same large arrays
on every call (XLA's buffers on CPU, NumPy's temporaries). glibc serves each
allocation over its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and
unmaps it on free, so every step touches new pages: XLA's CPU runtime allocates
all of a step's temporaries as one block (89 MB for the char-LM LSTM at H=512),
from its worker threads, and every call faulted all of it in again (21,825 page
faults per step; docs/performance.md, session 12). Raising the mmap threshold
cannot reach a block that large, and the worker threads allocate from their own
arenas, whose heaps are at most 64 MiB, so glibc maps such a block whatever the
threshold. What keeps it:

- ``M_ARENA_MAX = 1``: every thread allocates from the main arena (its heap grows
  with ``brk`` to any size); it must be set before the threads first allocate,
  i.e. before JAX starts its CPU client;
- ``M_MMAP_MAX = 0``: the main arena serves large blocks from its heap too (glibc
  still maps memory when the heap cannot grow);
- ``M_TRIM_THRESHOLD = 1 GiB``: freed memory at the top of the heap stays in the
  process up to that size instead of going back to the system.

The cost: memory a run freed stays in its process (up to the largest step's
needs), and threads share one arena's lock. The setting is process-wide, so only
rnnc's own commands make it, when they import a generated module (``rnnc train``,
``eval``, ``sample``); a generated module never does. ``bench/bench_all.py
--malloc-keep`` measures every framework with it. ``RNNC_MALLOC=default`` leaves
the allocator alone. Elsewhere than glibc it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys


ENV = "RNNC_MALLOC"
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# mallopt's value is an int; glibc keeps up to this much freed memory at the heap's top.
TRIM_THRESHOLD = 1 << 30

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's allocator up as the module docstring says, once per process; True if
    it was (False where the platform or RNNC_MALLOC=default leaves it alone)."""
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
    # mallopt returns 1 on success; the trim threshold first, so that no block the
    # other two settings keep is handed back to the system
    settings = ((M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, 1), (M_MMAP_MAX, 0))
    _done = all(mallopt(option, value) == 1 for option, value in settings)
    return _done
