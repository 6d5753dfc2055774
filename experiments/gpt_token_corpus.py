"""GPT-2 (124M) on a token corpus larger than memory: nanoGPT's OpenWebText recipe.

    python nanoGPT/data/openwebtext/prepare.py           # writes train.bin (9B tokens), val.bin
    genzoo train gpt_token_corpus --set data.path=nanoGPT/data/openwebtext \\
        --set data.tokenizer_dir=runs/gpt2 --workdir runs/owt   # tokenizer: `genzoo import gpt2`

The corpus folder holds uint16 token ids (`train.bin`, `val.bin`); it is converted once into
array_record chunks and read by index while training, so host memory does not grow with it
(benchmarks/streaming_memory.py measures that). Batch 480 = 12 x 40 by gradient accumulation
on one device; on 8 GPUs set `train.grad_accum=5` (nanoGPT's split). Expect: validation loss
~2.85 after 600k steps (published by nanoGPT on 8 A100s, about 4 days); not run here: it
needs an accelerator pod. The `smoke`
variant trains a tiny model for seconds on a generated corpus, or on `data.path`.
"""

from genzoo import experiment

VARIANTS = ("smoke",)


def get_config(variant=None):
    c = experiment.load("gpt_shakespeare_char")
    c.experiment.description = "GPT-2 124M on a uint16 token corpus read from disk"
    c.model.update(
        vocab_size=-1, block_size=1024, num_layers=12, num_heads=12, width=768,
        dropout=0.0, dtype="bfloat16", loss_chunk=128,
    )  # fmt: skip
    c.data = dict(name="token_corpus", path="", tokenizer_dir="", seq_len=1024, synthetic_tokens=0)
    c.train.update(steps=600_000, batch_size=12 * 40, grad_accum=40, seed=1337)
    c.optim.update(lr=6e-4, min_lr=6e-5, warmup_steps=2000, b2=0.95, weight_decay=0.1)
    c.eval.update(every_steps=2000, max_batches=200)
    c.checkpoint.update(every_steps=2000, keep=3, keep_best="val/loss")
    if variant == "smoke":
        c.model.update(block_size=32, num_layers=2, num_heads=2, width=32, dtype="float32",
                       loss_chunk=16)  # fmt: skip
        c.data.update(seq_len=32, synthetic_tokens=200_000)  # unless data.path is given
        c.train.update(steps=20, batch_size=8, grad_accum=1)
        c.optim.update(warmup_steps=5, b2=0.99)
        c.eval.update(every_steps=10, max_batches=2)
        c.checkpoint.update(every_steps=10, keep=2)
        c.log.update(every_steps=5)
    return c
