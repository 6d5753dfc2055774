"""Test set-up: 8 simulated CPU devices, generated data, no network, a persistent compile cache.

The environment is set at import time, before anything imports jax.
"""

import atexit
import functools
import gzip
import os
import random
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ["GENZOO_OFFLINE"] = "1"  # tests never touch the network
# The procedural shapes at test size: seconds, not minutes.
os.environ["GENZOO_SHAPES_SPLITS"] = "train=256,validation=64,heldout=64,any=128"
_ROOT = Path(tempfile.mkdtemp(prefix="genzoo-tests-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)  # generated data, caches
os.environ["GENZOO_DATA_DIR"] = str(_ROOT / "data")
os.environ["GENZOO_CACHE_DIR"] = str(_ROOT / "cache")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update(
    "jax_compilation_cache_dir",
    os.environ.get("GENZOO_TEST_JAX_CACHE", str(Path.home() / ".cache" / "genzoo" / "jax-tests")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

WORDS = "the king and queen of my lord thou art not a fool but good sir love death night".split()
NAMES = ["ROMEO", "JULIET", "KING", "NURSE"]
# Tiny Shakespeare's 65 symbols: an odd-sized vocabulary, like the real one (it divides over
# no mesh axis, so every sharded test meets the padding the real corpus needs).
SYMBOLS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def make_text(num_chars: int = 30_000, seed: int = 0) -> str:
    """Shakespeare-shaped text: speaker lines followed by short verses, deterministic; the
    first line holds every symbol of the real corpus, so the vocabulary is its 65."""
    rng = random.Random(seed)
    parts = ["PROLOGUE:\n" + SYMBOLS.replace("\n", "") + "\n\n"]
    while sum(map(len, parts)) < num_chars:
        verse = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9)))
        parts.append(f"{rng.choice(NAMES)}:\n{verse.capitalize()}.\n\n")
    return "".join(parts)[:num_chars]


def make_images(num: int, seed: int):
    """28x28 images whose class (0-9) sets where a bright 8x8 square sits, plus noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, num).astype(np.uint8)
    images = rng.integers(0, 60, (num, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        r, c = divmod(int(label), 5)
        image[2 + 12 * r : 10 + 12 * r, 1 + 5 * c : 9 + 5 * c] = 230
    return images, labels


def write_idx(path: Path, array) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


TEXT = make_text()
(_ROOT / "data" / "tinyshakespeare").mkdir(parents=True)
(_ROOT / "data" / "tinyshakespeare" / "input.txt").write_text(TEXT)
_BOOKS = ["Genesis", "I Samuel", "Psalms", "Isaiah", "Mark", "II Timothy", "Revelation of John"]
_BIBLE = _ROOT / "data" / "bible-es-en"
_BIBLE.mkdir(parents=True)
for _split, _num in (("train", 300), ("validation", 40), ("test", 24)):  # test: user-provided
    _rng = random.Random(_num)
    _lines = [
        f"{_BOOKS[i % len(_BOOKS)]} {i}:1\t{' '.join(_rng.choice(WORDS) for _ in range(8))}\t"
        f"“{' '.join(_rng.choice(WORDS) for _ in range(8)).capitalize()}” (and) rest.\n"
        for i in range(_num)
    ]
    (_BIBLE / f"{_split}.tsv").write_text("".join(_lines), encoding="utf-8")
_FM = _ROOT / "data" / "fashion-mnist"
_FM.mkdir(parents=True)
for _prefix, _num, _seed in (("train", 256, 0), ("t10k", 64, 1)):
    _images, _labels = make_images(_num, _seed)
    write_idx(_FM / f"{_prefix}-images-idx3-ubyte.gz", _images)
    write_idx(_FM / f"{_prefix}-labels-idx1-ubyte.gz", _labels)


@pytest.fixture(scope="session")
def text() -> str:
    return TEXT


@pytest.fixture(scope="session")
def char_data():
    """The tiny Shakespeare data object built from the generated text (seq_len 32)."""
    import ml_collections

    from genzoo import data

    return data.load(ml_collections.ConfigDict({"name": "tinyshakespeare_char", "seq_len": 32}))


@pytest.fixture(scope="session")
def image_data():
    """Fashion-MNIST built from the generated idx files (256 train, 64 test images)."""
    import ml_collections

    from genzoo import data

    return data.load(ml_collections.ConfigDict({"name": "fashion_mnist"}))


@pytest.fixture(scope="session")
def smoke_char_run(tmp_path_factory) -> Path:
    """`genzoo train gpt_shakespeare_char --variant smoke`, trained once per test process (many
    modules start from such a run). Never written to: tests take a copy (`char_run`)."""
    from genzoo import cli

    path = tmp_path_factory.mktemp("shared") / "smoke_char"
    argv = ["train", "gpt_shakespeare_char", "--variant", "smoke", "--workdir", str(path)]
    assert cli.main([*argv, "--set", "log.progress=false"]) == 0
    return path


@pytest.fixture
def char_run(smoke_char_run, tmp_path) -> Path:
    """This test's own copy of `smoke_char_run` (a workdir may be moved: tested in test_cli)."""
    return Path(shutil.copytree(smoke_char_run, tmp_path / "char_run"))


def tiny_config(*overrides: str, variant: str = "smoke", name: str = "gpt_shakespeare_char"):
    """An experiment's smoke config, resolved against the generated data, with overrides."""
    from genzoo import data, experiment, workdir

    cfg = experiment.load(name, variant, overrides)
    return workdir.resolve(cfg, data.load(cfg.data))


def unbox(tree):
    """Plain arrays from a tree of boxed (logically partitioned) parameters."""
    is_box = lambda x: hasattr(x, "value")
    return jax.tree.map(lambda x: x.value if is_box(x) else x, tree, is_leaf=is_box)


@pytest.fixture(scope="session")
def make_config():
    return tiny_config


def run_steps(trainer, data, n):
    """(state, losses) after `n` steps from the trainer's initial state on `data`'s batches."""
    state = trainer.init_state()
    it = data.train_iterator(trainer.cfg.train.batch_size, trainer.cfg.train.seed)
    losses = []
    for _ in range(n):
        state, m = trainer.step(state, next(it))
        losses.append(float(m["loss"]))
    return state, losses


@functools.cache
def experiment_deps(name) -> dict:
    """Stand-ins for the runs an experiment requires: their smoke configs with initial
    parameters (what `Trainer` and `prepare_data` read of a run)."""
    from genzoo import experiment, models

    deps = {}
    for dep, spec in (experiment.load(name, "smoke").model.get("requires") or {}).items():
        cfg = tiny_config(name=Path(spec).name.removesuffix("_smoke"))
        params = unbox(models.get(cfg.model.family).init(jax.random.PRNGKey(0), cfg.model))
        deps[dep] = SimpleNamespace(cfg=cfg, params=params, path=f"untrained-{dep}", step=0)
    return deps


@functools.cache
def experiment_data(name):
    """An experiment's smoke data (generated), with what its required runs give it."""
    from genzoo import data, experiment, models, workdir

    cfg = experiment.load(name, "smoke")
    return workdir.with_deps(models.get(cfg.model.family), data.load(cfg.data),
                             experiment_deps(name))  # fmt: skip


def experiment_config(name, *overrides):
    """An experiment's smoke config with overrides, resolved against `experiment_data`."""
    from genzoo import experiment, workdir

    return workdir.resolve(experiment.load(name, "smoke", overrides), experiment_data(name))


def gpt2_byte_vocab() -> dict[str, int]:
    """GPT-2's 256 byte tokens as a vocab.json maps them (ids 0..255): its reversible map from
    bytes to printable characters, from its paper's code."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return {ch: i for i, ch in enumerate(chars.values())}


def tiny_gpt2_dir(folder: Path, drop: str = "", reshape: str = "") -> Path:
    """A tiny GPT-2 in Hugging Face's layout; `drop`/`reshape` spoil one tensor."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    from genzoo.data import tokenizers

    folder.mkdir()
    config = dict(model_type="gpt2", vocab_size=300, n_positions=64, n_embd=32, n_layer=1,
                  n_head=4)  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config))
    for name in tokenizers.GPT2_FILES:
        (folder / name).write_text("{}" if name.endswith(".json") else "#version: 0.2\n")
    d, rng = 32, np.random.default_rng(0)
    shapes = {"wte.weight": (300, d), "wpe.weight": (64, d), "ln_f.weight": (d,),
              "ln_f.bias": (d,), "h.0.ln_1.weight": (d,), "h.0.ln_1.bias": (d,),
              "h.0.ln_2.weight": (d,), "h.0.ln_2.bias": (d,),
              "h.0.attn.c_attn.weight": (d, 3 * d), "h.0.attn.c_attn.bias": (3 * d,),
              "h.0.attn.c_proj.weight": (d, d), "h.0.attn.c_proj.bias": (d,),
              "h.0.mlp.c_fc.weight": (d, 4 * d), "h.0.mlp.c_fc.bias": (4 * d,),
              "h.0.mlp.c_proj.weight": (4 * d, d), "h.0.mlp.c_proj.bias": (d,)}  # fmt: skip
    if reshape:
        shapes[reshape] = (shapes[reshape][0] + 1, *shapes[reshape][1:])
    tensors = {f"transformer.{k}": rng.normal(size=s).astype(np.float32)
               for k, s in shapes.items() if k != drop}  # fmt: skip
    save_file(tensors, str(folder / "model.safetensors"))
    return folder
