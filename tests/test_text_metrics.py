"""Text scores: sacreBLEU's own example values, identical text, ROUGE-L, METEOR's fallback."""

import pytest

from genzoo.evaluation import text

# sacrebleu's README example: two reference streams.
SYS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
REFS = [
    ["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
    ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."],
]


def test_sacrebleu_readme_example_values():
    scores = text.corpus_bleu_chrf(SYS, REFS)
    assert scores["bleu"] == pytest.approx(48.53, abs=0.01)
    assert scores["chrf"] == pytest.approx(59.73, abs=0.01)
    assert scores["bleu_signature"].startswith("nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp")


def test_identical_text_scores_perfectly():
    refs = ["in the beginning god created the heavens and the earth", "and the earth was void"]
    s = text.scores(refs, refs)
    assert s["bleu"] == pytest.approx(100.0) and s["chrf"] == pytest.approx(100.0)
    assert s["rouge_l"] == pytest.approx(1.0)
    assert s["meteor"] is None or s["meteor"] > 0.99


def test_unrelated_text_scores_low():
    s = text.scores(["completely unrelated tokens here"], ["in the beginning was the word"])
    assert s["bleu"] < 5 and s["rouge_l"] < 0.2


def test_meteor_without_wordnet_is_null_with_reason(monkeypatch, tmp_path):
    text.wordnet.cache_clear()
    monkeypatch.setenv("GENZOO_WORDNET_DIR", str(tmp_path))
    try:
        out = text.meteor(["a b"], ["a b"])
        assert out["meteor"] is None and "wordnet" in out["meteor_reason"].lower()
    finally:
        text.wordnet.cache_clear()


@pytest.mark.skipif(text.wordnet()[0] is None, reason="wordnet-base not installed")
def test_meteor_uses_wordnet_synonyms():
    # "sitting" and "sat" share a stem/synset: METEOR credits them, BLEU does not.
    out = text.meteor(["the cat was sitting on the mat"], ["the cat sat on the mat"])
    assert 0.7 < out["meteor"] < 1.0
