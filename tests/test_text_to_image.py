"""The text-to-image chain end to end at smoke size: `genzoo chain`, the cached codes,
the judge and retrieval evaluators, sampling with reranking, and what is refused."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

import genzoo
from genzoo import cli, kinds, workdir
from genzoo.data import shapes
from genzoo.evaluation.retrieval import recall_at
from genzoo.models import judge


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """runs/{dvae_shapes,clip_shapes,shapes_judge}_smoke and runs/dalle_smoke, by one command."""
    root = tmp_path_factory.mktemp("chain")
    old = os.getcwd()
    os.chdir(root)
    try:
        argv = ["chain", "dalle_shapes", "--variant", "smoke", "--workdir", "runs/dalle_smoke"]
        assert cli.main(argv) == 0
        yield root
    finally:
        os.chdir(old)


def _tree_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        digest.update(str(p.relative_to(path)).encode())
        if p.is_file():
            digest.update(p.read_bytes())
    return digest.hexdigest()


def test_chain_trains_every_link_then_skips_them(chain, capsys):
    runs = chain / "runs"
    for name in ("dvae_shapes_smoke", "clip_shapes_smoke", "shapes_judge_smoke", "dalle_smoke"):
        assert (runs / name / "checkpoints" / "10").is_dir(), name
    cfg = json.loads((runs / "dalle_smoke" / "config.json").read_text())
    assert cfg["model"]["requires"]["image_tokenizer"].endswith("dvae_shapes_smoke@10")
    assert cfg["model"]["image_vocab_size"] == 16 and cfg["model"]["image_grid"] == [8, 8]
    before = _tree_digest(runs)
    os.chdir(chain)
    assert cli.main(["chain", "dalle_shapes", "--variant", "smoke", "--workdir",
                     "runs/dalle_smoke"]) == 0  # fmt: skip
    assert capsys.readouterr().out.count("skipping") == 4
    assert _tree_digest(runs) == before


def test_a_link_holding_another_variant_is_refused_before_anything_trains(
    chain, capsys, monkeypatch
):
    """Skipping it would hand a smoke model to the next link and to evaluation; finding it
    after training the links before it would cost their training."""
    os.chdir(chain)
    runs = chain / "runs"
    before = _tree_digest(runs)
    trains = []
    monkeypatch.setattr(cli, "_cmd_train", lambda args: trains.append(args.workdir))
    # The cpu chain's first links (runs/dvae_shapes...) are untrained here; its target holds smoke.
    code = cli.main(["chain", "dalle_shapes", "--variant", "cpu", "--workdir", "runs/dalle_smoke"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "runs/dalle_smoke holds a run of dalle_shapes --variant smoke" in err
    assert trains == [] and _tree_digest(runs) == before


def test_a_link_is_trained_when_it_reaches_its_experiments_steps(chain, monkeypatch):
    from genzoo import chain as chain_lib
    from genzoo import experiment

    os.chdir(chain)
    assert chain_lib.trained("runs/dvae_shapes_smoke", "dvae_shapes", "smoke")
    assert not chain_lib.trained("runs/nowhere", "dvae_shapes", "smoke")
    load = experiment.load

    def longer(*args, **kwargs):  # the experiment now asks for more steps than were run
        cfg = load(*args, **kwargs)
        cfg.train.steps = 20
        return cfg

    monkeypatch.setattr(experiment, "load", longer)
    assert not chain_lib.trained("runs/dvae_shapes_smoke", "dvae_shapes", "smoke")


def test_codes_come_from_the_tokenizer_and_are_cached(chain):
    os.chdir(chain)
    run = workdir.open_run(Path("runs/dalle_smoke"))
    tokenizer = kinds.api_of(run.deps["image_tokenizer"])
    images, labels, _, _ = run.data.splits["validation"]
    np.testing.assert_array_equal(
        labels["codes"][:8], tokenizer.encode(images[:8].astype(np.float32) / 255.0)
    )
    cached = list((Path(os.environ["GENZOO_CACHE_DIR"]) / "codes").glob("*.npz"))
    assert cached, "codes were not cached"


def test_generate_keeps_the_best_by_clip_and_sample_writes_a_grid(chain, capsys):
    os.chdir(chain)
    model = kinds.load("runs/dalle_smoke")
    captions = ["a small red circle", "a large blue star above a small white cross"]
    drawn, drawn_scores = model.generate(captions, candidates=4, keep=4, ranked=False, seed=3)
    kept, scores = model.generate(captions, candidates=4, keep=2, seed=3)
    # Draw j's key is its own: the same draws in three batches of three (the last padded) as
    # in one of eight.
    thirds, _ = model.generate(captions, candidates=4, keep=4, ranked=False, seed=3, batch_size=3)
    np.testing.assert_allclose(thirds, drawn, atol=1e-5)
    assert kept.shape == (2, 2, 32, 32, 3) and 0 <= kept.min() and kept.max() <= 1
    for row in range(2):
        best = np.sort(drawn_scores[row])[::-1][:2]
        np.testing.assert_allclose(scores[row], best, rtol=1e-5)
    out = chain / "grid.png"
    code = cli.main(["sample", "--workdir", "runs/dalle_smoke", "--prompt",
                     "a small red circle | a large green star", "--candidates", "3", "--keep", "2",
                     "--guidance", "2", "--out", str(out)])  # fmt: skip
    assert code == 0 and out.stat().st_size > 1000
    assert "a large green star: CLIP scores" in capsys.readouterr().out


def test_a_moved_chain_draws_and_scores_without_its_data_set(chain, monkeypatch):
    """DALL·E and its CLIP keep their caption vocabulary (words.json): drawing and scoring
    read no data set (for DALL·E, one whose images the dVAE would encode)."""
    os.chdir(chain)
    captions = ["a small red circle", "a large blue star above a small white cross"]
    opened = workdir.open_run(Path("runs/dalle_smoke"))
    assert opened.tokenizers["tokens"].words == opened.data.tokenizer.words
    here = kinds.load("runs/dalle_smoke").generate(captions, candidates=2, keep=1, seed=5)

    def no_data_set(*args, **kwargs):
        raise AssertionError("the data set was loaded")

    monkeypatch.setattr(genzoo.data, "load", no_data_set)
    moved = kinds.load("runs/dalle_smoke").generate(captions, candidates=2, keep=1, seed=5)
    np.testing.assert_array_equal(moved[0], here[0])
    np.testing.assert_allclose(moved[1], here[1], rtol=1e-6)
    clip = kinds.load("runs/clip_shapes_smoke")
    assert clip.score(here[0][:, 0], captions).shape == (2, 2)


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "a small red cat"], "outside the caption vocabulary: cat"),
    (["--candidates", "2", "--keep", "3"], "keep <= candidates"),
    (["--beams", "2"], "--beams does not apply"),
    (["--guidance", "nan"], "guidance must be a finite number >= 0"),
    (["--guidance", "-1"], "guidance must be a finite number >= 0"),
    (["--guidance", "inf"], "guidance must be a finite number >= 0"),
    (["--out", "grid.jpg"], "give a file name ending in .png"),  # PNG bytes in a .jpg
    (["--out", "runs"], "give a file name ending in .png"),  # a folder: an IsADirectoryError
])  # fmt: skip
def test_bad_sampling_requests_are_one_line_errors(chain, capsys, argv, message):
    os.chdir(chain)
    assert cli.main(["sample", "--workdir", "runs/dalle_smoke", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_eval_reports_every_setting_with_finite_figures(chain, capsys):
    os.chdir(chain)
    assert cli.main(["eval", "--workdir", "runs/dalle_smoke", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    for subset in ("seen", "heldout"):
        for setting in ("g1/first", "g1/reranked", "g3/first", "g3/reranked"):
            for name in ("scene_accuracy", "shape_accuracy", "relation_accuracy", "clip_score",
                         "fid"):  # fmt: skip
                value = figures[f"{subset}/{setting}/{name}"]
                assert np.isfinite(value)
                if name.endswith("accuracy"):
                    assert 0.0 <= value <= 1.0
    # Reranking maximises the CLIP score: never below one draw's, above it somewhere (all
    # four settings' first draws the best of their two by chance: odds of 1 in 16^4).
    score = lambda setting: figures[f"{setting}/clip_score"]
    gains = [score(f"{subset}/{g}/reranked") - score(f"{subset}/{g}/first")
             for subset in ("seen", "heldout") for g in ("g1", "g3")]  # fmt: skip
    assert min(gains) >= 0 and max(gains) > 0
    assert np.isfinite(figures["image_nll"])


def test_clip_retrieval_figures(chain, capsys):
    os.chdir(chain)
    assert cli.main(["eval", "--workdir", "runs/clip_shapes_smoke", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    for split in ("validation", "heldout"):
        r1, r5 = figures[f"{split}/i2t_recall@1"], figures[f"{split}/i2t_recall@5"]
        assert 0.0 <= r1 <= r5 <= 1.0
        assert 0.0 <= figures[f"{split}/t2i_recall@1"] <= figures[f"{split}/t2i_recall@5"] <= 1.0


def test_a_missing_dependency_is_refused_before_anything_is_written(chain, capsys):
    os.chdir(chain)
    target = chain / "runs" / "dalle_orphan"
    code = cli.main(["train", "dalle_shapes", "--variant", "smoke", "--workdir", str(target),
                     "--set", "model.requires.clip=runs/nowhere"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "runs/nowhere" in err and "\n" not in err
    assert not target.exists()


def test_the_image_apis_refuse_bad_shapes_and_codes_and_take_empty_inputs(chain):
    from genzoo.errors import UserError

    os.chdir(chain)
    tokenizer = genzoo.load("runs/dvae_shapes_smoke")
    with pytest.raises(UserError, match=r"images must be \[N, 32, 32, 3\] for this model"):
        tokenizer.encode(np.zeros((2, 28, 28, 1)))
    with pytest.raises(UserError, match=r"codes must be in \[0, 16\), got 16..16"):
        tokenizer.decode(np.full((1, 8, 8), 16))  # a gather would clamp it to code 15
    with pytest.raises(UserError, match=r"codes must be \[N, 8, 8\], got \[1, 4, 4\]"):
        tokenizer.decode(np.zeros((1, 4, 4)))
    with pytest.raises(UserError, match="codes must be whole numbers"):
        tokenizer.decode(np.full((1, 8, 8), 2.5))
    assert (
        tokenizer.decode(np.full((1, 8, 8), 2.0)) == tokenizer.decode(np.full((1, 8, 8), 2))
    ).all()
    none = tokenizer.encode(np.zeros((0, 32, 32, 3)))
    assert none.shape == (0, 8, 8) and none.dtype == np.int32
    clip = genzoo.load("runs/clip_shapes_smoke")
    with pytest.raises(UserError, match=r"images must be \[N, 32, 32, 3\]"):
        clip.encode_images(np.zeros((2, 28, 28, 1)))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(clip.encode_images(pixels), clip.encode_images(pixels / 255.0),
                               atol=1e-6)  # fmt: skip
    overshoot = np.clip(pixels / 255.0 * 1.08 - 0.04, -0.04, 1.04)  # a resize's, clipped
    np.testing.assert_allclose(clip.encode_images(overshoot),
                               clip.encode_images(np.clip(overshoot, 0, 1)), atol=1e-6)  # fmt: skip
    width = clip.encode_texts(["a small red square"]).shape[1]
    assert clip.encode_texts([]).shape == (0, width)
    assert clip.encode_images(np.zeros((0, 32, 32, 3))).shape == (0, width)
    with pytest.raises(UserError, match="batch_size must be at least 1, got 0"):
        clip.encode_texts(["a small red square"], batch_size=0)  # range()'s step of 0
    with pytest.raises(UserError, match="one text per image, got 1 texts for 2 images"):
        clip.pair_scores(np.zeros((2, 32, 32, 3)), ["a small red square"])  # it broadcast
    with pytest.raises(UserError, match="caption longer than"):  # it was cut silently
        clip.encode_texts(["a small red square " * 8])
    dalle = genzoo.load("runs/dalle_smoke")
    images, scores = dalle.generate([], candidates=3, keep=2)
    assert images.shape == (0, 2, 32, 32, 3) and scores.shape == (0, 2)
    with pytest.raises(UserError, match="temperature must be >= 0, got nan"):
        dalle.generate(["a small red square"], temperature=float("nan"))
    with pytest.raises(UserError, match="candidates must be a whole number, got 2.0"):
        dalle.generate(["a small red square"], candidates=2.0)
    with pytest.raises(UserError, match="captions must be strings, got 7"):
        dalle.generate(["a small red square", 7])
    judge = genzoo.load("runs/shapes_judge_smoke")  # no images: empty answers, not IndexErrors
    assert judge.features(np.zeros((0, 32, 32, 3))).shape == (0, 16)  # the smoke width
    assert all(v.shape == (0,) for v in judge.predict(np.zeros((0, 32, 32, 3))).values())
    assert judge.judge(np.zeros((0, 32, 32, 3)), [])["scene"].shape == (0,)
    with pytest.raises(UserError, match="one caption per image, got 1 captions for 2 images"):
        judge.judge(np.zeros((2, 32, 32, 3)), ["a small red square"])
    with pytest.raises(UserError, match=r"images must be \[N, 32, 32, 3\]"):
        judge.features(np.zeros((2, 28, 28, 1)))
    # Batched as one: three batches of two give the features of all six at once.
    pixels = np.random.default_rng(1).random((6, 32, 32, 3))
    np.testing.assert_allclose(judge._apply(pixels, batch_size=2)[1], judge.features(pixels),
                               atol=1e-5)  # fmt: skip


def test_recall_at_k_counts_any_equal_caption_in_the_top_k():
    sim = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.1], [0.5, 0.6, 0.7]])
    same = np.array([[False, True, False], [True, False, False], [False, False, True]])
    assert recall_at(sim, same, ks=(1, 2, 3)) == {1: 1 / 3, 2: 1.0, 3: 1.0}


def test_judge_labels_do_not_depend_on_the_order_a_caption_names_the_objects():
    one = shapes.parse("a small red circle above a large blue square")
    other = shapes.parse("a large blue square below a small red circle")
    stack = lambda a: {k: np.asarray(v)[None] for k, v in a.items()}
    t1, t2 = judge.targets(stack(one), np), judge.targets(stack(other), np)
    assert all(np.array_equal(t1[h], t2[h]) for h in judge.HEADS)
    assert t1["axis"][0] == 0 and t1["shape_0"][0] == shapes.SHAPES.index("circle")
    alone = judge.targets(stack(shapes.parse("a large green star")), np)
    assert alone["shape_1"][0] == len(shapes.SHAPES) and alone["axis"][0] == len(shapes.AXES)
    for text in ("a small red circle", "a large white cross right of a small green diamond"):
        assert shapes.caption(shapes.parse(text)) == text


def test_zero_shot_takes_the_class_whose_mean_template_embedding_is_nearest():
    from genzoo.evaluation.retrieval import zero_shot

    class Fake:  # texts embed by their last word's class, images are given as embeddings
        table = {"cat": [1.0, 0.0], "dog": [0.0, 1.0]}

        def encode_texts(self, texts):
            return np.array([self.table[t.split()[-1]] for t in texts])

        def encode_images(self, images):
            return np.asarray(images, float)

    prompts = [["a cat", "a photo of a cat"], ["a dog", "a photo of a dog"]]
    images = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])
    assert zero_shot(Fake(), images, prompts, np.array([0, 1, 1, 1])) == 0.75


def test_retrieval_counts_an_image_of_the_same_caption_as_a_hit(monkeypatch):
    """Captions repeat: text -> image recall takes any image drawn for the same caption,
    image -> text recall the caption read the same, and each caption is embedded once."""
    from types import SimpleNamespace

    from genzoo.evaluation import retrieval

    class Fake:  # captions embed by their colour; images are given as embeddings
        def encode_texts(self, texts):
            assert len(set(texts)) == len(texts)
            return np.array([[1.0, 0.0] if "red" in t else [0.0, 1.0] for t in texts])

        def encode_images(self, images):
            return np.asarray(images, float)

    texts = ["a red circle", "a blue square", "a red circle", "a blue square"]
    # Each caption's nearest image is the other one drawn for it (2 for 0, 1 for 3).
    images = np.array([[0.8, 0.2], [0.1, 0.9], [1.0, 0.0], [0.3, 0.7]])
    data = SimpleNamespace(texts={"validation": texts}, real_images=lambda split, n: images[:n])
    monkeypatch.setattr(retrieval.kinds, "api_of", lambda run: Fake())
    figures = retrieval.evaluate(SimpleNamespace(data=data), "validation")
    assert figures == {
        "validation/i2t_recall@1": 1.0,
        "validation/i2t_recall@5": 1.0,
        "validation/t2i_recall@1": 1.0,
        "validation/t2i_recall@5": 1.0,
    }
    data.texts["validation"] = ["a red circle", "a blue square", "a red ring", "a blue box"]
    figures = retrieval.evaluate(SimpleNamespace(data=data), "validation")
    assert figures["validation/t2i_recall@1"] == 0.5  # now only the own image counts


def test_an_attribute_needs_both_objects_right_and_a_scene_every_head():
    from genzoo.kinds.attribute_judge import _per_attribute

    heads = [f"{a}_{i}" for a in shapes.ATTRIBUTES for i in (0, 1)] + ["axis"]
    right = {h: np.array([True, True, True]) for h in heads}
    right["colour_1"] = np.array([True, False, True])
    right["axis"] = np.array([True, True, False])
    out = _per_attribute(right)
    assert out["colour"].tolist() == [True, False, True] and out["shape"].all()
    assert out["relation"].tolist() == [True, True, False]
    assert out["scene"].tolist() == [True, False, False]
