"""Keep XLA:CPU's step buffers mapped from one step to the next (glibc's malloc).

Each execution of a compiled step allocates its temporaries in one block (137 MB for the
`make demo` model) from an XLA worker thread. glibc serves a block that large from a fresh
mmap and unmaps it on free, so every step page-faults the whole block back in: measured
35.5k minor faults per step, a third of the demo's step time on a 2-core VM (PyTorch eager:
2k). With one arena, no mmap for large blocks and no trimming, glibc hands the same pages
back every step (0 faults; demo step ~230 -> ~186 ms, ~115 ms when the step comes from the
persistent cache).

The price is fragmentation: a freed block in the heap is split by the next small
allocations, so the next step's block may not fit and the heap grows. With one step in
flight the heap settled at ~3.5 blocks (a 1.6 GiB block: 2.5 GiB peak -> 5.7 GiB; the char
GPT at batch 64 ran out of 23 GiB). So the no-mmap half is applied only once a compiled
step's temporaries are known to be small (`reuse_large_blocks`, called by the trainer);
`GENZOO_MALLOC=default` leaves malloc alone altogether.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# Step temporaries up to this share of physical memory (and 2 GiB) keep their pages: the
# heap's growth from fragmentation (a few blocks) then stays small next to the machine.
_SHARE_OF_RAM, _MAX_BLOCK = 1 / 16, 2 << 30

_mallopt = None
_large_blocks: bool | None = None


def _libc_mallopt():
    """glibc's mallopt, or None where it does not apply (opted out, not Linux, not glibc)."""
    global _mallopt
    if _mallopt is None:
        _mallopt = False
        if os.environ.get("GENZOO_MALLOC", "reuse") != "default" and sys.platform.startswith(
            "linux"
        ):
            try:
                fn = ctypes.CDLL(None).mallopt  # the process's own libc
                fn.argtypes, fn.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
                _mallopt = fn
            except (OSError, AttributeError):  # musl and others: no mallopt
                pass
    return _mallopt or None


def one_arena() -> bool:
    """All threads allocate from the main heap, so a worker thread's large block can come
    from it (`reuse_large_blocks`). Must run before XLA's threads first allocate, i.e.
    before the first computation; `import genzoo` does it."""
    mallopt = _libc_mallopt()
    return bool(mallopt) and mallopt(_M_ARENA_MAX, 1) == 1


def block_limit() -> int:
    """The largest step temporaries (bytes) whose pages are kept between steps."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 16 << 30
    return int(min(_MAX_BLOCK, ram * _SHARE_OF_RAM))


def reuse_large_blocks(temp_bytes: int) -> bool:
    """Serves large blocks from the heap and never trims it, when a compiled step's
    temporaries (`temp_bytes`) are at most `block_limit()`; once set, it stays for the
    process (True). False where it does not apply."""
    global _large_blocks
    if _large_blocks:
        return True
    mallopt = _libc_mallopt()
    if not mallopt or temp_bytes > block_limit():
        return False
    _large_blocks = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, -1),  # trimming the top would unmap the block again
        )
    )
    return _large_blocks
