"""Metrics: JSONL and TensorBoard writers, loss-curve pictures, and the matmul peak for MFU."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from genzoo.data import sources

log = logging.getLogger(__name__)


class MetricsWriter:
    """Appends `{"step": s, **metrics}` lines to workdir/metrics.jsonl and TensorBoard events.

    tensorboardX is imported on a thread of its own (~2 s on a 2-core CPU, which the first
    step used to wait for); rows written before it is ready reach TensorBoard when it is."""

    def __init__(self, workdir: Path, tensorboard: bool = True, enabled: bool = True,
                 start: bool = True):  # fmt: skip
        """`enabled=False` (processes other than 0 of a multi-process run) writes nothing;
        `start=False` leaves TensorBoard's import to `start_tensorboard` (the trainer calls
        it once the train step is compiled: the import would slow tracing down, both
        holding the GIL)."""
        self.enabled = enabled
        self._file = self._tb = self._opening = None
        self._pending: list[tuple[int, dict]] = []  # rows waiting for TensorBoard
        if not enabled:
            return
        self.path = Path(workdir) / "metrics.jsonl"
        self._file = open(self.path, "a")
        if _ends_torn(self.path):  # a killed run's half line stays on its own
            self._file.write("\n")
        if tensorboard:
            self._opening = threading.Thread(target=self._open_tensorboard, args=(workdir,),
                                             name="genzoo-tensorboard", daemon=True)  # fmt: skip
            if start:
                self.start_tensorboard()

    def start_tensorboard(self) -> None:
        if self._opening is not None and self._opening.ident is None:
            self._opening.start()

    def _open_tensorboard(self, workdir: Path) -> None:
        try:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
        except Exception as err:  # metrics.jsonl still has every row
            log.warning("no TensorBoard events: %s", err)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": int(step), **json_safe(clean)}) + "\n")
        self._file.flush()
        self._pending.append((int(step), clean))
        if self._opening is None or self._opening.ident and not self._opening.is_alive():
            self._flush_tensorboard()

    def _flush_tensorboard(self) -> None:
        rows, self._pending = self._pending, []
        if self._tb is not None:
            for step, clean in rows:
                for key, value in clean.items():
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._opening is not None:
            if self._pending:  # rows TensorBoard has not seen (never started: nothing to open)
                self.start_tensorboard()
            if self._opening.ident is not None:
                self._opening.join()
                self._flush_tensorboard()
        try:
            if self._file is not None:
                self._file.close()  # raises where its last rows could not be written
        finally:
            if self._tb is not None:
                try:
                    self._tb.close()
                except OSError as err:  # metrics.jsonl holds every row; it says if it failed
                    log.info("TensorBoard events incomplete: %s", err)


def _ends_torn(path: Path) -> bool:
    """Whether a non-empty file's last byte is not a newline (read: that byte only)."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return False
        f.seek(-1, 2)
        return f.read(1) != b"\n"


def json_safe(figures: dict) -> dict:
    """Strict JSON: NaN and infinities become null (json.dumps would write bare NaN)."""
    return {k: None if isinstance(v, float) and not np.isfinite(v) else v
            for k, v in figures.items()}  # fmt: skip


