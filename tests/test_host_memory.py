"""genzoo's malloc settings: a compiled step's large temporaries stay mapped between calls,
and only when they are small next to the machine (fragmentation grows the heap by blocks)."""

import os
import subprocess
import sys

import pytest

# A fresh process (one arena must be set before XLA's threads first allocate) runs a jitted
# function whose 128 MiB intermediate lives in XLA's temporary block, then counts the minor
# page faults of warm calls. Re-mapped each call it would fault 32k pages per call.
PROBE = """
import resource, sys
import genzoo, jax, jax.numpy as jnp
from genzoo import host_memory
claimed = int(sys.argv[1])  # the temporaries the caller says its step has
applied = host_memory.reuse_large_blocks(claimed)
f = jax.jit(lambda x: (jnp.sin(x[:, None] * x[None, :]) * 2.0).sum(0))
x = jnp.ones(5792)
for _ in range(3):
    f(x).block_until_ready()
windows = []  # faults per call over windows of 4 calls; the quietest counts (a block freed
for _ in range(6):  # just after the next call allocates grows the heap once more, under load)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        f(x).block_until_ready()
    windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
print(applied, min(windows), host_memory.block_limit())
"""


def _probe(malloc: str, claimed: int) -> tuple[str, float, int]:
    env = dict(os.environ, GENZOO_MALLOC=malloc, XLA_FLAGS="", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", PROBE, str(claimed)], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    applied, faults, limit = out.stdout.split()
    return applied, float(faults), int(limit)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_small_step_temporaries_are_not_faulted_in_again():
    applied, faults, limit = _probe("auto", 128 << 20)  # a CPU-only process: tuned
    assert limit >= 128 << 20, "a machine under 4 GiB: the probe's block is over the limit"
    assert applied == "True"
    assert faults < 2_000, faults
    applied, faults, _ = _probe("default", 128 << 20)  # glibc's defaults: a fresh mapping
    assert applied == "False"
    assert faults > 15_000, faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_large_step_temporaries_keep_glibcs_defaults():
    from genzoo import host_memory

    limit = host_memory.block_limit()
    assert 0 < limit <= 2 << 30
    applied, faults, _ = _probe("reuse", limit + 1)  # e.g. the char GPT at batch 64: 6.5 GiB
    assert applied == "False"
    assert faults > 15_000, faults


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
@pytest.mark.parametrize(
    "malloc, plugin, platforms, tuned",
    [
        ("auto", False, "", True),  # CI: no accelerator plugin
        ("auto", True, "", False),  # a GPU machine: XLA's compiler threads keep their arenas
        ("auto", True, "cpu", True),  # an accelerator's machine told to compute on the CPU
        ("auto", True, "cuda,cpu", False),
        ("reuse", True, "", True),
        ("default", False, "", False),
    ],
)
def test_one_arena_only_where_jax_computes_on_the_cpu(tmp_path, malloc, plugin, platforms, tuned):
    from genzoo import host_memory

    if not plugin and host_memory.accelerator_plugins():
        pytest.skip("this environment has an accelerator plugin of its own")
    if plugin:  # what jax's CUDA plugin installs: a module of the jax_plugins namespace
        (tmp_path / "jax_plugins" / "xla_fake").mkdir(parents=True)
        (tmp_path / "jax_plugins" / "xla_fake" / "__init__.py").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env.update(GENZOO_MALLOC=malloc, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    if platforms:
        env["JAX_PLATFORMS"] = platforms
    probe = "import sys, genzoo.host_memory as h; print(h.one_arena(), 'jax' in sys.modules, "
    probe += "h.accelerator_plugins())"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    arena, jax_imported, found = out.stdout.split(" ", 2)
    assert arena == str(tuned)
    assert ("xla_fake" in found) == plugin
    assert jax_imported == "False"  # decided before jax (and XLA's threads) start
