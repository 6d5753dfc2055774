"""CLIP on the procedural shapes: a caption transformer and a small ViT, contrastive.

    genzoo train clip_shapes --variant cpu
    genzoo eval --workdir runs/clip_shapes --json   # loss, recall@1/5 (validation, heldout)

It scores and reranks the images `dalle_shapes` generates. Measured (cpu, 1500 steps, 15.5 min
on 2 CPU cores): image->text recall@1 85.3% (validation), 66.9% (held-out combinations).
"""

from genzoo.experiment import base_config

VARIANTS = ("smoke", "cpu")


def get_config(variant=None):
    c = base_config()
    c.model = dict(family="clip", vocab_size=-1, max_caption_len=-1, image_shape=(32, 32, 3),
                   patch=4, width=128, num_heads=4, mlp_hidden=512, text_layers=2, image_layers=4,
                   embed_dim=64, init_temperature=0.07, dropout=0.0, dtype="float32",
                   remat="none", scan_layers=False)  # fmt: skip
    c.data = dict(name="shapes", max_caption_len=12)
    c.train.update(steps=5000, batch_size=128, seed=0)
    c.optim.update(lr=5e-4, min_lr=5e-5, warmup_steps=200, weight_decay=0.1)
    c.eval.update(every_steps=1000, batch_size=250)
    c.eval.evaluators = {"clip_retrieval": dict(splits=("validation", "heldout"))}
    c.checkpoint.update(every_steps=1000, keep=2)
    c.log.every_steps = 50
    if variant == "cpu":  # <= 30 minutes on 2 CPU cores
        c.model.update(width=96, mlp_hidden=384, image_layers=3)
        c.train.update(steps=1500)
        c.eval.update(every_steps=500)
        c.checkpoint.update(every_steps=500)
    elif variant == "smoke":
        c.model.update(width=32, num_heads=2, mlp_hidden=64, text_layers=1, image_layers=1,
                       patch=8, embed_dim=16)  # fmt: skip
        c.train.update(steps=10, batch_size=16)
        c.optim.update(warmup_steps=2)
        c.eval.update(every_steps=10, batch_size=16, max_batches=2)
        c.checkpoint.update(every_steps=10)
        c.log.every_steps = 5
    return c
