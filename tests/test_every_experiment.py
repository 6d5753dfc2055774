"""The trainer on every experiment's smoke config: 8 devices match one, resume is bit-identical,
the loss falls on a fixed batch, and remat and scanned layers keep every Transformer's gradients."""

import jax
import numpy as np
import pytest
from conftest import experiment_config, experiment_data, experiment_deps, run_steps, unbox

from genzoo import executables, experiment, models
from genzoo import train_step as trainer_lib
from genzoo.trainer import Trainer

# A family's second experiment runs these with `make test-slow`: they test the step and the
# trainer, which it shares with the first (the smoke CLI test still trains every experiment).
REPEATS = {"clip_fashion_mnist": "clip_shapes", "shapes_judge": "classifier_fashion_mnist",
           "gpt_token_corpus": "gpt_shakespeare_char",
           "gpt_shakespeare_bpe": "gpt_shakespeare_char",
           "transformer_wmt14_en_de": "transformer_bible_es_en",
           "bert_bible_genre": "bert_mlm_english"}  # fmt: skip
EXPERIMENTS = [pytest.param(row[0], marks=pytest.mark.slow) if row[0] in REPEATS else row[0]
               for row in experiment.list_experiments()]  # fmt: skip


def step_config_for(name, *overrides):
    """The one training set-up the three tests below share, so each experiment's one-device
    step traces once (this process keeps it: `trainer_for`): no warm-up (the loss falls
    within a few steps), a decay fixed whatever `train.steps` is, and dropout where the family
    has it (its RNG must agree across meshes and across a resume)."""
    shared = ("optim.warmup_steps=0", "optim.min_lr=0.001", "optim.lr=0.003",
              "optim.decay_steps=6", "train.steps=6", "eval.every_steps=0",
              "log.progress=false")  # fmt: skip
    if "dropout" in experiment.load(name, "smoke").model:  # what the family declares
        shared += ("model.dropout=0.1",)
    return experiment_config(name, *shared, *overrides)


def trainer_for(name, *overrides, devices=None):
    """A Trainer that loads the programs an earlier one of the same config compiled."""
    cfg = step_config_for(name, *overrides)
    return Trainer(cfg, devices=devices, deps=experiment_deps(name),
                   executables=executables.in_memory(cfg))  # fmt: skip


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_eight_devices_match_one(name):
    one = trainer_for(name, devices=jax.devices()[:1])
    many = trainer_for(name, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    assert dict(many.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    _, a = run_steps(one, experiment_data(name), 3)
    _, b = run_steps(many, experiment_data(name), 3)
    # Per-token losses match to 1e-5; image losses sum hundreds of pixel terms per image
    # (VAE ~550 nats, dVAE ~40,000), where float32 reduction order alone moves them by ~1e-7
    # relative, so they are held to 1e-6 relative (which is looser only above 10 nats).
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_resume_is_bit_identical(name, tmp_path):
    make = lambda *steps: trainer_for(name, "checkpoint.every_steps=3", *steps,
                                      devices=jax.devices()[:1])  # fmt: skip
    a = make().fit(tmp_path / "a", experiment_data(name))
    make("train.steps=3").fit(tmp_path / "b", experiment_data(name))
    b = make().fit(tmp_path / "b", experiment_data(name))
    assert int(a.step) == int(b.step) == 6
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for x, y in zip(jax.tree.leaves(a.opt_state), jax.tree.leaves(b.opt_state), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_loss_decreases_on_a_fixed_batch(name):
    t = trainer_for(name, devices=jax.devices()[:1])
    cfg = t.cfg
    batch = next(experiment_data(name).train_iterator(cfg.train.batch_size, 0))
    state = t.init_state()
    key = "loss_discriminator" if cfg.model.family == "gan" else "loss"  # G and D pull apart
    losses = []
    for _ in range(25):
        state, m = t.step(state, batch)
        losses.append(float(m[key]))
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


# Every Transformer family takes `model.remat` (each block recomputed in the backward pass)
# and `model.scan_layers` (its stacks as loops): the same loss and gradients (GPT's switches:
# tests/test_step_memory.py, tests/test_scan_layers.py). Experiment: the layer count of each
# of its stacks of blocks.
STACKS = {
    "bert_mlm_english": ("num_layers",),
    "transformer_bible_es_en": ("num_layers",) * 2,
    "dalle_shapes": ("num_layers",),
    "clip_shapes": ("text_layers", "image_layers"),
}
# switch: (the reference's overrides, the switch's, the jaxpr's mark, marks per block or stack)
SWITCHES = {
    "remat": ((), ("model.remat=full",), "remat2[", "block"),
    # Dropout off: a scan splits one key over its layers, the unrolled stack keys each block.
    # Each loop, and its transpose for the gradients.
    "scan": (("model.dropout=0.0",), ("model.scan_layers=true",), "scan[", "stack"),
}  # fmt: skip


@pytest.mark.parametrize("switch", SWITCHES)
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "dalle_shapes" else n
             for n in STACKS],  # DALL·E's blocks are GPT's: the slow run checks them
)  # fmt: skip
def test_how_a_step_is_computed_keeps_every_transformer_familys_loss_and_gradients(name, switch):
    batch = next(experiment_data(name).train_iterator(2, 0))
    base, overrides, mark, per = SWITCHES[switch]
    fields = STACKS[name]
    if per == "stack":  # two layers in each: a stack of one runs unrolled
        base = (*base, *dict.fromkeys(f"model.{f}=2" for f in fields))
    results, marks, params = [], [], None
    for extra in ((), overrides):
        cfg = experiment_config(name, *base, *extra)
        family = models.get(cfg.model.family)
        init = unbox(family.init(jax.random.PRNGKey(0), cfg.model))
        if params is None:  # the same for both ways: initialisation never scans
            params = init
        assert jax.tree.structure(init) == jax.tree.structure(params)
        f = jax.jit(lambda p, b, c=cfg.model, fam=family: trainer_lib._loss_and_grads(
            fam, c, p, b, jax.random.PRNGKey(1), 0, experiment_deps(name))[:2])  # fmt: skip
        results.append(f(params, batch))
        marks.append(str(jax.make_jaxpr(f)(params, batch)).count(mark))
    blocks = sum(cfg.model[f] for f in fields)
    assert marks[1] - marks[0] == (blocks if per == "block" else 2 * len(fields))
    (loss0, grads0), (loss1, grads1) = results
    np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
    for g0, g1 in zip(jax.tree.leaves(grads0), jax.tree.leaves(grads1), strict=True):
        np.testing.assert_allclose(g1, g0, atol=1e-6, rtol=1e-5)
