"""Captioned images: the procedural shapes (geometry, held-out pairs) and caption batches."""

import ml_collections
import numpy as np
import pytest

from genzoo import data
from genzoo.data import captions, shapes
from genzoo.errors import UserError


def _scenes(n, held_out, seed=0):
    rng = np.random.default_rng(seed)
    return [shapes.sample_scene(rng, held_out) for _ in range(n)]


def test_two_object_scenes_are_placed_as_their_relation_says():
    checked = 0
    for attrs, objects in _scenes(300, held_out=False):
        if len(objects) < 2:
            assert attrs["relation"] == shapes.NO_OBJECT and attrs["shape"][1] == -1
            continue
        (_, _, _, x1, y1), (_, _, _, x2, y2) = objects
        relation = shapes.RELATIONS[attrs["relation"]]
        offsets = {"above": (y2 - y1, x2 - x1), "below": (y1 - y2, x1 - x2),
                   "left of": (x2 - x1, y2 - y1), "right of": (x1 - x2, y1 - y2)}  # fmt: skip
        along, across = offsets[relation]
        r1, r2 = (shapes.RADIUS[shapes.SIZES[s]] for s in attrs["size"])
        assert along >= r1 + r2 + 2 - 1e-9 and abs(across) <= along / 3 + 1e-9
        for _, _, size, x, y in objects:  # inside the canvas
            r = shapes.RADIUS[size]
            assert r <= x <= shapes.SIZE - r and r <= y <= shapes.SIZE - r
        checked += 1
    assert checked > 100


def test_held_out_pairs_appear_only_in_the_held_out_split():
    pairs = lambda a: {(shapes.SHAPES[s], shapes.COLOUR_NAMES[c])
                       for s, c in zip(a["shape"], a["colour"], strict=True) if s >= 0}  # fmt: skip
    assert all(not pairs(a) & shapes.HELD_OUT for a, _ in _scenes(300, held_out=False))
    assert all(pairs(a) & shapes.HELD_OUT for a, _ in _scenes(100, held_out=True))
    # One held-out colour per shape and one held-out shape per colour.
    assert sorted(s for s, _ in shapes.HELD_OUT) == sorted(shapes.SHAPES)
    assert sorted(c for _, c in shapes.HELD_OUT) == sorted(shapes.COLOUR_NAMES)


def test_rendering_draws_the_colour_where_the_shape_is():
    image = shapes.render([("square", "red", "large", 16.0, 16.0)])
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[16, 16], shapes.COLOURS["red"])
    np.testing.assert_array_equal(image[1, 1], [18, 18, 18])
    circle = shapes.render([("circle", "blue", "small", 16.0, 16.0)])
    assert (circle.sum(-1) > 54).sum() < (image.sum(-1) > 54).sum()  # a small circle is smaller


def test_captions_say_the_scene_both_ways_and_tokenize_back():
    attrs = {"shape": np.array([0, 1]), "colour": np.array([0, 2]), "size": np.array([0, 1]),
             "relation": np.int32(0)}  # fmt: skip
    assert shapes.caption(attrs) == "a small red circle above a large blue square"
    assert shapes.caption(attrs, swap=True) == "a large blue square below a small red circle"
    tok = captions.WordTokenizer(shapes.VOCABULARY)
    ids = tok.encode(shapes.caption(attrs))
    assert ids[-1] == captions.EOS and tok.decode(ids) == shapes.caption(attrs)
    with pytest.raises(UserError, match="outside the caption vocabulary: dog"):
        tok.encode("a small dog")
    with pytest.raises(UserError, match="outside the caption vocabulary: <eos>"):
        tok.encode("a small <eos> circle")  # the special words are not words


def test_a_caption_longer_than_its_row_is_cut_keeping_its_eos():
    ids, mask = captions.pad_captions([[5, 6, 7, 8, captions.EOS], [5, captions.EOS]], 4)
    assert ids.tolist() == [[5, 6, 7, captions.EOS], [5, captions.EOS, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


@pytest.fixture(scope="module")
def shapes_data():
    return data.load(ml_collections.ConfigDict({"name": "shapes", "max_caption_len": 12}))


def test_shapes_batches_resume_and_vary_the_phrasing(shapes_data):
    assert shapes_data.model_fields["image_shape"] == (32, 32, 3)
    it = shapes_data.train_iterator(8, seed=0)
    seen = [next(it) for _ in range(3)]
    state = it.get_state()
    after = next(it)
    it2 = shapes_data.train_iterator(8, seed=0)
    it2.set_state(state)
    resumed = next(it2)
    for key in after:
        np.testing.assert_array_equal(after[key], resumed[key])
    b = seen[0]
    assert b["image"].shape == (8, 32, 32, 3) and 0 <= b["image"].min() <= b["image"].max() <= 1
    assert b["caption"].shape == (8, 12) and b["shape"].shape == (8, 2)
    # Over many draws, two-object scenes are said both ways.
    texts = set()
    it = shapes_data.train_iterator(64, seed=1)
    tok = shapes_data.tokenizer
    for _ in range(8):
        batch = next(it)
        texts |= {(int(i), tok.decode(c)) for i, c in zip(batch["index"], batch["caption"],
                                                          strict=True)}  # fmt: skip
    by_index = {}
    for i, text in texts:
        by_index.setdefault(i, set()).add(text)
    assert any(len(v) == 2 for v in by_index.values())


def test_eval_batches_cover_each_split_once_in_canonical_phrasing(shapes_data):
    seen = []
    for batch in shapes_data.eval_batches("heldout", 24):
        seen += [int(i) for i, m in zip(batch["index"], batch["mask"], strict=True) if m]
        assert all(shapes_data.tokenizer.decode(c) == shapes_data.texts["heldout"][int(i)]
                   for i, c in zip(batch["index"], batch["caption"], strict=True))  # fmt: skip
    assert seen == list(range(64))


def test_fashion_mnist_captions_name_the_class(image_data):
    d = data.load(ml_collections.ConfigDict({"name": "fashion_mnist_captions"}))
    batch = next(d.eval_batches("test", 4))
    for label, caption in zip(batch["label"], batch["caption"], strict=True):
        assert d.tokenizer.decode(caption) == f"a photo of a {captions.FASHION_WORDS[label]}"
    assert d.model_fields["num_classes"] == 10
