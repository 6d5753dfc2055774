"""Scores of decoded text against references: sacreBLEU, chrF, ROUGE-L and METEOR.

BLEU and chrF come from sacrebleu (with its signature string, so figures are comparable
with published ones), ROUGE-L (F-measure, averaged over sentences) from rouge-score, and
METEOR from nltk with WordNet 3.0 read from Debian's `wordnet-base` files
(`/usr/share/wordnet`, or `$GENZOO_WORDNET_DIR`). Without WordNet, `meteor` is None and
`meteor_reason` says why: never a crash.
"""

from __future__ import annotations

import functools
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from genzoo.data import sources

# WordNet 3.0's lexicographer files, in id order (Debian's package does not ship `lexnames`).
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant "
    "noun.possession noun.process noun.quantity noun.relation noun.shape noun.state "
    "noun.substance noun.time verb.body verb.change verb.cognition verb.communication "
    "verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_WORDNET_FILES = [f"{k}.{p}" for k in ("data", "index") for p in ("noun", "verb", "adj", "adv")]
_WORDNET_FILES += [f"{p}.exc" for p in ("noun", "verb", "adj", "adv")]


@functools.cache
def wordnet():
    """(nltk WordNet reader, None) or (None, why not)."""
    source = Path(os.environ.get("GENZOO_WORDNET_DIR", "/usr/share/wordnet"))
    missing = [f for f in _WORDNET_FILES if not (source / f).is_file()]
    if missing:
        return None, f"WordNet not found in {source} (apt install wordnet-base)"
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _Reader(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):  # this *is* WordNet 3.0: no mapping, no OMW
            return None

    # nltk reads corpora only under its data roots: a copy in genzoo's cache, made once.
    root = sources.cache_dir() / "nltk_data"
    target = root / "corpora" / "wordnet"
    if not (target / "lexnames").is_file():
        target.mkdir(parents=True, exist_ok=True)
        for name in _WORDNET_FILES:
            shutil.copyfile(source / name, target / name)
        lex = "".join(f"{i:02d}\t{name}\t0\n" for i, name in enumerate(_LEXNAMES))
        sources.write_atomic(target / "lexnames", lambda f: f.write(lex.encode()))
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available"
        return _Reader(str(target), None), None


def scores(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF (sacrebleu), mean ROUGE-L F and mean METEOR, all 0-100 scale
    except METEOR and ROUGE-L (0-1, as their libraries report them)."""
    from rouge_score import rouge_scorer

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    out = corpus_bleu_chrf(hypotheses, references)
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    out["rouge_l"] = float(
        np.mean(
            [
                rouge.score(r, h)["rougeL"].fmeasure
                for h, r in zip(hypotheses, references, strict=True)
            ]
        )
    )
    out.update(meteor(hypotheses, references))
    return out


def corpus_bleu_chrf(hypotheses: list[str], references) -> dict:
    """sacreBLEU's corpus BLEU (default 13a tokenisation) with its signature, and chrF.

    `references`: one reference per hypothesis, or a list of such reference streams.
    """
    import sacrebleu

    streams = [references] if isinstance(references[0], str) else list(references)
    bleu, chrf = sacrebleu.metrics.BLEU(), sacrebleu.metrics.CHRF()
    return {
        "bleu": float(bleu.corpus_score(hypotheses, streams).score),
        "bleu_signature": str(bleu.get_signature()),
        "chrf": float(chrf.corpus_score(hypotheses, streams).score),
    }


def meteor(hypotheses: list[str], references: list[str]) -> dict:
    wn, reason = wordnet()
    if wn is None:
        return {"meteor": None, "meteor_reason": reason}
    from nltk.translate.meteor_score import meteor_score

    values = [
        meteor_score([r.lower().split()], h.lower().split(), wordnet=wn)
        for h, r in zip(hypotheses, references, strict=True)
    ]
    return {"meteor": float(np.mean(values))}
