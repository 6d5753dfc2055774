"""Compiled programs kept on disk, so that a second launch of the same run neither traces
nor compiles its train step.

XLA's persistent compilation cache skips the compile but not what comes before it: its key
is the lowered program, so every launch still traces and lowers the step (~2.5-3.5 s for
the `make demo` model on a 2-core CPU, against ~1 s to load the executable). This store
keys an executable by everything that decides it instead: the resolved config, the
arguments' types, the compiler options, the devices, jax's settings, the environment
variables genzoo/jax/XLA read, the installed libraries and the source of genzoo, the
experiment and any other code outside the installed packages. Any change is a miss, which
compiles as before; a hit loads the serialised executable (`jax.experimental.
serialize_executable`) and skips tracing altogether.

Only executables this process compiled are stored: one that XLA:CPU loaded from the
persistent cache loses its kernels when serialised again ("Function ... not found" when
run), so a launch whose compile hit that cache stores nothing (`compiled_fresh`).

Within one process the executables are also kept in memory under the same key (the newest
`KEEP`), so a process that builds a Trainer for the same config twice (a test suite, a
notebook) traces once, even where XLA's persistent cache answered the compile and nothing
could be stored on disk.

Loading runs the stored bytes (pickle, native code), as XLA's own cache does: the folder is
as trusted as the user's other caches; never point it at files from elsewhere.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import logging
import os
import pickle
import platform
import sys
import threading
from collections import OrderedDict
from importlib import metadata
from pathlib import Path

import jax
from jax.experimental import serialize_executable

from genzoo.errors import env_choice

log = logging.getLogger(__name__)

# The newest executables kept per store folder, by count and by size (a CPU step of the demo
# is ~2 MB; a GPU step of a large model can be hundreds).
KEEP, KEEP_BYTES = 32, 4 << 30
_ENV_PREFIXES = ("GENZOO_", "JAX_", "XLA_", "TF_", "CUDA_", "NCCL_", "LIBTPU_", "TPU_")
# Where files are and how the host starts: no program changes with them (what the data holds
# reaches the key through the resolved config and the arguments' types).
_HOST_ONLY_ENV = frozenset({"GENZOO_DATA_DIR", "GENZOO_CACHE_DIR", "GENZOO_WORDNET_DIR",
                            "GENZOO_EXPERIMENTS_DIR", "GENZOO_EXECUTABLES", "GENZOO_OFFLINE",
                            "GENZOO_OVERLAP", "GENZOO_MALLOC", "GENZOO_SHAPES_SPLITS"})  # fmt: skip
# What decides a compiled program among the installed packages (with genzoo's own source).
_DISTRIBUTIONS = ("jax", "jaxlib", "flax", "optax", "chex", "numpy", "ml_collections",
                  "jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt",
                  "libtpu", "libtpu-nightly")  # fmt: skip
_PREFIXES = tuple({Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})
_local = threading.local()  # per thread: did this compile come from XLA's persistent cache?
_listening = False
# The newest executables this process compiled or loaded, by path (a key; the file may not exist).
_kept: OrderedDict[Path, object] = OrderedDict()
_kept_lock = threading.Lock()


def _on_event(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _local.cache_hit = True


def watch_compiles() -> None:
    """Listens for XLA's persistent-cache hits (once per process)."""
    global _listening
    if not _listening:
        jax.monitoring.register_event_listener(_on_event)
        _listening = True


class compiled_fresh:
    """`with compiled_fresh() as fresh: compile...`; then `fresh.value` says whether that
    compile ran XLA (True) or came from the persistent cache (False). Per thread."""

    def __enter__(self):
        _local.cache_hit = False
        self.value = None
        return self

    def __exit__(self, *exc):
        self.value = not _local.cache_hit
        return False


def _installed(module: str, path: Path) -> bool:
    """Whether `module` (file `path`) belongs to an installed library: under the interpreter's
    prefixes or a site-packages folder, or part of a released (non-editable) distribution
    wherever it lies (`pip install --target DIR` puts wheels outside both, as on the GPU
    machines: read as source, which of their modules a launch imported changed the key)."""
    parts = set(path.parts)
    return (
        "site-packages" in parts
        or "dist-packages" in parts
        or any(prefix in path.parents for prefix in _PREFIXES)
        or module.partition(".")[0] in _released_packages()
    )


