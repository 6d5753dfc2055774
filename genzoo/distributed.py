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
