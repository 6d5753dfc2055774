"""DALL·E on the procedural shapes: a Transformer over [caption; 8x8 image codes], with
classifier-free guidance and CLIP reranking. The last link of the text-to-image chain.

    make chain                      # dvae_shapes, clip_shapes, shapes_judge, then this (cpu)
    genzoo train dalle_shapes --variant cpu          # once the three runs below exist
    genzoo sample --workdir runs/dalle_shapes --prompt "a small red circle above a large green square" --candidates 16 --keep 4 --guidance 3
    genzoo eval --workdir runs/dalle_shapes --json   # attribute accuracy seen / held-out, CLIP score, FID

It requires the image tokenizer (runs/dvae_shapes: its codes, computed once and cached
with the data) and CLIP (runs/clip_shapes: reranking); the `text_to_image` evaluator
judges samples with runs/shapes_judge. Measured (cpu, 1600 steps, 26.7 min on 2 CPU cores):
0.68 nats per image code; scenes judged right 74% (seen) / 59% (held-out) with guidance 3 and
reranking of 8 (100 captions a split: ~4.5 points of noise); a re-run (2026-12-06) on 500
captions a split: 70% / 57%; another (2026-12-08, per-draw keys): 65% / 53% (README).
"""  # noqa: E501

from genzoo.experiment import base_config

VARIANTS = ("smoke", "cpu")


def get_config(variant=None):
    c = base_config()
    c.model = dict(
        family="dalle",
        vocab_size=-1,
        max_caption_len=-1,
        image_vocab_size=-1,
        image_grid=(8, 8),
        num_layers=6,
        num_heads=8,
        width=256,
        dropout=0.0,
        text_loss_weight=1.0 / 8,
        caption_dropout=0.1,
        dtype="float32",
        remat="none",  # or full / dots: recompute activations in the backward pass
        scan_layers=False,  # True: one lax.scan over the blocks (compiles one block, not N)
        requires={"image_tokenizer": "runs/dvae_shapes", "clip": "runs/clip_shapes"},
    )
    c.data = dict(name="shapes", max_caption_len=12)
    c.train.update(steps=10000, batch_size=64, seed=0)
    c.optim.update(lr=1e-3, min_lr=1e-4, warmup_steps=200, weight_decay=0.1)
    c.eval.update(every_steps=1000, batch_size=250)
    c.eval.evaluators = {
        "text_to_image": dict(
            judge_workdir="runs/shapes_judge", num_captions=100, candidates=8, guidance=3.0
        )  # fmt: skip
    }
    c.checkpoint.update(every_steps=1000, keep=2)
    c.log.every_steps = 50
    if variant == "cpu":  # <= 30 minutes on 2 CPU cores
        c.model.update(num_layers=4, num_heads=4, width=192)
        c.train.update(steps=1600)
        c.eval.update(every_steps=1000)
        c.checkpoint.update(every_steps=500)
    elif variant == "smoke":
        c.model.update(num_layers=1, num_heads=2, width=32)
        c.model.requires = {"image_tokenizer": "runs/dvae_shapes_smoke",
                            "clip": "runs/clip_shapes_smoke"}  # fmt: skip
        c.eval.evaluators = {
            "text_to_image": dict(
                judge_workdir="runs/shapes_judge_smoke", num_captions=4, candidates=2, guidance=3.0
            )  # fmt: skip
        }
        c.train.update(steps=10, batch_size=8)
        c.optim.update(warmup_steps=2)
        c.eval.update(every_steps=10, batch_size=16, max_batches=2)
        c.checkpoint.update(every_steps=10)
        c.log.every_steps = 5
    return c
