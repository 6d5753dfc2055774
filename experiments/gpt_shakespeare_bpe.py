"""Subword GPT on tiny Shakespeare: a 2,000-piece sentencepiece BPE fit on the train split.

    genzoo train gpt_shakespeare_bpe --variant cpu
    genzoo eval --workdir runs/gpt_shakespeare_bpe --json     # bits_per_char vs the char model

The tokenizer is trained once and saved as WORKDIR/tokenizer.model (eval, sample and
resumes read it from there). `--set data.model_type=unigram` selects a unigram model.
Expect (cpu variant, measured): val loss 3.843 nats/token = 2.20 bits/char after 2000 steps
(~8 min on 2 CPU cores), against 2.44 bits/char for the same model over characters: each
128-piece window holds ~2.5x more text. Train loss 3.26 at the end: it overfits the 300k
training pieces, so more data or dropout would help.
"""

from genzoo import experiment

VARIANTS = ("smoke", "cpu")


def get_config(variant=None):
    # The character experiment's model and optimizer; pieces instead of characters.
    c = experiment.load("gpt_shakespeare_char", variant)
    c.experiment.description = "GPT over sentencepiece BPE pieces of tiny Shakespeare"
    c.data = dict(
        name="tinyshakespeare_bpe", seq_len=c.data.seq_len, vocab_size=2000, model_type="bpe"
    )
    if variant == "smoke":
        c.data.vocab_size = 400
    return c
