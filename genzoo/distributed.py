"""Several processes, one run: `jax.distributed` set-up and who writes what.

`genzoo train` joins a multi-process run when given `--coordinator HOST:PORT
--num-processes N --process-id I`, or the same through JAX's environment variables
(`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), or on a cluster JAX
detects by itself (SLURM, Open MPI, Cloud TPU pods: `GENZOO_DISTRIBUTED=auto`). Every process
runs the same program over the global mesh; orbax writes checkpoints collectively; only
process 0 writes the config, metrics, pictures and progress, and holds the workdir lock.
"""

from __future__ import annotations

import os
import sys

import jax

from genzoo.errors import EXIT_NONFINITE, EXIT_PREEMPTED, env_choice

_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:  # fmt: skip
    """Joins the run described by the arguments or the environment; a no-op when neither
    asks for more than one process (and when already joined)."""
    if jax.distributed.is_initialized():
        return
    given = coordinator or num_processes is not None or process_id is not None
    if given:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif all(os.environ.get(k) for k in _ENV):
        jax.distributed.initialize(
            os.environ["JAX_COORDINATOR_ADDRESS"],
            int(os.environ["JAX_NUM_PROCESSES"]),
            int(os.environ["JAX_PROCESS_ID"]),
        )
    elif env_choice("GENZOO_DISTRIBUTED") == "auto":
        jax.distributed.initialize()  # SLURM, Open MPI, TPU pod metadata


def is_main() -> bool:
    """Process 0: the one that writes files and prints."""
    return jax.process_index() == 0


_ENDED = "genzoo/ended/"  # the coordination service's key-value store: process id -> ending


def _client():
    from jax._src import distributed  # the client jax.distributed joined with (no public name)

    return distributed.global_state.client


def several() -> bool:
    """This process is one of a multi-process run (joined to others)."""
    return jax.distributed.is_initialized() and jax.process_count() > 1


# Endings every process of a run reaches at the same step (NaN is read off global values, a
# stop is agreed: preemption.agreed), so jax's exit barrier passes at once.
TOGETHER = (EXIT_NONFINITE, EXIT_PREEMPTED)


def leave(code: int, line: str) -> None:
    """Ends this process of a multi-process run at once, unless `code` is an ending every
    process reaches together (then it returns). At a normal exit jax.distributed waits up to
    5 minutes at a barrier for the others, which are stuck in collectives with this one,
    then aborts every process with stack dumps. It tells the others why first (the
    coordination service's key-value store); their collectives with it fail (gloo, at once)
    or their coordination service misses its heartbeats (NCCL, ~100 s), and they stop."""
    if code in TOGETHER:
        return
    told = line.removeprefix("genzoo: error: ").splitlines()[-1]
    try:
        _client().key_value_set(f"{_ENDED}{jax.process_index()}", f"{code} {told}")
    except Exception:  # the service may be gone already: the report is best effort
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def ending_elsewhere() -> tuple[str, int] | None:
    """(line, exit code) of another process of the run that has ended, if one told (the
    form of `errors.ending`)."""
    try:
        told = _client().key_value_dir_get(_ENDED)
    except Exception:
        return None
    for key, value in sorted(told):
        process = int(key.rsplit("/", 1)[-1])
        if process != jax.process_index():
            code, _, line = value.partition(" ")
            return f"genzoo: error: process {process} of this run ended first: {line}", int(code)
    return None
