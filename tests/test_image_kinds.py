"""The image kinds' APIs, checked before any family runs: stand-in runs and families record
what they are given (pixel checks, batch sizes, empty inputs)."""

from types import SimpleNamespace

import jax
import numpy as np
import pytest

from genzoo.errors import UserError
from genzoo.kinds import even_batches
from genzoo.kinds.classifier import Classifier
from genzoo.kinds.image_generator import ImageGenerator


def test_an_image_generator_samples_and_reconstructs_in_batches_of_one_shape():
    """A stand-in family records the batch sizes it is given (100,000 samples in one call was
    a std::bad_alloc abort): one size per call, a larger `num` extends a smaller one, and the
    images do not move with the batch size (the last batch drew from other keys)."""
    sizes = []

    def sample(params, keys_N, cfg):
        sizes.append(len(keys_N))
        return jax.vmap(lambda key: jax.random.uniform(key, (28, 28, 1)))(keys_N)

    def reconstruct(params, images, cfg):
        sizes.append(len(images))
        return 1.0 - images

    model = SimpleNamespace(family="vae", image_shape=(28, 28, 1))
    gen = ImageGenerator(SimpleNamespace(cfg=SimpleNamespace(model=model), params=None))
    gen.family = SimpleNamespace(sample=sample, reconstruct=reconstruct)
    five = gen.sample(5, seed=1, batch_size=2)
    assert five.shape == (5, 28, 28, 1) and sizes == [2, 2, 2]
    np.testing.assert_array_equal(gen.sample(3, seed=1, batch_size=2), five[:3])
    np.testing.assert_array_equal(gen.sample(2, seed=1, batch_size=256), five[:2])
    np.testing.assert_array_equal(gen.sample(5, seed=1, batch_size=3), five)
    np.testing.assert_array_equal(gen.sample(5, seed=1, batch_size=256), five)
    assert not np.array_equal(gen.sample(5, seed=2, batch_size=2), five)
    assert len({float(x.sum()) for x in five}) == 5  # each image its own randomness
    sizes.clear()
    np.testing.assert_allclose(gen.reconstruct(five, batch_size=2), 1.0 - five)
    assert sizes == [2, 2, 2]  # the last batch padded: one shape, one program
    sizes.clear()
    np.testing.assert_array_equal(gen.sample(5, seed=1, batch_size=4), five)
    assert sizes == [3, 3]  # even batches: not 4 + 4 for 5 images
    assert gen.reconstruct(np.zeros((0, 28, 28, 1))).shape == (0, 28, 28, 1)


def test_even_batches_cover_every_row_in_the_fewest_batches_of_one_size():
    """1,600 DALL·E rows at 512 were 512, 512, 512 and 64: two programs compiled."""
    assert [len(b) for b in even_batches(1600, 512)] == [400] * 4
    assert [b.tolist() for b in even_batches(5, 2)] == [[0, 1], [2, 3], [4, 4]]
    assert [b.tolist() for b in even_batches(1, 256)] == [[0]]
    for count, size in ((1000, 256), (257, 256), (7, 7), (3, 1)):
        batches = even_batches(count, size)
        assert len(batches) == -(-count // size) and len({len(b) for b in batches}) == 1
        assert len(batches[0]) <= size and sorted(set(np.concatenate(batches))) == [*range(count)]


def test_the_image_classifier_checks_pixels_and_predicts_in_batches():
    """It took any array whole (no shape or range check, one batch for any count)."""
    sizes = []

    def predict(params, images, cfg):
        sizes.append(len(images))
        return images.reshape(len(images), -1)[:, :3], None

    cfg = SimpleNamespace(model=SimpleNamespace(family="classifier", image_shape=(28, 28, 1)),
                          eval=SimpleNamespace(split="test"))  # fmt: skip
    clf = Classifier(SimpleNamespace(cfg=cfg, class_names=["a", "b", "c"], params=None))
    clf.family = SimpleNamespace(predict=predict)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    got = clf.predict(pixels, batch_size=2)
    assert sizes == [2, 2, 2] and clf.class_names == ["a", "b", "c"]
    np.testing.assert_allclose(got, pixels.reshape(5, -1)[:, :3] / 255.0, rtol=1e-6)
    with pytest.raises(UserError, match=r"images must be \[N, 28, 28, 1\]"):
        clf.predict(np.zeros((2, 32, 32, 3)))


def test_an_image_generator_refuses_other_shapes_and_counts():
    """Checked before the family runs: a run stand-in with the VAE's image shape suffices."""
    model = SimpleNamespace(family="vae", image_shape=(28, 28, 1))
    gen = ImageGenerator(SimpleNamespace(cfg=SimpleNamespace(model=model)))
    with pytest.raises(UserError, match=r"images must be \[N, 28, 28, 1\] for this model, got "
                                        r"\[2, 32, 32, 3\]"):  # fmt: skip
        gen.reconstruct(np.zeros((2, 32, 32, 3)))
    # Pixels are [0, 1] floats or uint8: 0..255 floats were taken as they are, NaN too.
    for bad, message in ((np.full((1, 28, 28, 1), 255.0), r"values in \[0, 1\].*got 255..255"),
                         (np.full((1, 28, 28, 1), np.nan), r"values in \[0, 1\].*got nan"),
                         (np.full((1, 28, 28, 1), -1.0), r"values in \[0, 1\].*got -1"),
                         (np.zeros((1, 28, 28, 1), int), "or uint8, got int64")):  # fmt: skip
        with pytest.raises(UserError, match=message):
            gen.reconstruct(bad)
    with pytest.raises(UserError, match="num must be at least 1, got 0"):
        gen.sample(0)
