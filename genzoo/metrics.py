"""Metrics: JSONL and TensorBoard writers, loss-curve pictures, and the matmul peak for MFU."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from genzoo.data import sources

log = logging.getLogger(__name__)


class MetricsWriter:
    """Appends `{"step": s, **metrics}` lines to workdir/metrics.jsonl and TensorBoard events."""

    def __init__(self, workdir: Path, tensorboard: bool = True):
        self.path = Path(workdir) / "metrics.jsonl"
        self._file = open(self.path, "a")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        clean = {k: float(v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in clean.items():
                self._tb.add_scalar(key, value, int(step))

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


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
        points = [(r["step"], r[key]) for r in rows if key in r]
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


def measure_matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best achieved float32 FLOP/s of one jitted n x n matmul on the default device."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops(configured: float) -> float:
    """The configured peak, or one measured once per device kind and cached."""
    if configured > 0:
        return configured
    device = jax.devices()[0]
    cache = sources.cache_dir() / "peak_flops.json"
    key = f"{device.platform}:{device.device_kind}"
    table = json.loads(cache.read_text()) if cache.is_file() else {}
    if key not in table:
        table[key] = measure_matmul_peak()
        log.info("measured matmul peak %.1f GFLOP/s on %s", table[key] / 1e9, key)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(table))
    return float(table[key])


def host_scalars(tree) -> dict:
    return {k: float(np.asarray(v)) for k, v in jax.device_get(tree).items()}
