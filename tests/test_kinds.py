"""Kinds through the CLI and `genzoo.load`: translators, masked LMs, options per kind."""

import json
import logging

import numpy as np
import pytest

import genzoo
from genzoo import cli
from genzoo.errors import UserError


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _smoke_run(factory, experiment_name, *settings):
    workdir = factory.mktemp("kinds") / experiment_name
    argv = ["train", experiment_name, "--variant", "smoke", "--workdir", str(workdir)]
    assert (
        cli.main(argv + [x for s in ("log.progress=false", *settings) for x in ("--set", s)]) == 0
    )
    return workdir


@pytest.fixture(scope="module")
def translator_run(tmp_path_factory):
    return _smoke_run(tmp_path_factory, "transformer_bible_es_en", "train.steps=30")


@pytest.fixture(scope="module")
def bert_run(tmp_path_factory):
    return _smoke_run(tmp_path_factory, "bert_mlm_english")


def test_translate_api_equals_cli_and_file_mode(translator_run, tmp_path, capsys):
    model = genzoo.load(translator_run)
    # A line separator inside a line (U+2028) must not split it: output line i answers line i.
    texts = ["the king and queen", "my lord\u2028the king"]
    api = model.translate(texts, num_beams=2, max_new_tokens=8)
    assert len(api) == 2 and all(isinstance(t, str) for t in api)
    for bad, message in ((dict(max_new_tokens=0), "max_new_tokens must be at least 1"),
                         (dict(max_new_tokens=2.5), "max_new_tokens must be a whole number"),
                         (dict(num_beams=0), "num_beams must be >= 1")):  # fmt: skip
        with pytest.raises(UserError, match=message):  # 0 new tokens meant "the longest"
            model.translate(texts, **bad)
    with pytest.raises(UserError, match="texts must be strings, got None"):
        model.translate([None])
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    code, out, _ = run(
        capsys,
        "sample",
        "--workdir",
        translator_run,
        "--input",
        tmp_path / "in.txt",
        "--beams",
        "2",
        "--max-new-tokens",
        "8",
    )
    assert code == 0 and out.split("\n") == [*api, ""]
    code, _, _ = run(
        capsys,
        "sample",
        "--workdir",
        translator_run,
        "--input",
        tmp_path / "in.txt",
        "--output",
        tmp_path / "out.txt",
        "--beams",
        "2",
        "--max-new-tokens",
        "8",
    )
    assert code == 0 and (tmp_path / "out.txt").read_text().split("\n") == [*api, ""]


def test_the_translator_masks_the_padding_it_adds(translator_run, monkeypatch):
    """The API pads every source to the training length (one compile); the family must be
    told which slots are padding (test_transformer checks masked slots change nothing)."""
    from genzoo.data.tokenizers import EOS

    model = genzoo.load(translator_run)
    seen, real = [], model.family.translate

    def spy(params, cfg, src_BxS, valid_BxS, **kw):
        seen.append((src_BxS, np.asarray(valid_BxS)))
        return real(params, cfg, src_BxS, valid_BxS, **kw)

    monkeypatch.setattr(model.family, "translate", spy)  # the family module's function
    texts = ["the king and queen", "my lord"]
    model.translate(texts, num_beams=1, max_new_tokens=4)
    ((src_BxS, valid_BxS),) = seen
    lengths = [len(model.src_tok.encode(t)) + 1 for t in texts]  # + EOS
    assert valid_BxS.sum(1).tolist() == lengths + [0] * (len(src_BxS) - 2)
    assert src_BxS[0, lengths[0] - 1] == EOS and not valid_BxS[0, lengths[0] :].any()


