"""Character-level GPT on tiny Shakespeare (nanoGPT's "baby GPT").

    genzoo train gpt_shakespeare_char --workdir runs/shakespeare
    genzoo train gpt_shakespeare_char --variant cpu     # the README demo, 2 CPU cores

Expect: val loss 1.4697 after 5000 steps on one A100 (published by nanoGPT);
the `cpu` variant reaches val loss 1.693 (2.44 bits/char) in 2000 steps: measured 1.6927 in
423 s on a 2-core AMD EPYC (first launch, compile included); on a 2-core EPYC with AVX-512
`make demo` took 3:47 in all (training, evaluation, samples); ~4 min on a 2-core Intel Xeon.
"""

from genzoo.experiment import base_config

VARIANTS = ("smoke", "cpu")


def get_config(variant=None):
    c = base_config()
    c.model = dict(
        family="gpt",
        vocab_size=-1,  # from the data: 65 characters
        block_size=256,
        num_layers=6,
        num_heads=6,
        width=384,
        dropout=0.2,
        use_bias=True,
        ln_epsilon=1e-5,
        gelu_approximate=False,
        dtype="float32",
        remat="none",  # or full / dots: recompute activations in the backward pass
        scan_layers=False,  # True: one lax.scan over the blocks (compiles one block, not N)
        loss_chunk=0,  # > 0: logits for this many positions at a time (large vocabularies)
    )
    c.data = dict(name="tinyshakespeare_char", seq_len=256)
    c.train.update(steps=5000, batch_size=64, seed=1337)
    c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=100, b2=0.99, weight_decay=0.1, clip_norm=1.0)
    c.eval.update(every_steps=250, max_batches=-1)
    c.checkpoint.update(every_steps=500, keep=3)
    if variant == "cpu":  # nanoGPT's laptop settings (4x128, no dropout), ~5 minutes on 2 cores
        c.model.update(block_size=128, num_layers=4, num_heads=4, width=128, dropout=0.0)
        c.data.seq_len = 128
        c.train.update(steps=2000, batch_size=16)
        c.optim.update(lr=2e-3, warmup_steps=100)
        c.eval.update(every_steps=500)
        c.checkpoint.update(every_steps=500)
    elif variant == "smoke":  # seconds on a CPU: for CI and for trying the CLI
        c.model.update(block_size=32, num_layers=2, num_heads=2, width=32, dropout=0.0)
        c.data.seq_len = 32
        c.train.update(steps=20, batch_size=8)
        c.optim.update(warmup_steps=5)
        c.eval.update(every_steps=10, max_batches=2)
        c.checkpoint.update(every_steps=10, keep=2)
        c.log.update(every_steps=5)
    return c
