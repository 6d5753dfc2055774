"""Keep XLA:CPU's step buffers mapped from one step to the next (glibc's malloc).

Each execution of a compiled step allocates its temporaries in one block (137 MB for the
`make demo` model) from an XLA worker thread. glibc serves a block that large from a fresh
mmap when the calling thread has its own arena, and unmaps it on free, so every step
page-faults the whole block back in: measured 35.5k minor faults per step, a third of the
demo's step time on a 2-core VM (PyTorch eager: 2k). One arena, no mmap for large blocks
and no trimming make glibc hand the same pages back every step (0 faults; demo step ~230 ->
~186 ms, ~115 ms when the step comes from the persistent cache). The price: memory a run
frees stays with the process. Must run before XLA's threads first allocate, i.e. before the
first computation; `import genzoo` does it. `GENZOO_MALLOC=default` leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8

_applied: bool | None = None


def reuse_step_buffers() -> bool:
    """Tune glibc's malloc once per process; False where it does not apply (opted out,
    not Linux, not glibc)."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("GENZOO_MALLOC", "reuse") == "default" or not sys.platform.startswith(
        "linux"
    ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own libc
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_ARENA_MAX, 1),
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, -1),  # never trim: a step's block can exceed any fixed size
        )
    )
    return _applied
