"""Jitted functions compiled ahead of time, so the trainer can compile them early (from
shapes, on another thread) and read what XLA says about them (time, memory); and the
settings that decide how and where the trainer compiles."""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import jax

from genzoo import executables, metrics
from genzoo.errors import env_choice

log = logging.getLogger(__name__)


class Program:
    """`fn` (a `jax.jit` function) compiled once per argument types (given as arrays or
    `jax.ShapeDtypeStruct`s), as jit would; the latest executable is tried first, so a
    fixed-type loop pays no lookup. `on_compile(program)` runs after each compile;
    `compiler_options` are XLA's (part of the persistent cache's key); `runs_often` marks a
    program whose run time matters (the train step: see `_compile`)."""

    def __init__(self, fn, name: str, on_compile: Callable[[Program], None] | None = None,
                 compiler_options: dict | None = None, runs_often: bool = False):  # fmt: skip
        self.fn, self.name, self.on_compile = fn, name, on_compile
        self.compiler_options = compiler_options
        self.runs_often = runs_often
        self.compiled = None
        self.store: executables.Store | None = None  # where executables persist, if anywhere
        self.seconds: dict[str, float] = {}  # trace and compile, or load
        self.temp_bytes: int | None = None  # XLA's temporaries, where the backend says
        self._lock = threading.Lock()  # one compile at a time: a caller waits for one in flight
        self._by_types: dict = {}  # every executable, by its arguments' types

    def trace(self, *args) -> Callable[[], object]:
        """Traces for `args` now (on this thread: tracing holds the GIL); the function
        returned compiles that trace (on any thread: XLA releases the GIL). With a stored
        executable for `args`, loads that instead and traces nothing."""
        stored = self._load(args)
        if stored is not None:
            return lambda: stored
        t0 = time.perf_counter()
        lowered = self.fn.lower(*args)
        return functools.partial(self._compile, lowered, args, time.perf_counter() - t0)

    def compile(self, *args, if_missing: bool = False):
        with self._lock:
            if if_missing and self.compiled is not None:
                return self.compiled
            stored = self._load(args, locked=True)
            if stored is not None:
                return stored
            t0 = time.perf_counter()
            lowered = self.fn.lower(*args)
            return self._compile(lowered, args, time.perf_counter() - t0, locked=True)

    def _load(self, args, locked: bool = False):
        """The executable `store` holds for `args` (installed as if compiled), or None."""
        if self.store is None:
            return None
        t0 = time.perf_counter()
        compiled = self.store.load(self._stored_at(args))
        if compiled is None:
            return None
        with contextlib.nullcontext() if locked else self._lock:
            self._install(compiled, args, {"load": time.perf_counter() - t0})
        self._compiled_hook()
        return compiled

    def _stored_at(self, args):
        return self.store.path(self.name, _types(args), self.compiler_options)

    def _compile(self, lowered, args, trace_s: float, locked: bool = False):
        with contextlib.nullcontext() if locked else self._lock:
            t0 = time.perf_counter()
            # The persistent cache answers here on a second launch without a stored program.
            with executables.compiled_fresh() as fresh:
                compiled = lowered.compile(compiler_options=self.compiler_options)
            self._install(compiled, args, {"trace": trace_s, "compile": time.perf_counter() - t0})
            if self.store is not None:
                path = self._stored_at(args)
                if fresh.value:  # (a store without a folder writes and reads nothing)
                    self.store.save(path, compiled)
                    if self.runs_often and jax.default_backend() == "cpu":
                        # XLA:CPU runs the stored copy faster than the executable it just
                        # built (the demo's step: 92-95 against 96-98 ms, alternating launches).
                        stored = self.store.load(path)
                        if stored is not None:
                            compiled = self.compiled = self._by_types[_types(args)] = stored
                self.store.keep(path, compiled)  # this process's next Trainer: no trace
        self._compiled_hook()
        return compiled

    def _install(self, compiled, args, seconds: dict[str, float]) -> None:
        self.seconds = seconds
        try:
            self.temp_bytes = int(compiled.memory_analysis().temp_size_in_bytes)
        except (AttributeError, NotImplementedError, TypeError):  # no analysis here
            self.temp_bytes = None
        mib = None if self.temp_bytes is None else self.temp_bytes / 2**20
        temps = "" if mib is None else f"; {mib:.1f} MiB of XLA temporaries"
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
        log.info("%s: %s%s", self.name, phases, temps)
        self.compiled = self._by_types[_types(args)] = compiled

    def _compiled_hook(self) -> None:
        if self.on_compile is not None:
            self.on_compile(self)

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


def run_once_options() -> dict | None:
    """XLA options for programs that run once per launch (the initial state): on CPU, LLVM's
    level 1 rather than 2 halves their compile (the demo's init 5.5 -> 2.7 s, the baby GPT's
    ~8 -> 4.3 s) for the same values, bit for bit, in both; their run time does not matter."""
    return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None


def overlap_start() -> bool:
    """Whether fit builds the initial state (and compiles the eval step) on a second thread
    while the train step compiles. On by default: even on 2 cores, where the two compiles
    slow each other down, the demo started training 3-6 s sooner (20.5-24.1 s after launch
    against 24.6-27.7 s, alternating). GENZOO_OVERLAP=0 turns it off."""
    return env_choice("GENZOO_OVERLAP") == "1"


def start_workers() -> int:
    """Threads beside the train step's compile at start: with 4 or more cores two, so the eval
    step compiles beside it too rather than after it, while training runs (on the H200, whose
    eval step took 18.9 s to compile cold, the first evaluation at step 250 waited ~15 s for
    it); on fewer cores one, the initial state's, as measured above."""
    return 2 if metrics.usable_cores() >= 4 else 1


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
    if jax.default_backend() == "gpu" and env_choice("GENZOO_THREEFRY") == "kernel":
        jax.config.update("jax_threefry_gpu_kernel_lowering", True)