def test_a_source_past_the_training_length_is_cut_with_a_warning(translator_run, caplog):
    model = genzoo.load(translator_run)
    long = "y dijo dios: sea la luz. " * 20
    assert len(model.src_tok.encode(long)) > model.src_len
    with caplog.at_level(logging.WARNING, logger="genzoo"):
        cut, short = model.translate([long, "la luz"], num_beams=1, max_new_tokens=4)
    assert [r.getMessage() for r in caplog.records] == [
        f"1 of 2 texts had more than the model's {model.src_len - 1} source tokens: each was cut "
        "there (translate them in shorter pieces)"
    ]
    # What the encoder read: the first src_len - 1 tokens, so the cut text translates alike.
    head = model.src_tok.decode(model.src_tok.encode(long)[: model.src_len - 1])
    assert model.translate([head], num_beams=1, max_new_tokens=4) == [cut]


def test_translator_eval_reports_text_metrics_and_copy_baseline(translator_run, capsys):
    code, out, _ = run(capsys, "eval", "--workdir", translator_run, "--json")
    f = json.loads(out)
    assert code == 0
    for key in ("loss", "perplexity", "bleu", "chrf", "rouge_l", "bleu_copy_baseline"):
        assert np.isfinite(f[key]), key
    assert f["bleu_signature"].startswith("nrefs:1|") and f["num_translations"] == 8
    assert "meteor" in f


def test_eval_on_a_user_provided_test_split(translator_run, capsys):
    code, out, _ = run(capsys, "eval", "--workdir", translator_run, "--split", "test", "--json")
    f = json.loads(out)
    assert code == 0 and f["split"] == "test" and f["num_translations"] == 8
    assert np.isfinite(f["loss"]) and f["num_tokens"] > 0


