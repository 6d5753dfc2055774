"""Per-device training memory of a GPT under (data, fsdp, tensor) meshes, estimated by formula
and checked against XLA's own memory analysis of the compiled step for a small model.

    .venv/bin/python benchmarks/memory_estimate.py      # GPT-2 XL table + the CPU check

Estimate (bytes per device), N parameters, micro-batch b per data shard, sequence s, width h,
layers l, heads a, compute bytes c (2 for bf16, 4 for fp32):
- parameters 4N, gradients 4N, AdamW moments 8N: all sharded over fsdp x tensor;
- activations per layer without rematerialisation s*b*h*(10 + 24/t + 5*a*s/(h*t)) * c/2
  (Korthikanti et al. 2022, tensor parallel t, no sequence parallelism); with full
  rematerialisation one layer's input per layer (2*s*b*h * c/2) plus one layer's activations;
- logits s*b*V*(c + 4) (the compute-dtype logits and float32 log-softmax).
Writes benchmarks/results/memory_estimate.json.
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import numpy as np
from common import char_gpt_config, write_report

from genzoo.trainer import Trainer

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Model:
    layers: int
    width: int
    heads: int
    seq: int
    vocab: int

    @property
    def params(self) -> int:
        return 12 * self.layers * self.width**2 + (self.vocab + self.seq) * self.width


def estimate(m: Model, batch: int, data: int, fsdp: int, tensor: int, compute_bytes: int,
             remat: bool) -> dict:  # fmt: skip
    """Bytes per device, by part."""
    shards = fsdp * tensor
    b = batch // (data * fsdp)  # the batch splits over data and fsdp
    s, h, a, t = m.seq, m.width, m.heads, tensor
    per_layer = s * b * h * (10 + 24 / t + 5 * a * s / (h * t)) * compute_bytes / 2
    kept = 2 * s * b * h * compute_bytes / 2
    activations = m.layers * kept + per_layer if remat else m.layers * per_layer
    out = {
        "params": 4 * m.params / shards,
        "grads": 4 * m.params / shards,
        "adam": 8 * m.params / shards,
        "activations": activations,
        "logits": s * b * m.vocab * (compute_bytes + 4) / t,
    }
    out["total"] = sum(out.values())
    return out


def compiled_check(steps_batch: int = 16) -> dict:
    """XLA's memory analysis of genzoo's compiled step (baby GPT, fp32, one CPU device)
    against the estimate for the same model."""
    cfg = char_gpt_config(None, [f"train.batch_size={steps_batch}", "model.dropout=0.0"])
    trainer = Trainer(cfg, devices=jax.devices()[:1])
    B, L = cfg.train.batch_size, cfg.data.seq_len
    batch = {k: np.zeros((B, L), np.int32) for k in ("inputs", "targets")}
    batch["mask"] = np.ones((B, L), np.float32)
    state = trainer.init_state()
    batch = jax.tree.map(jax.numpy.asarray, batch)
    compiled = trainer.train_step.lower(state, batch, trainer.deps).compile()
    analysis = compiled.memory_analysis()
    c = cfg.model
    m = Model(c.num_layers, c.width, c.num_heads, L, -(-c.vocab_size // 128) * 128)
    est = estimate(m, B, 1, 1, 1, 4, remat=False)
    return {
        "model": dataclasses.asdict(m),
        "batch": B,
        "xla_arguments_gib": analysis.argument_size_in_bytes / GIB,
        "xla_temp_gib": analysis.temp_size_in_bytes / GIB,
        "estimate_state_gib": (est["params"] + est["adam"]) / GIB,
        "estimate_step_temp_gib": (est["grads"] + est["activations"] + est["logits"]) / GIB,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/memory_estimate.json")
    args = p.parse_args()
    xl = Model(layers=48, width=1600, heads=25, seq=1024, vocab=50304)  # GPT-2 XL, 1.56 B
    rows = []
    print(f"GPT-2 XL ({xl.params / 1e9:.2f} B parameters), global batch 256, bf16 compute")
    header = ("devices", "data", "fsdp", "tensor", "state GiB", "act GiB", "remat act", "total GiB")
    print("{:>7} {:>5} {:>5} {:>6} {:>9} {:>8} {:>9} {:>10}".format(*header))
    for data, fsdp, tensor in [(8, 1, 1), (1, 8, 1), (2, 4, 1), (1, 4, 2), (32, 8, 1),
                               (64, 4, 1), (16, 16, 1), (32, 4, 2)]:  # fmt: skip
        plain = estimate(xl, 256, data, fsdp, tensor, 2, remat=False)
        remat = estimate(xl, 256, data, fsdp, tensor, 2, remat=True)
        state = plain["params"] + plain["grads"] + plain["adam"]
        row = dict(devices=data * fsdp * tensor, data=data, fsdp=fsdp, tensor=tensor,
                   state_gib=state / GIB, activations_gib=plain["activations"] / GIB,
                   remat_activations_gib=remat["activations"] / GIB,
                   total_gib=plain["total"] / GIB,
                   total_remat_gib=remat["total"] / GIB)  # fmt: skip
        rows.append(row)
        cells = (row["devices"], data, fsdp, tensor, row["state_gib"], row["activations_gib"],
                 row["remat_activations_gib"], row["total_gib"])  # fmt: skip
        print("{:>7} {:>5} {:>5} {:>6} {:>9.1f} {:>8.1f} {:>9.1f} {:>10.1f}".format(*cells))
    check = compiled_check()
    print(f"check, baby GPT fp32 batch {check['batch']} on one CPU device: XLA arguments "
          f"{check['xla_arguments_gib']:.3f} GiB vs estimated state "
          f"{check['estimate_state_gib']:.3f}; XLA temporaries {check['xla_temp_gib']:.3f} GiB "
          "vs estimated grads+activations+logits "
          f"{check['estimate_step_temp_gib']:.3f}")  # fmt: skip
    write_report(args.out, {"gpt2_xl": rows, "check": check})


if __name__ == "__main__":
    main()
