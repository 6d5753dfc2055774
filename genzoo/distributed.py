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

import jax

from genzoo.errors import env_choice

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


def report_ending(code: int, line: str) -> None:
    """Tells the run's other processes how this one ended, before it leaves: a peer that then
    fails in a collective with it says why (`ending_elsewhere`) instead of a transport error."""
    try:
        _client().key_value_set(f"{_ENDED}{jax.process_index()}", f"{code} {line}")
    except Exception:  # the service may be gone already: the report is best effort
        pass


def ending_elsewhere() -> tuple[int, str] | None:
    """(exit code, line) of another process of the run that has ended, if one told."""
    try:
        told = _client().key_value_dir_get(_ENDED)
    except Exception:
        return None
    for key, value in sorted(told):
        process = int(key.rsplit("/", 1)[-1])
        if process != jax.process_index():
            code, _, line = value.partition(" ")
            return int(code), f"process {process} of this run ended first: {line}"
    return None
