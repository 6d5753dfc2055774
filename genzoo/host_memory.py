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

Only where jax computes on the CPU (`GENZOO_MALLOC=auto`, the default): on an accelerator the
step's buffers live on the device, and one arena serialises every allocation of XLA's
multi-threaded compiler (LLVM, autotuning) behind one lock: every H200 compile measured after
this tuning landed ran ~3.6x slower (GPT-2 shape 19.7 -> 71.4 s, char GPT ~33 -> 123.5 s; the
suspected cause, which `benchmarks/gpu_run.sh`'s char step measures: `malloc_reuse`).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pkgutil
import sys

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
# Step temporaries up to this share of physical memory (and 2 GiB) keep their pages: the
# heap's growth from fragmentation (a few blocks) then stays small next to the machine.
_SHARE_OF_RAM, _MAX_BLOCK = 1 / 16, 2 << 30

_mallopt = None
_arena: bool | None = None
_large_blocks: bool | None = None


def accelerator_plugins() -> list[str]:
    """The accelerator backends jax would find (it looks in the same places when it starts:
    modules of the `jax_plugins` namespace, and libtpu), without importing jax."""
    found = []
    spec = importlib.util.find_spec("jax_plugins")
    if spec is not None and spec.submodule_search_locations:
        found += [module.name for module in pkgutil.iter_modules(spec.submodule_search_locations)]
    if importlib.util.find_spec("libtpu") is not None:
        found.append("libtpu")
    return found


def cpu_only() -> bool:
    """Whether this process computes on the CPU: `JAX_PLATFORMS` names only `cpu`, or, unset,
    no accelerator plugin is installed."""
    platforms = [p.strip() for p in os.environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        return set(platforms) == {"cpu"}
    return not accelerator_plugins()


def _libc_mallopt():
    """glibc's mallopt, or None where it does not apply (opted out, an accelerator's process,
    not Linux, not glibc)."""
    global _mallopt
    if _mallopt is None:
        _mallopt = False
        choice = os.environ.get("GENZOO_MALLOC", "auto")
        wanted = choice == "reuse" or (choice == "auto" and cpu_only())
        if wanted and sys.platform.startswith("linux"):
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
    global _arena
    if _arena is None:
        mallopt = _libc_mallopt()
        _arena = bool(mallopt) and mallopt(_M_ARENA_MAX, 1) == 1
    return _arena


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
    # Without one arena, a worker thread's large block would come from its own arena's mmap.
    if not mallopt or not one_arena() or temp_bytes > block_limit():
        return False
    _large_blocks = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, -1),  # trimming the top would unmap the block again
        )
    )
    return _large_blocks
