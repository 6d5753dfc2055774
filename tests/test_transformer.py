"""The encoder-decoder Transformer: loss at init, learning, cached decoding, beams."""

import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import unbox

from genzoo import optim
from genzoo.data.tokenizers import BOS, EOS
from genzoo.models import transformer

CFG = dict(
    src_vocab_size=50,
    tgt_vocab_size=50,
    num_layers=2,
    num_heads=2,
    width=32,
    mlp_hidden=64,
    dropout=0.0,
    label_smoothing=0.0,
    max_decode_len=12,
)


@pytest.fixture(scope="module")
def params():
    return unbox(transformer.init(jax.random.PRNGKey(0), CFG))


def _batch(seed=0, B=4, S=7, T=6):
    rng = np.random.default_rng(seed)
    src = rng.integers(7, 50, (B, S)).astype(np.int32)
    tgt = rng.integers(7, 50, (B, T)).astype(np.int32)
    tgt[:, 0] = BOS
    src_mask = (np.arange(S)[None] < np.array([[S], [S - 2], [3], [S]])[:B]).astype(np.float32)
    return {
        "src": src * src_mask.astype(np.int32),
        "src_mask": src_mask,
        "tgt": tgt,
        "tgt_mask": np.ones((B, T), np.float32),
        "mask": np.ones(B, np.float32),
    }


def test_initial_loss_is_near_log_vocab(params):
    # Unit-variance token vectors (std D^-1/2 x sqrt(D)) and a tied output table give logits
    # of variance ~1 at init, plus a larger logit for the input token itself (it is in the
    # residual stream): the loss starts a little above log V, never near 0 or far above.
    batch = _batch()
    c = transformer.TransformerConfig.from_cfg(CFG)
    logits, _, _ = transformer._forward(params, batch, jax.random.PRNGKey(0), c, False)
    s2 = float(jnp.var(logits, axis=-1).mean())
    loss, _ = transformer.loss(params, batch, jax.random.PRNGKey(0), CFG, train=False)
    assert 0.3 < s2 < 4.0
    assert math.log(50) < float(loss) < math.log(50) + 2.0


def test_label_smoothing_is_cross_entropy_against_the_smoothed_targets(params):
    """(1 - e) on the target plus e / V on every token, written out with optax."""
    batch = _batch()
    batch["tgt_mask"][1, 4:] = 0.0  # padding must stay out of both
    cfg = {**CFG, "label_smoothing": 0.1}
    c = transformer.TransformerConfig.from_cfg(cfg)
    rng = jax.random.PRNGKey(0)
    logits_BxLxV, targets_BxL, mask_BxL = transformer._forward(params, batch, rng, c, False)
    V = logits_BxLxV.shape[-1]
    q_BxLxV = 0.9 * jax.nn.one_hot(targets_BxL, V) + 0.1 / V
    ce_BxL = optax.softmax_cross_entropy(logits_BxLxV, q_BxLxV)
    want = float(jnp.sum(ce_BxL * mask_BxL) / jnp.sum(mask_BxL))
    got, metrics = transformer.loss(params, batch, rng, cfg, train=False)
    assert float(got) == pytest.approx(want, rel=1e-5)
    plain, _ = transformer.loss(params, batch, rng, CFG, train=False)
    assert float(metrics["nll"]) == pytest.approx(float(plain), rel=1e-6)  # unsmoothed metric


def test_inverse_sqrt_schedule_rises_linearly_then_falls_as_one_over_root_step():
    fn = optim.inverse_sqrt_schedule(peak=2.0, warmup_steps=100)
    got = [float(fn(s)) for s in (0, 50, 100, 400, 10_000)]
    assert got == pytest.approx([2.0 / 100, 1.0, 2.0, 1.0, 0.2], rel=1e-6)


def test_changing_the_source_changes_the_logits_padding_does_not(params):
    batch = _batch()
    f = lambda b: transformer._forward(
        params, b, jax.random.PRNGKey(0), transformer.TransformerConfig.from_cfg(CFG), False
    )[0]
    base = f(batch)
    other = dict(batch, src=batch["src"].copy())
    other["src"][0, 0] = (other["src"][0, 0] + 1 - 7) % 43 + 7
    assert not np.allclose(base[0], f(other)[0])
    padded = dict(batch, src=batch["src"].copy())
    padded["src"][2, 3:] = 9  # row 2 is valid for 3 positions only
    np.testing.assert_allclose(base, f(padded), atol=1e-5)