@functools.cache
def _released_packages() -> frozenset[str]:
    """Top-level import names of the installed distributions, editable installs excepted
    (their source is someone's work in progress: read as source)."""
    editable = {dist.metadata["Name"] for dist in metadata.distributions() if _editable(dist)}
    return frozenset(top for top, names in metadata.packages_distributions().items()
                     if not editable.intersection(names))  # fmt: skip


def _editable(dist: metadata.Distribution) -> bool:
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except ValueError:
        return False
    return bool(direct.get("dir_info", {}).get("editable"))


def _source_digest() -> str:
    """Content of genzoo's package (every file, loaded or not) and of every loaded module
    outside the installed packages and the standard library (an experiment, a user's own
    models). Installed packages count by their versions (`_versions`): which of their
    modules are loaded differs between a launch that builds its data and one that does not."""
    package = Path(__file__).resolve().parent
    files = set(package.rglob("*.py"))
    for module in list(sys.modules.values()):
        name = getattr(module, "__file__", None)
        source = _outside_packages(getattr(module, "__name__", ""), name) if name else None
        if source is not None:
            files.add(source)
    digest = hashlib.sha256()
    for path in sorted(files):
        try:
            digest.update(f"{path}\n".encode() + path.read_bytes())
        except OSError:  # a module whose file went away: part of the key as such
            digest.update(f"{path}:gone\n".encode())
    return digest.hexdigest()


@functools.cache
def _outside_packages(module: str, file: str) -> Path | None:
    """`file`'s resolved path where module `module` is read as source, else None. Cached: a
    module's file does not move, and resolving thousands of them took ~0.5 s per launch."""
    path = Path(file).resolve()
    return None if _installed(module, path) else path


def _versions() -> dict:
    found = {}
    for name in _DISTRIBUTIONS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