def test_fill_mask_and_encode(bert_run, capsys):
    mlm = genzoo.load(bert_run)
    assert mlm.fill_mask([]) == [] and mlm.encode([]) == []
    with pytest.raises(UserError, match="top_k must be at least 1"):
        mlm.fill_mask(["the [MASK]"], top_k=0)  # listed no fillers
    fills = mlm.fill_mask(["the king [MASK] the queen [MASK]"], top_k=3)
    assert len(fills) == 1 and len(fills[0]) == 2 and len(fills[0][0]) == 3
    probs = [p for _, p in fills[0][0]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
    (hidden,) = mlm.encode(["the king"])
    assert hidden.ndim == 2 and hidden.shape[1] == 32 and np.isfinite(hidden).all()
    # Batches of one (the logits of 10,000 texts at once took 30 GB) answer as one batch.
    texts = ["the king [MASK]", "my [MASK] lord and the queen", "[MASK]"]
    one, whole = mlm.fill_mask(texts, top_k=2, batch_size=1), mlm.fill_mask(texts, top_k=2)
    assert [[[w for w, _ in f] for f in t] for t in one] == [[[w for w, _ in f] for f in t]
                                                             for t in whole]  # fmt: skip
    for a, b in zip(mlm.encode(texts, batch_size=2), mlm.encode(texts), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # A word start and a piece inside a word read alike once decoded ("▁the", "the"): the
    # second is shown as WordPiece shows it, "##the".
    pieces = {i: mlm.tokenizer.id_piece(i) for i in range(mlm.tokenizer.vocab_size)}
    word = next(i for i, p in pieces.items() if p.startswith("▁") and p[1:].isalpha())
    inner = next(i for i, p in pieces.items() if p.isalpha())
    assert mlm._filler(word) == pieces[word][1:] and mlm._filler(inner) == "##" + pieces[inner]
    assert mlm._filler(mlm.tokenizer.piece_id("[SEP]")) == "[SEP]"
    with pytest.raises(UserError, match="longer than the model's"):  # before any batch runs
        mlm.encode(["the king"] + ["the king " * 40], batch_size=1)
    code, out, _ = run(capsys, "sample", "--workdir", bert_run, "--prompt", "my [MASK] lord")
    assert code == 0 and out.startswith("[MASK] 1:") and out.count("'") >= 10


def test_a_fine_tuned_bert_classifies_texts_in_the_api_and_the_cli(bert_run, tmp_path_factory,
                                                                   capsys):  # fmt: skip
    """The genre fine-tune could only be evaluated: now `classify` and `sample --prompt`."""
    genre_run = _smoke_run(tmp_path_factory, "bert_bible_genre")
    genre = genzoo.load(genre_run)
    capsys.readouterr()  # the training's output
    assert genre.class_names[0] == "law" and len(genre.class_names) == 7
    texts = ["and god said let there be light", "blessed are the meek", "the king"]
    probs = genre.classify(texts * 3, batch_size=4)  # three batches, one shape
    assert probs.shape == (9, 7) and np.allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(probs[:3], probs[3:6], atol=1e-6)
    np.testing.assert_allclose(genre.classify(texts[1:2])[0], probs[1], atol=1e-6)  # alone
    assert genre.classify([]).shape == (0, 7)
    from genzoo.kinds.masked_lm import CLS, SEP  # padded to max_len: as the text alone

    ids = [genre.tokenizer.piece_id(CLS), *genre.tokenizer.encode(texts[0]),
           genre.tokenizer.piece_id(SEP)]  # fmt: skip
    tokens_1xL = np.array([ids], np.int32)
    alone = genre.family.classify(genre.run.params, genre.run.cfg.model, tokens_1xL,
                                  0 * tokens_1xL, tokens_1xL > -1)  # fmt: skip
    # An untrained head keeps probabilities near 1/7: padding seen moves them by ~1e-5.
    np.testing.assert_allclose(probs[0], np.asarray(alone)[0], atol=1e-6)
    code, out, _ = run(capsys, "sample", "--workdir", genre_run, "--prompt", texts[0],
                       "--top-k", "3")  # fmt: skip
    best = np.argsort(-probs[0])[:3]
    assert code == 0 and out.split() == [x for k in best for x in
                                         (genre.class_names[k], f"{probs[0, k]:.3f}")]  # fmt: skip
    with pytest.raises(UserError, match="no fine-tuned classifier"):
        genzoo.load(bert_run).classify(texts)


def test_encode_gives_each_texts_own_states_whatever_the_padding(bert_run):
    """`encode` and `fill_mask` pad every text to the model's length (one compile): the
    states of a text must be those of the text alone, unpadded."""
    from genzoo.kinds.masked_lm import CLS, SEP

    mlm = genzoo.load(bert_run)
    cls, sep = mlm.tokenizer.piece_id(CLS), mlm.tokenizer.piece_id(SEP)
    texts = ["the king", "my lord and the queen of night"]
    for text, hidden_LxD in zip(texts, mlm.encode(texts), strict=True):
        ids = [cls, *mlm.tokenizer.encode(text), sep]
        tokens_1xL = np.array([ids], np.int32)
        alone_1xLxD, _ = mlm.family.encode(mlm.run.params, mlm.run.cfg.model, tokens_1xL,
                                           np.zeros_like(tokens_1xL), tokens_1xL > -1)  # fmt: skip
        assert len(ids) < mlm.max_len
        np.testing.assert_allclose(hidden_LxD, np.asarray(alone_1xLxD)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ("sample", "--workdir", "{tr}", "--prompt", "hola", "--temperature", "1"),
            "--temperature",
        ),
        (("sample", "--workdir", "{tr}", "--prompt", "hola", "--reconstruct"), "--reconstruct"),
        (("sample", "--workdir", "{tr}"), "--prompt"),
        (("sample", "--workdir", "{tr}", "--input", "{tmp}/none.txt"), "not a file"),
        (("sample", "--workdir", "{tr}", "--input", "{tmp}/latin1.txt"), "not UTF-8 text"),
        (("sample", "--workdir", "{bert}", "--prompt", "no mask here"), "[MASK]"),
        (("sample", "--workdir", "{bert}", "--prompt", "[MASK]", "--beams", "2"), "--beams"),
        (("sample", "--workdir", "{tr}", "--prompt", "x", "--temperature", "nan"), "temperature"),
    ],
)
def test_options_of_other_kinds_are_refused(
    argv, message, translator_run, bert_run, tmp_path, capsys
):
    argv = [a.format(tr=translator_run, bert=bert_run, tmp=tmp_path) for a in argv]
    (tmp_path / "latin1.txt").write_bytes("Señor\n".encode("latin-1"))
    code, out, err = run(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and out == ""


def test_unknown_model_key_and_impossible_shape_exit_2_untouched(tmp_path, capsys):
    for setting, word in (("model.widht=32", "widht"), ("model.num_heads=3", "divisible")):
        argv = [
            "train",
            "transformer_bible_es_en",
            "--variant",
            "smoke",
            "--workdir",
            tmp_path / "new",
            "--set",
            setting,
        ]
        if setting.startswith("model.widht"):
            # Unknown keys cannot be set from the command line at all; experiments can.
            code, _, err = run(capsys, *argv)
            assert code == 2 and "unknown config key" in err
            continue
        code, _, err = run(capsys, *argv)
        assert code == 2 and word in err and not (tmp_path / "new").exists()


def test_experiment_file_with_unknown_model_key_is_refused(tmp_path, capsys):
    path = tmp_path / "typo.py"
    path.write_text(
        "from genzoo import experiment\n"
        "VARIANTS = ('smoke',)\n"
        "def get_config(variant=None):\n"
        "    c = experiment.load('gpt_shakespeare_char', variant)\n"
        "    c.model.num_layer = 3  # typo of num_layers\n"
        "    return c\n"
    )
    code, _, err = run(capsys, "train", path, "--variant", "smoke", "--workdir", tmp_path / "w")
    assert code == 2 and "num_layer" in err and not (tmp_path / "w").exists()


def test_indivisible_parameter_on_a_mesh_names_it(tmp_path, capsys):
    # 2 layers x width 30 over fsdp=4: 30 does not divide into 4 shards.
    code, _, err = run(
        capsys,
        "train",
        "gpt_shakespeare_char",
        "--variant",
        "smoke",
        "--workdir",
        tmp_path / "m",
        "--set",
        "model.width=30",
        "--set",
        "model.num_heads=2",
        "--set",
        "mesh.fsdp=4",
        "--set",
        "mesh.data=2",
    )
    assert code == 2 and "parameter" in err and "30" in err and not (tmp_path / "m").exists()


def _language_model_experiments():
    from genzoo import experiment, kinds, models

    return [name for name, family, *_ in experiment.list_experiments()
            if kinds.of_family(models.get(family)).name == "language_model"
            and not experiment.load(name, "smoke").train.init_from]  # fmt: skip


# Text prompts: not for a corpus of bare ids (gpt_token_corpus: tests/test_corpus.py samples it).
@pytest.mark.parametrize(
    "name", [n for n in _language_model_experiments() if n != "gpt_token_corpus"]
)
def test_every_language_model_samples_rows_independently_and_scores(name, tmp_path, capsys):
    workdir = tmp_path / name
    argv = [
        "train",
        name,
        "--variant",
        "smoke",
        "--workdir",
        workdir,
        "--set",
        "log.progress=false",
    ]
    assert run(capsys, *argv)[0] == 0
    lm = genzoo.load(workdir)
    a, b = lm.generate(["\n", "\n"], max_new_tokens=24, temperature=1.0, seed=3)
    assert a != b  # each row its own randomness, with or without ragged prompt batches
    # `eos` and beams reach a family whose sampler lacks them (the HMM's) as the cut of the
    # text afterwards and as its own one-line refusal, not a TypeError.
    if len(lm.encode(a)) == len(a):  # characters: the cut text cannot hold its EOS
        (cut,) = lm.generate(["\n"], max_new_tokens=24, temperature=1.0, seed=3, eos=a[1])
        assert a[1] not in cut
    if name.startswith("hmm"):
        with pytest.raises(UserError, match="beams and repetition penalty do not apply"):
            lm.generate(["\n"], max_new_tokens=4, num_beams=2)
    (score,) = lm.score(["the king and queen"])
    assert np.isfinite(score) and score < 0
