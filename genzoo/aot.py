"""Jitted functions compiled ahead of time, so the trainer can compile them early (from
shapes, on another thread) and read what XLA says about them (time, memory); and the
settings that decide how and where the trainer compiles."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import jax

log = logging.getLogger(__name__)


class Program:
    """`fn` (a `jax.jit` function) compiled once per argument types (given as arrays or
    `jax.ShapeDtypeStruct`s), as jit would; the latest executable is tried first, so a
    fixed-type loop pays no lookup. `on_compile(program)` runs after each compile."""

    def __init__(self, fn, name: str, on_compile: Callable[[Program], None] | None = None):
        self.fn, self.name, self.on_compile = fn, name, on_compile
        self.compiled = None
        self.seconds: dict[str, float] = {}  # trace, compile
        self.temp_bytes: int | None = None  # XLA's temporaries, where the backend says
        self._lock = threading.Lock()  # one compile at a time: a caller waits for one in flight
        self._by_types: dict = {}  # every executable, by its arguments' types

    def compile(self, *args, if_missing: bool = False):
        with self._lock:
            if if_missing and self.compiled is not None:
                return self.compiled
            t0 = time.perf_counter()
            lowered = self.fn.lower(*args)
            t1 = time.perf_counter()
            compiled = lowered.compile()  # the persistent cache answers here on a second launch
            self.seconds = {"trace": t1 - t0, "compile": time.perf_counter() - t1}
            try:
                self.temp_bytes = int(compiled.memory_analysis().temp_size_in_bytes)
            except (AttributeError, NotImplementedError, TypeError):  # no analysis here
                self.temp_bytes = None
            temps = (
                ""
                if self.temp_bytes is None
                else f"; {self.temp_bytes / 2**20:.1f} MiB of XLA temporaries"
            )
            log.info("%s: traced in %.1f s, compiled in %.1f s%s", self.name, t1 - t0,
                     self.seconds["compile"], temps)  # fmt: skip
            self.compiled = self._by_types[_types(args)] = compiled
        if self.on_compile is not None:
            self.on_compile(self)
        return compiled

    def __call__(self, *args):
        compiled = self.compiled
        if compiled is None and self._lock.locked():  # compiling on another thread: wait
            compiled = self.compile(*args, if_missing=True)
        if compiled is not None:
            try:
                return compiled(*args)
            except TypeError:  # other shapes or dtypes than those compiled for
                pass
        earlier = self._by_types.get(_types(args))
        if earlier is not None:
            self.compiled = earlier
            return earlier(*args)
        return self.compile(*args)(*args)


def _types(args) -> tuple:
    """What an executable's argument check looks at, short of shardings."""
    leaves, tree = jax.tree.flatten(args)
    return tree, tuple((tuple(x.shape), str(x.dtype), bool(getattr(x, "weak_type", False)))
                       for x in leaves)  # fmt: skip


def overlap_start() -> bool:
    """Whether fit builds the initial state (and compiles the eval step) on a second thread
    while the train step compiles. On by default: even on 2 cores, where the two compiles
    slow each other down, the demo started training 3-6 s sooner (20.5-24.1 s after launch
    against 24.6-27.7 s, alternating). GENZOO_OVERLAP=0 turns it off."""
    return os.environ.get("GENZOO_OVERLAP", "1") != "0"


class Inline:
    """ThreadPoolExecutor's submit/shutdown, running each call at once on this thread."""

    def submit(self, fn, *args, **kwargs) -> Future:
        done = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except BaseException as err:  # raised where the result is read, as from a thread
            done.set_exception(err)
        return done

    def shutdown(self, wait: bool = True) -> None:
        pass


def gpu_compile_settings() -> None:
    """GENZOO_THREEFRY=kernel: on GPU, threefry's random bits as one CUDA kernel rather than
    unrolled HLO (the same bits). Off by default: on an H200 the bf16 char GPT's steps ran
    16.1 ms with it against 14.1 ms (compiles 97.6 s and 123.5 s, in separate launches)."""
    if jax.default_backend() == "gpu" and os.environ.get("GENZOO_THREEFRY") == "kernel":
        jax.config.update("jax_threefry_gpu_kernel_lowering", True)