@functools.cache
def host_cpu() -> str:
    """The host CPU's model and feature flags (Linux's /proc/cpuinfo; else the platform's
    name). XLA:CPU compiles for the host's features, and its loader refuses an executable
    built for features the host lacks: keyed by device kind ("cpu") alone, hosts of two CPU
    models sharing a cache folder would each find the other's programs and recompile."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    first = text.split("\n\n", 1)[0]
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    wanted = ("vendor_id", "cpu family", "model", "model name", "flags", "Features", "CPU part")
    return json.dumps({k.strip(): v.strip() for k, v in fields.items() if k.strip() in wanted})


def _environment() -> dict:
    devices = [(d.id, d.platform, d.device_kind, d.process_index) for d in jax.devices()]
    return {
        "python": sys.version,
        "versions": _versions(),
        "devices": devices,
        "host_cpu": host_cpu() if any(d.platform == "cpu" for d in jax.devices()) else "",
        "processes": jax.process_count(),
        "config": {k: repr(v) for k, v in sorted(jax.config.values.items())},
        "env": {
            k: v
            for k, v in sorted(os.environ.items())
            if k.startswith(_ENV_PREFIXES) and k not in _HOST_ONLY_ENV
        },  # fmt: skip
        "source": _source_digest(),
    }


class Store:
    """Executables of one run's programs under `folder` (None: in memory only), keyed by
    `context` (the resolved config as JSON) and the environment, which is read once, here:
    what is imported later (while tracing) is covered by the installed packages' stamps."""

    def __init__(self, folder: Path | None, context: str):
        self.folder = None if folder is None else Path(folder)
        environment = json.dumps(_environment(), sort_keys=True, default=repr)
        self.fingerprint = hashlib.sha256((context + "\n" + environment).encode()).hexdigest()
        watch_compiles()

    def narrowed(self, context: str) -> Store:
        """This store for programs that `context` (e.g. the mesh's devices) also decides."""
        store = copy.copy(self)
        store.fingerprint = hashlib.sha256(f"{self.fingerprint}\n{context}".encode()).hexdigest()
        return store

    def path(self, name: str, types, compiler_options) -> Path:
        key = repr((self.fingerprint, name, types, sorted((compiler_options or {}).items())))
        name = f"{hashlib.sha256(key.encode()).hexdigest()}.jaxexec"
        return (self.folder or Path("<memory>")) / name

    def load(self, path: Path):
        """The executable kept or stored at `path`, or None (missing, unreadable or stale)."""
        with _kept_lock:
            kept = _kept.get(path)
            if kept is not None:
                _kept.move_to_end(path)
        if kept is not None:
            if self.folder is not None:
                with contextlib.suppress(OSError):  # recently used: kept by `_prune`
                    os.utime(path)
            return kept
        if self.folder is None:
            return None
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        try:
            device_ids, executable, in_tree, out_tree = pickle.loads(blob)
            by_id = {d.id: d for d in jax.devices()}
            compiled = serialize_executable.deserialize_and_load(
                executable, in_tree, out_tree, execution_devices=[by_id[i] for i in device_ids]
            )
        except Exception as err:  # written by another jax, truncated: compile instead
            log.warning("ignoring stored executable %s: %s", path.name, err)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recently used: kept by `_prune`
        self.keep(path, compiled)
        return compiled

    def keep(self, path: Path, compiled) -> None:
        """Keeps `compiled` in this process's memory under `path`'s key (any compile: XLA's
        persistent cache may have answered it, which bars only the disk)."""
        with _kept_lock:
            _kept[path] = compiled
            _kept.move_to_end(path)
            while len(_kept) > KEEP:
                _kept.popitem(last=False)

    def save(self, path: Path, compiled) -> None:
        """Writes `compiled` (atomically: a reader never sees half a file) and keeps the
        `KEEP` newest. A failure only costs the next launch its compile."""
        try:
            # The devices it runs on, in the order of its device assignment (a mesh may hold
            # some of the devices, in its own order); jax would load it onto all of them.
            devices = compiled._executable._unloaded_executable.device_list
            blob = pickle.dumps(
                ([d.id for d in devices], *serialize_executable.serialize(compiled))
            )
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
            tmp.write_bytes(blob)
            os.replace(tmp, path)
            self._prune()
        except Exception as err:  # a backend without serialisation, a full disk
            log.warning("compiled program not stored: %s", err)

    def _prune(self) -> None:
        entries = sorted(((p.stat(), p) for p in self.folder.glob("*.jaxexec")),
                         key=lambda e: e[0].st_mtime, reverse=True)  # fmt: skip
        total = 0
        for i, (st, path) in enumerate(entries):
            total += st.st_size
            if i >= KEEP or (i > 0 and total > KEEP_BYTES):  # the newest always stays
                path.unlink(missing_ok=True)


# Settings only the host loop reads: changing them between launches keeps the programs.
# `train.steps` decides the schedules only through `optim.decay_steps` and `optim.prune_end`,
# which the resolved config spells out (and which stay in the key): a run resumed for longer
# loads its programs.
HOST_ONLY = ("log", "checkpoint", "train.max_seconds", "train.steps")


def config_context(cfg) -> str:
    """A resolved config as the store keys it: whole, but for `HOST_ONLY`."""
    tree = json.loads(json.dumps(cfg.to_dict(), default=list))
    for path in HOST_ONLY:
        *parents, leaf = path.split(".")
        node = tree
        for name in parents:
            node = node.get(name, {})
        node.pop(leaf, None)
    return json.dumps(tree, sort_keys=True)


def forget() -> None:
    """Drops the executables kept in memory (the disk's stay)."""
    with _kept_lock:
        _kept.clear()


def in_memory(cfg) -> Store:
    """A store that keeps `cfg`'s programs in this process's memory only (a Trainer built
    again for the same config loads them instead of tracing)."""
    return Store(None, config_context(cfg))


def for_training(context: str) -> Store | None:
    """`genzoo train`'s store, beside XLA's persistent cache; None without that cache, with
    several processes (each would need its own shard of the executable) or with
    GENZOO_EXECUTABLES=0."""
    folder = jax.config.jax_compilation_cache_dir
    if not folder or jax.process_count() > 1 or env_choice("GENZOO_EXECUTABLES") == "0":
        return None
    return Store(Path(folder) / "genzoo-executables", context)
