"""SIGTERM and SIGINT during training: finish the step, save, exit 75; a second one aborts.

Cluster schedulers preempt with SIGTERM and a grace period; the trainer polls
`StopRequest.signal` after each step, so the checkpoint it writes is a step boundary like
any other and a resume continues bit-exactly.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import jax
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Context manager catching the first stop signal; the second ends the process at once."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signal is not None:
            print(f"genzoo: second {signal.Signals(signum).name}: aborting without saving",
                  file=sys.stderr, flush=True)  # fmt: skip
            os._exit(128 + signum)
        self.signal = signum
        print(f"genzoo: {signal.Signals(signum).name} received: saving after this step "
              "(send it again to abort at once)", file=sys.stderr, flush=True)  # fmt: skip

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signal() works only there
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False


def agreed(local: tuple[bool, ...], step: int, every: int) -> tuple[bool, ...]:
    """The flags every process of the run acts on after `step`: in one process, `local` (a stop
    signal, a clock run out). In several, each process's signals and clocks are its own: a
    SIGTERM reaching one of them first (or only one) sent it into a checkpoint save's
    collectives while the others stepped on, and the run hung for good. So the processes OR
    their flags every `every` steps (an all-gather of a few ints; the trainer passes its
    logging interval, steps that read metrics anyway) and act on nothing in between."""
    if jax.process_count() == 1:
        return local
    if step % every:
        return (False,) * len(local)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(local, np.int32))
    return tuple(bool(v) for v in np.asarray(flags).reshape(-1, len(local)).any(axis=0))