def test_cached_decoding_equals_full_recomputation(params):
    c = transformer.TransformerConfig.from_cfg(CFG)
    model = transformer.EncoderDecoder(c)
    batch = _batch()
    src, valid = jnp.asarray(batch["src"]), jnp.asarray(batch["src_mask"] > 0)
    tgt = jnp.asarray(batch["tgt"])
    full = model.apply({"params": params}, src, valid, tgt)
    memory = model.apply({"params": params}, src, valid, method="encode")
    cache = transformer.init_cache(params, c, memory, valid, tgt.shape[1])
    decode = jax.jit(  # one compile for every step (eagerly, each op dispatched each step)
        lambda tok, cache: model.apply({"params": params}, tok, None, None, cache, method="decode")
    )
    steps = []
    for t in range(tgt.shape[1]):  # one token at a time, then compare every position
        logits, cache = decode(tgt[:, t : t + 1], cache)
        steps.append(logits[:, 0])
    np.testing.assert_allclose(full, jnp.stack(steps, 1), atol=2e-4)


def test_beam_of_one_equals_greedy(params):
    batch = _batch(1)
    greedy = transformer.translate(
        params, CFG, batch["src"], batch["src_mask"] > 0, max_new_tokens=8, num_beams=1
    )
    from genzoo import sampling

    c = transformer.TransformerConfig.from_cfg(CFG)
    model = transformer.EncoderDecoder(c)
    src, valid = jnp.asarray(batch["src"]), jnp.asarray(batch["src_mask"] > 0)
    memory = model.apply({"params": params}, src, valid, method="encode")
    cache = transformer.init_cache(params, c, memory, valid, 9)
    step = lambda t, cache: model.apply({"params": params}, t, None, None, cache, method="decode")
    bos = jnp.full((src.shape[0], 1), BOS, jnp.int32)
    searched = sampling.beam_search(
        step, cache, bos, beam_size=1, max_new_tokens=8, length_penalty=1.0, eos_id=EOS
    )
    np.testing.assert_array_equal(greedy, searched)


