"""Jitted functions compiled ahead of time, so the trainer can compile them early (from
shapes, on another thread) and read what XLA says about them (time, memory)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Program:
    """`fn` (a `jax.jit` function) compiled once for the argument types it is first given,
    as arrays or `jax.ShapeDtypeStruct`s; arguments of other types compile again, as jit
    would. `on_compile(program)` runs after each compile."""

    def __init__(self, fn, name: str, on_compile: Callable[[Program], None] | None = None):
        self.fn, self.name, self.on_compile = fn, name, on_compile
        self.compiled = None
        self.seconds: dict[str, float] = {}  # trace, compile
        self.temp_bytes: int | None = None  # XLA's temporaries, where the backend says
        self._lock = threading.Lock()  # one compile at a time: a caller waits for one in flight

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
            self.compiled = compiled
        if self.on_compile is not None:
            self.on_compile(self)
        return compiled

    def __call__(self, *args):
        compiled = self.compiled
        if compiled is not None:
            try:
                return compiled(*args)
            except TypeError:  # other shapes or dtypes than those compiled for
                pass
        elif self._lock.locked():  # compiling on another thread: wait for it
            compiled = self.compile(*args, if_missing=True)
            try:
                return compiled(*args)
            except TypeError:
                pass
        return self.compile(*args)(*args)
