"""Fine-tune the tiny-Shakespeare character GPT on the English Bible (WEB), whole or last layers.

    make demo                                                   # pretrains runs/demo
    genzoo train gpt_bible_finetune --variant cpu               # all layers, from runs/demo
    genzoo train gpt_bible_finetune --variant cpu --workdir runs/bible_last \
        --set train.trainable='block_3/*,ln_f/*'                # only the last block + final norm

Needs $GENZOO_DATA_DIR/bible-es-en/ (see ../shared/data). Bible characters missing from
Shakespeare's vocabulary are mapped to close ones (curly quotes to ', dashes to -).
Expect (cpu variant from `make demo`'s run, measured): Bible validation loss 1.986 before
fine-tuning; 1.389 after 500 steps of all layers; 1.556 training only the last block and
final norm (~1.5 min each on 2 CPU cores).
"""

from genzoo import experiment

VARIANTS = ("smoke", "cpu")


def get_config(variant=None):
    # The pretrained run's model, unchanged: only data, initialisation and optimizer differ.
    c = experiment.load("gpt_shakespeare_char", variant)
    c.experiment.description = "Fine-tune the Shakespeare char GPT on the English Bible"
    c.data.name = "bible_en_char"
    c.train.init_from = {None: "runs/gpt_shakespeare_char", "cpu": "runs/demo"}.get(variant, "")
    c.train.steps = {"smoke": 10}.get(variant, 500)
    c.optim.update(lr=3e-4, min_lr=3e-5, warmup_steps=50)
    c.eval.update(every_steps=100)
    c.checkpoint.update(every_steps=250)
    if variant == "smoke":  # random init: CI has no pretrained run
        c.optim.warmup_steps = 2
        c.eval.update(every_steps=10)
        c.checkpoint.update(every_steps=10)
    return c
