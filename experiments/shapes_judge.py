"""The attribute judge: a conv classifier of the procedural scenes' shapes, colours, sizes
and relation, which scores what `dalle_shapes` draws (and gives FID features).

    genzoo train shapes_judge --variant cpu
    genzoo eval --workdir runs/shapes_judge --json                 # seen combinations
    genzoo eval --workdir runs/shapes_judge --split heldout --json # held-out combinations

Measured (cpu, 2000 steps, 2.9 min): every attribute of a real scene right 81.9% (validation),
79.2% (heldout); a judge that cannot read real held-out scenes could not judge generated ones.
"""

from genzoo.experiment import base_config

VARIANTS = ("smoke", "cpu")


def get_config(variant=None):
    c = base_config()
    c.model = dict(family="judge", features=256, widths=(32, 64), image_shape=(32, 32, 3))
    # Trained on `any` (held-out pairs included): it must read what the model under test never saw.
    c.data = dict(name="shapes", max_caption_len=12, splits=("any", "validation", "heldout"),
                  train_split="any")  # fmt: skip
    c.train.update(steps=3000, batch_size=128, seed=0)
    c.optim.update(lr=2e-3, min_lr=1e-5, warmup_steps=100, weight_decay=0.05)
    c.eval.update(every_steps=1000, batch_size=500)
    c.checkpoint.update(every_steps=1000, keep=1)
    c.log.every_steps = 50
    if variant == "cpu":  # <= 30 minutes on 2 CPU cores
        c.train.update(steps=2000)
    elif variant == "smoke":
        c.model.update(features=16, widths=(8, 16))
        c.train.update(steps=10, batch_size=16)
        c.eval.update(every_steps=10, batch_size=16, max_batches=2)
        c.checkpoint.update(every_steps=10)
        c.log.every_steps = 5
    return c
