"""A user's own model family (`bigram.py`, beside this file) on tiny Shakespeare's characters.

    cd docs/examples && genzoo train bigram_char.py --workdir /tmp/bigram

Expect: validation loss 2.490 nats = 3.593 bits/char after 300 steps (8 s in all on 2 CPU
cores), the bigram counts' 3.581 (the README's bits-per-char table). The `smoke` variant trains
30 steps; tests/test_user_family.py runs it from a copy of this folder.
"""

from genzoo.experiment import base_config

VARIANTS = ("smoke",)


def get_config(variant=None):
    c = base_config()
    c.model = dict(family="bigram", vocab_size=-1)  # a module importable from this folder
    c.data = dict(name="tinyshakespeare_char", seq_len=64)
    c.train.update(steps=300, batch_size=32, seed=0)
    c.optim.update(lr=0.1, min_lr=0.01, warmup_steps=10, weight_decay=0.0)
    c.eval.update(every_steps=100, max_batches=-1)
    c.checkpoint.update(every_steps=100, keep=1)
    if variant == "smoke":
        c.train.steps = 30
        c.eval.update(every_steps=30, max_batches=4)
        c.checkpoint.update(every_steps=30)
    return c
