"""Spanish -> English translation of Bible verses with the 2017 encoder-decoder Transformer.

    genzoo train transformer_bible_es_en --variant cpu        # 2 CPU cores, ~29 min
    genzoo eval --workdir runs/transformer_bible_es_en --json  # bleu, chrf, rouge_l, meteor
    genzoo sample --workdir runs/transformer_bible_es_en --prompt "En el principio creó Dios"

Needs $GENZOO_DATA_DIR/bible-es-en/ (see ../shared/data); a test.tsv placed beside the
other two files becomes the `test` split (`genzoo eval --split test`).
Target: >= 20 sacreBLEU on the validation split with beam search (cpu variant). Measured
(cpu variant, 2-core AMD EPYC with AVX-512, 28.8 min wall, 2026-11-28): sacreBLEU 28.5, chrF
49.3, ROUGE-L 0.549, METEOR 0.464 on the 1,234 validation verses (beam 4; the first run, on an
earlier host in ~57 min: 28.7); the copy baseline scores BLEU 0.35.
"""

from genzoo.experiment import base_config

VARIANTS = ("smoke", "cpu")


def get_config(variant=None):
    c = base_config()
    c.model = dict(
        family="transformer",
        src_vocab_size=-1,  # from the data's tokenizer
        tgt_vocab_size=-1,
        num_layers=6,
        num_heads=8,
        width=512,
        mlp_hidden=2048,
        dropout=0.1,
        label_smoothing=0.1,
        post_ln=True,
        share_embeddings=True,
        max_decode_len=128,
        dtype="float32",
        remat="none",  # or full / dots: recompute activations in the backward pass
        scan_layers=False,  # True: one lax.scan over the blocks (compiles one block, not N)
    )
    c.data = dict(name="bible_es_en", tokenizer="joint", vocab_size=8000, pack=True, max_src_len=96,
                  max_tgt_len=96)  # fmt: skip
    c.train.update(steps=20000, batch_size=128, seed=0)
    c.optim.update(schedule="inverse_sqrt", lr=7e-4, warmup_steps=4000, b1=0.9, b2=0.98,
                   eps=1e-9, weight_decay=0.0, clip_norm=1.0)  # fmt: skip
    c.eval.update(every_steps=1000, batch_size=64)
    c.eval.evaluators.translation = dict(beams=4, length_penalty=0.6, every_steps=0)
    c.checkpoint.update(every_steps=1000, keep=2)
    c.log.every_steps = 50
    if variant == "cpu":  # ~4 epochs of a small Transformer in 60 minutes on 2 CPU cores
        # Packed rows of 128 tokens (~3.4 verses each, 90% real tokens); no dropout: the
        # budget ends long before overfitting starts (measured 2.6 s/step, 2,570 tokens/s).
        c.model.update(num_layers=3, num_heads=4, width=256, mlp_hidden=1024, dropout=0.0,
                       max_decode_len=96)  # fmt: skip
        c.data.update(vocab_size=6000, max_src_len=128, max_tgt_len=128)
        c.train.update(steps=1200, batch_size=32)
        c.optim.update(lr=1.5e-3, warmup_steps=300)
        # The curve while training: loss on the first 512 validation verses, BLEU on the first
        # 100 (one full evaluation costs 2 minutes here); `genzoo eval` scores the whole split.
        c.eval.update(every_steps=400, max_batches=8)
        c.checkpoint.update(every_steps=400)
        c.eval.evaluators.translation.update(every_steps=400, train_max_examples=100)
    elif variant == "smoke":  # seconds: CI and trying the CLI
        c.model.update(num_layers=1, num_heads=2, width=32, mlp_hidden=64, max_decode_len=16)
        c.data.update(vocab_size=512, max_src_len=24, max_tgt_len=24)
        c.train.update(steps=10, batch_size=8)
        c.optim.update(warmup_steps=5)
        c.eval.update(every_steps=10, max_batches=2, batch_size=8)
        c.eval.evaluators.translation.update(max_examples=8, beams=2)
        c.checkpoint.update(every_steps=10)
        c.log.every_steps = 5
    return c
