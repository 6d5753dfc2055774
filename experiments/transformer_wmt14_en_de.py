"""English -> German WMT 2014 with Transformer-base, for accelerator users.

    genzoo train transformer_wmt14_en_de --workdir runs/wmt14      # TFDS wmt14_translate/de-en

Published: 27.3 BLEU on newstest2014 (Vaswani et al. 2017, base model, 100k steps on 8 P100s,
~25k source + ~25k target tokens per batch, checkpoint averaging, beam 4, alpha 0.6).
The data comes from TFDS (`tfds build wmt14_translate/de-en` once, into $TFDS_DATA_DIR);
a joint 37k sentencepiece vocabulary is fit on 1M training sentences and kept in the workdir.
Not run on this project's CPU machines: the tests build it and take one step on synthetic data.
"""

from genzoo.experiment import base_config

VARIANTS = ("smoke",)


def get_config(variant=None):
    c = base_config()
    c.model = dict(family="transformer", src_vocab_size=-1, tgt_vocab_size=-1, num_layers=6,
                   num_heads=8, width=512, mlp_hidden=2048, dropout=0.1, label_smoothing=0.1,
                   post_ln=True, share_embeddings=True, max_decode_len=256,
                   remat="none", scan_layers=False)  # fmt: skip
    c.data = dict(name="wmt14_en_de", vocab_size=37000, max_src_len=128, max_tgt_len=128,
                  tokenizer_sentences=1_000_000, synthetic_examples=0)  # fmt: skip
    c.train.update(steps=100_000, batch_size=256)
    c.optim.update(schedule="inverse_sqrt", lr=7e-4, warmup_steps=4000, b2=0.98, eps=1e-9,
                   weight_decay=0.0, clip_norm=0.0)  # fmt: skip
    c.eval.update(every_steps=5000, batch_size=128, split="validation")
    c.eval.evaluators.translation = dict(beams=4, length_penalty=0.6, every_steps=0)
    c.checkpoint.update(every_steps=5000, keep=3)
    c.log.every_steps = 100
    if variant == "smoke":  # a tiny model on random token pairs (tests also step the base model)
        c.model.update(num_layers=1, num_heads=2, width=32, mlp_hidden=64)
        c.data.update(synthetic_examples=64, max_src_len=16, max_tgt_len=16, vocab_size=512)
        c.train.update(steps=1, batch_size=8)
        c.eval.update(every_steps=0, batch_size=8, max_batches=1)
        c.eval.evaluators = {}
        c.checkpoint.update(every_steps=1)
    return c