def test_overfits_one_batch():
    import optax

    p = unbox(transformer.init(jax.random.PRNGKey(1), CFG))
    batch = _batch(2)
    tx = optax.adam(3e-3)
    opt = tx.init(p)

    @jax.jit
    def step(p, opt):
        (loss, _), g = jax.value_and_grad(
            lambda p: transformer.loss(p, batch, jax.random.PRNGKey(0), CFG), has_aux=True
        )(p)
        updates, opt = tx.update(g, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    for _ in range(60):
        p, opt, loss = step(p, opt)
    assert float(loss) < 0.3


def test_impossible_shapes_are_refused():
    from genzoo.errors import UserError

    with pytest.raises(UserError, match="divisible"):
        transformer.TransformerConfig.from_cfg({**CFG, "num_heads": 3})
    with pytest.raises(UserError, match="not known"):
        transformer.TransformerConfig.from_cfg({**CFG, "widht": 32})


def test_packed_rows_give_the_same_loss_as_separate_examples(params):
    from genzoo.data.examples import ExampleData

    rng = np.random.default_rng(3)
    src = [np.r_[rng.integers(7, 50, n), EOS].astype(np.int32) for n in (4, 6, 3)]
    tgt = [np.r_[BOS, rng.integers(7, 50, n), EOS].astype(np.int32) for n in (5, 3, 4)]
    splits = {"train": {"src": src, "tgt": tgt}}
    texts = {"train": {"src": [""] * 3, "tgt": [""] * 3}}
    packed = ExampleData(splits, {"src": 20, "tgt": 18}, texts, {}, {}, pack=True)
    plain = ExampleData(splits, {"src": 20, "tgt": 18}, texts, {}, {})
    assert len(packed.packed_rows) == 1  # all three fit one row
    row = next(packed.train_iterator(1, 0))
    assert set(np.unique(row["src_segments"])) == {0, 1, 2, 3}
    batch = next(plain.eval_batches("train", 3))
    sums = jax.jit(lambda p, b: transformer.eval_sums(p, b, jax.random.PRNGKey(0), CFG))
    a, b = sums(params, dict(row)), sums(params, dict(batch))
    assert float(a["num_tokens"]) == float(b["num_tokens"]) == 5 + 3 + 4 + 3
    np.testing.assert_allclose(float(a["nll"]), float(b["nll"]), rtol=1e-5)


def _wmt14_base_trainer():
    import conftest

    from genzoo.trainer import Trainer

    cfg = conftest.tiny_config(
        "data.synthetic_examples=16", "data.max_src_len=12", "data.max_tgt_len=12",
        "train.batch_size=2", "eval.every_steps=0", variant=None, name="transformer_wmt14_en_de",
    )  # fmt: skip
    return cfg, Trainer(cfg, devices=jax.devices()[:1])


def test_transformer_base_for_wmt14_has_the_base_shape():
    cfg, trainer = _wmt14_base_trainer()  # shapes only (`abstract_state`): nothing compiles
    assert (cfg.model.num_layers, cfg.model.width, cfg.model.mlp_hidden) == (6, 512, 2048)
    assert cfg.model.src_vocab_size == 37000 and cfg.optim.schedule == "inverse_sqrt"
    n = sum(x.size for x in jax.tree.leaves(trainer.abstract_state.params))
    assert 60e6 < n < 66e6  # Transformer-base with a 37k shared vocabulary: ~63M


@pytest.mark.slow  # ~50 s on 2 cores: compiling and stepping 63M parameters
def test_transformer_base_for_wmt14_steps():
    from genzoo import data

    cfg, trainer = _wmt14_base_trainer()
    state = trainer.init_state()
    batch = next(data.load(cfg.data).train_iterator(2, 0))
    state, metrics = trainer.step(state, batch)
    assert np.isfinite(float(metrics["loss"])) and int(state.step) == 1


def _built_wmt14(root: Path, pairs: list) -> None:
    """A stand-in for TFDS's `wmt14_translate/de-en` (the same folder, splits and fields),
    built as array_record under `root` the way `tfds build` lays it out."""
    import tensorflow_datasets as tfds

    from genzoo.data import sources

    class Wmt14Translate(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")
        BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="de-en")]
        name = "wmt14_translate"

        def _info(self):
            fields = {"en": ((None,), np.uint8), "de": ((None,), np.uint8)}
            return sources.tensor_dataset_info(self, "test", "", fields)

        def _split_generators(self, dl_manager):
            return {s: self._generate_examples(s) for s in ("train", "validation", "test")}

        def _generate_examples(self, split):
            as_bytes = lambda s: np.frombuffer(s.encode(), np.uint8)
            for i, (en, de) in enumerate(pairs):
                yield i, {"en": as_bytes(f"{en} {split}"), "de": as_bytes(de)}

    Wmt14Translate(data_dir=str(root), file_format="array_record").download_and_prepare()


def test_wmt14_reads_its_built_tfds_folder_or_says_how_to_build_it(tmp_path, monkeypatch):
    from genzoo import data, experiment
    from genzoo.errors import UserError

    cfg = experiment.load("transformer_wmt14_en_de", None, ["data.vocab_size=300"])
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    with pytest.raises(UserError, match="not built in .*tfds build wmt14_translate/de-en"):
        data.load(cfg.data)
    words = "the house is small and green with a red door near our old garden".split()
    pairs = [(" ".join(words[i % 9 : i % 9 + 5]), f"das haus {i} ist klein") for i in range(40)]
    _built_wmt14(tmp_path / "tfds", pairs)
    loaded = data.load(cfg.data)
    assert {s: len(loaded.texts[s]["src"]) for s in loaded.texts} == {
        "train": 40, "validation": 40, "test": 40,
    }  # fmt: skip
    texts = loaded.texts  # in TFDS's order (it shuffles by key when building)
    assert sorted(texts["validation"]["src"]) == sorted(f"{en} validation" for en, _ in pairs)
    assert sorted(zip(texts["test"]["src"], texts["test"]["tgt"], strict=True)) == sorted(
        (f"{en} test", de) for en, de in pairs
    )
    (tmp_path / "tfds/wmt14_translate/de-en/1.0.0/dataset_info.json").write_text("{")
    with pytest.raises(UserError, match="cannot be read"):
        data.load(cfg.data)