def read(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl, skipping torn lines (a run killed mid-write)."""
    rows = []
    with open(path, errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


def plot_curves(workdir: Path) -> Path | None:
    """Draws the train loss and the headline validation figure against step (plots/loss.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read(Path(workdir) / "metrics.jsonl")
    fig, ax = plt.subplots(figsize=(6, 4))
    val_keys = [k for r in rows for k in r if k.startswith("val/")]
    val_key = val_keys[0] if val_keys else "val/loss"  # the family's headline figure
    for key, label in (("train/loss", "train loss"), (val_key, f"validation {val_key[4:]}")):
        points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if points:
            ax.plot(
                *zip(*sorted(points), strict=True),
                label=label,
                marker="o" if key == val_key else None,
            )
    if not ax.lines:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("nats")
    ax.legend()
    ax.grid(alpha=0.3)
    out = Path(workdir) / "plots" / "loss.png"
    out.parent.mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def save_image_grid(images_NxHxWxC: np.ndarray, path: Path, columns: int = 0) -> Path:
    """Writes images in [0, 1] as one PNG grid (2-pixel gaps), atomically."""
    from PIL import Image

    n, h, w, c = images_NxHxWxC.shape
    cols = columns or max(1, int(np.ceil(np.sqrt(n))))
    rows = -(-n // cols)
    grid = np.ones((rows * (h + 2) + 2, cols * (w + 2) + 2, c), np.float32)
    for i, image in enumerate(images_NxHxWxC):
        r, col = divmod(i, cols)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + col * (w + 2) : 2 + col * (w + 2) + w] = (
            image
        )
    pixels = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
    pil = Image.fromarray(pixels[..., 0] if c == 1 else pixels)
    sources.write_atomic(Path(path), lambda f: pil.save(f, format="PNG"))
    return Path(path)


def measure_matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best achieved float32 FLOP/s of one jitted n x n matmul on the default device (the best
    of several: a peak, so a moment of load elsewhere on the machine does not lower it)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


# Vendors' dense peaks (FLOP/s) by device kind, for the compute dtype; float32 on NVIDIA is
# TF32 (XLA's default matmul precision there). First match wins: specific names first.
KNOWN_PEAKS = (
    ("H100 PCIe", {"bfloat16": 756e12, "float32": 378e12}),
    ("H100", {"bfloat16": 989e12, "float32": 495e12}),
    ("H200", {"bfloat16": 989e12, "float32": 495e12}),
    ("A100", {"bfloat16": 312e12, "float32": 156e12}),
    ("TPU v4", {"bfloat16": 275e12}),
    ("TPU v5 lite", {"bfloat16": 197e12}),
    ("TPU v5e", {"bfloat16": 197e12}),
    ("TPU v5", {"bfloat16": 459e12}),  # v5p reports itself as "TPU v5"
    ("TPU v6", {"bfloat16": 918e12}),  # v6e ("TPU v6 lite")
)


def known_peak(device, dtype: str = "float32") -> tuple[float, str]:
    """(peak FLOP/s, where it comes from) for `device` computing in `dtype`: the vendor's
    figure for known accelerators (TPUs: their bf16 peak, as matmuls run there), else a
    measured float32 matmul rate (CPUs), cached per device kind."""
    for name, table in KNOWN_PEAKS:
        if name in device.device_kind:
            value = table.get(dtype, table["bfloat16"])
            return value, f"{device.device_kind} {dtype} dense peak (vendor)"
    return _measured_peak(device), f"{device.device_kind} measured float32 matmul"


def peak_flops(configured: float, dtype: str = "float32") -> tuple[float, str]:
    """The peak MFU divides by: `train.peak_flops` when set, else `known_peak`."""
    if configured > 0:
        return configured, "train.peak_flops"
    return known_peak(jax.devices()[0], dtype)


def _peak_key(device) -> str:
    """A measured peak's cache key: the device kind and, on CPUs (all of kind "cpu"), what sets
    their rate, so a home folder shared by other hosts or a process pinned to fewer cores
    measures again rather than divide by another machine's figure."""
    key = f"{device.platform}:{device.device_kind}"
    return f"{key}:{_cpu_signature()}" if device.platform == "cpu" else key


def cpu_info() -> dict:
    """The CPU model, core count and vector-instruction flags (they decide its matmul rate)."""
    info = {"machine": platform.machine(), "cores": os.cpu_count()}
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        info["model"] = next(
            x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")
        )
        flags = next(x.split(":", 1)[1].split() for x in lines if x.startswith("flags"))
        info["flags"] = sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except (OSError, StopIteration):
        pass
    return info


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores or 1


def _cpu_signature() -> str:
    """'model|N cores|hash of the vector extensions' (VMs often show only the vendor's name);
    cores are those this process may use."""
    info = cpu_info()
    cores = usable_cores()
    digest = hashlib.sha256(",".join(info.get("flags", [])).encode()).hexdigest()[:8]
    return f"{info.get('model') or info['machine']}|{cores} cores|{digest}"


def _measured_peak(device) -> float:
    # v2: peaks cached before 2026-12-06 were measured beside the start-up compiles (low).
    cache = sources.cache_dir() / "peak_flops_v2.json"
    key = _peak_key(device)
    try:
        table = json.loads(cache.read_text()) if cache.is_file() else {}
        table = table if isinstance(table, dict) else {}
    except (OSError, ValueError):
        table = {}  # a torn cache file is measured again, never fatal
    if not isinstance(table.get(key), (int, float)) or table[key] <= 0:
        table[key] = measure_matmul_peak()
        log.info("measured matmul peak %.1f GFLOP/s on %s", table[key] / 1e9, key)
        cache.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(table).encode()
        sources.write_atomic(cache, lambda f: f.write(text))
    return float(table[key])


def host_scalars(tree) -> dict:
    return {k: float(np.asarray(v)) for k, v in jax.device_get(tree).items()}


class LogLines:
    """The training bar where stderr is not a terminal (a Slurm or nohup log): tqdm's
    carriage returns there pile up as thousands of redraws, so a plain line every
    `interval` seconds says step, rate, ETA and the last loss instead."""

    def __init__(self, total: int, initial: int, interval: float = 60.0):
        self.total, self.n, self.interval, self.postfix = total, initial, interval, ""
        self.last, self.last_n = time.monotonic(), initial

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last < self.interval:
            return
        # The rate since the last line: the first step's compile would skew one from the start.
        rate = (self.n - self.last_n) / max(now - self.last, 1e-9)
        self.last, self.last_n = now, self.n
        left = int((self.total - self.n) / rate) if rate > 0 else 0
        clock = f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
        line = (f"step {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%), "
                f"{rate:.3g} step/s, {clock} left")  # fmt: skip
        line += f", {self.postfix}" if self.postfix else ""
        print(line, file=sys.stderr, flush=True)  # where tqdm draws

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def write(self, line: str) -> None:
        print(line, flush=True)  # on stdout, as `tqdm.write` prints

    def close(self) -> None:
        pass


def progress_bar(total: int, initial: int, enabled: bool):
    """tqdm on a terminal, `LogLines` in a log file, a silent tqdm when disabled."""
    from tqdm.auto import tqdm

    if enabled and not sys.stderr.isatty():
        return LogLines(total, initial)
    return tqdm(total=total, initial=initial, disable=not enabled, unit="step",
                dynamic_ncols=True)  # fmt: skip
