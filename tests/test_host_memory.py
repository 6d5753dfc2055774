"""genzoo's malloc settings: a compiled step's large temporaries stay mapped between calls."""

import os
import subprocess
import sys

import pytest

# A fresh process (the settings act before XLA's threads first allocate) runs a jitted
# function whose 256 MiB intermediate lives in XLA's temporary block, then counts the minor
# page faults of warm calls. Re-mapped each call it would fault 65k pages per call.
PROBE = """
import resource, sys
import genzoo, jax, jax.numpy as jnp
from genzoo import host_memory
f = jax.jit(lambda x: (jnp.sin(x[:, None] * x[None, :]) * 2.0).sum(0))
x = jnp.ones(8192)
for _ in range(3):
    f(x).block_until_ready()
windows = []  # faults per call over windows of 4 calls; the quietest counts (a block freed
for _ in range(6):  # just after the next call allocates grows the heap once more, under load)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        f(x).block_until_ready()
    windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
faults = min(windows)
print(host_memory.reuse_step_buffers(), faults)
"""


def _probe(malloc: str) -> tuple[str, float]:
    env = dict(os.environ, GENZOO_MALLOC=malloc, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    applied, faults = out.stdout.split()
    return applied, float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_step_temporaries_are_not_faulted_in_again():
    applied, faults = _probe("reuse")
    assert applied == "True"
    assert faults < 2_000, faults
    applied, faults = _probe("default")  # glibc's defaults: a fresh mapping every call
    assert applied == "False"
    assert faults > 30_000, faults
