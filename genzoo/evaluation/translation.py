"""The `translation` evaluator: translate a whole split, score it against its references.

Reports sacreBLEU (with its signature), chrF, ROUGE-L and METEOR of the model's
translations, and the same BLEU/chrF for the source copied as its own translation (the
floor any translator must clear: names and numbers survive copying).
"""

from __future__ import annotations

from genzoo.evaluation import text


def evaluate(run, split: str, *, beams: int = 4, length_penalty: float = 0.6,
             max_examples: int = -1, batch_size: int = 64) -> dict:  # fmt: skip
    from genzoo.kinds.translator import Translator

    texts = run.data.texts[split]
    sources, references = texts["src"], texts["tgt"]
    if max_examples > 0:
        sources, references = sources[:max_examples], references[:max_examples]
    hypotheses = Translator(run).translate(
        sources, num_beams=beams, length_penalty=length_penalty, batch_size=batch_size,
        progress=bool(run.cfg.log.progress),
    )  # fmt: skip
    figures = text.scores(hypotheses, references)
    copy = text.corpus_bleu_chrf(sources, references)
    figures.update(bleu_copy_baseline=copy["bleu"], chrf_copy_baseline=copy["chrf"])
    figures["num_translations"] = len(hypotheses)
    return figures
