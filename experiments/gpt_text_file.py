"""Character GPT on a text file of yours: nanoGPT's shakespeare_char recipe on any UTF-8 text.

    genzoo train gpt_text_file --set data.path=input.txt --workdir runs/mytext
    genzoo sample --workdir runs/mytext --prompt "Once upon"
    genzoo train gpt_text_file --variant bpe --set data.path=input.txt   # 2k BPE pieces

The first 90% of the file trains, the rest validates (nanoGPT's prepare.py); the alphabet (or
the BPE model) is kept in the workdir. Model and schedule are the demo's (4x128, ctx 128,
2000 steps, a few minutes on 2 CPU cores); `--set model.num_layers=6 ...` for more.
Expect: on tiny Shakespeare's input.txt this is the demo run: the same ids, batches and
figure, validation loss 1.6927 (measured). The `smoke` variant trains 20 steps, on tiny
Shakespeare when no data.path is given.

To fine-tune the demo on your text, read the text in the demo's alphabet (a character the
demo lacks is a one-line error naming it; `--set data.unknown_chars=drop` drops such characters,
`--set "data.unknown_chars= "` reads them as spaces):

    genzoo train gpt_text_file --set data.path=input.txt --set data.alphabet_from=runs/demo \
        --init-from runs/demo --set train.steps=500 --set optim.lr=3e-4 --workdir runs/mine
"""

from genzoo import experiment

VARIANTS = ("smoke", "bpe")


def get_config(variant=None):
    c = experiment.load("gpt_shakespeare_char", "smoke" if variant == "smoke" else "cpu")
    c.experiment.description = ""
    c.data = dict(name="text_file", path="", tokenizer="char", vocab_size=2000,
                  alphabet_from="", unknown_chars="refuse", seq_len=c.data.seq_len)  # fmt: skip
    # Without data.path the smoke variant reads tiny Shakespeare's input.txt (tests, trying it).
    c.data.shakespeare_if_unset = variant == "smoke"
    if variant == "bpe":
        c.data.tokenizer = "bpe"
    return c
