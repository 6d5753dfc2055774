"""Test set-up: 8 simulated CPU devices, generated data, no network, a persistent compile cache.

The environment is set at import time, before anything imports jax.
"""

import os
import random
import tempfile
from pathlib import Path

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["GENZOO_OFFLINE"] = "1"  # tests never touch the network
_ROOT = Path(tempfile.mkdtemp(prefix="genzoo-tests-"))
os.environ["GENZOO_DATA_DIR"] = str(_ROOT / "data")
os.environ["GENZOO_CACHE_DIR"] = str(_ROOT / "cache")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("GENZOO_TEST_JAX_CACHE", str(Path.home() / ".cache" / "genzoo" / "jax-tests")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

WORDS = "the king and queen of my lord thou art not a fool but good sir love death night".split()
NAMES = ["ROMEO", "JULIET", "KING", "NURSE"]


def make_text(num_chars: int = 30_000, seed: int = 0) -> str:
    """Shakespeare-shaped text: speaker lines followed by short verses, deterministic."""
    rng = random.Random(seed)
    parts = []
    while sum(map(len, parts)) < num_chars:
        verse = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9)))
        parts.append(f"{rng.choice(NAMES)}:\n{verse.capitalize()}.\n\n")
    return "".join(parts)[:num_chars]


TEXT = make_text()
(_ROOT / "data" / "tinyshakespeare").mkdir(parents=True)
(_ROOT / "data" / "tinyshakespeare" / "input.txt").write_text(TEXT)


@pytest.fixture(scope="session")
def text() -> str:
    return TEXT


@pytest.fixture(scope="session")
def char_data():
    """The tiny Shakespeare data object built from the generated text (seq_len 32)."""
    import ml_collections

    from genzoo import data

    return data.load(ml_collections.ConfigDict({"name": "tinyshakespeare_char", "seq_len": 32}))


def tiny_config(*overrides: str, variant: str = "smoke"):
    """The GPT smoke config, resolved against the generated data, with overrides."""
    from genzoo import data, experiment, workdir

    cfg = experiment.load("gpt_shakespeare_char", variant, overrides)
    return workdir.resolve(cfg, data.load(cfg.data))


@pytest.fixture(scope="session")
def make_config():
    return tiny_config
