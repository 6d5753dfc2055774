"""Experiment configs: typed overrides, resume rules, mesh construction."""

import jax
import pytest

from genzoo import experiment, sharding
from genzoo.errors import UserError


def cfg():
    return experiment.load("gpt_shakespeare_char", "smoke")


def test_every_experiment_has_the_keys_scripts_rely_on():
    for name, *_ in experiment.list_experiments():
        c = experiment.load(name, "smoke")
        for key in (
            "train.steps",
            "train.batch_size",
            "train.seed",
            "checkpoint.every_steps",
            "mesh.data",
            "mesh.fsdp",
            "mesh.tensor",
        ):
            section, field = key.split(".")
            assert field in c[section], (name, key)


def test_overrides_are_typed():
    c = cfg()
    experiment.apply_overrides(
        c, ["train.steps=7", "optim.lr=1", "log.progress=false", "data.name=x"]
    )
    assert (c.train.steps, c.optim.lr, c.log.progress, c.data.name) == (7, 1.0, False, "x")
    assert isinstance(c.optim.lr, float)
    for bad in ("train.steps=1.5", "train.steps=x", "optim.lr=fast", "log.progress=maybe"):
        with pytest.raises(UserError, match="bad value"):
            experiment.apply_overrides(cfg(), [bad])
    for bad in ("train.stepz=1", "nope.x=1", "train=1"):
        with pytest.raises(UserError, match="unknown config key|section"):
            experiment.apply_overrides(cfg(), [bad])


def test_a_family_field_the_experiment_leaves_out_is_settable_and_typed():
    """BERT's experiments name no `mask_rate`, the VQ tokenizer's no `ema_decay`: `--set`
    takes them all the same, typed by the dataclass default, and they reach the model."""
    from genzoo.models import base, bert, dvae

    c = experiment.load("bert_mlm_english", "smoke", ["model.mask_rate=0.2"])
    assert bert.BertConfig.from_cfg(c.model).mask_rate == 0.2
    # The same command resumes; leaving the setting out would be another model.
    again = experiment.load("bert_mlm_english", "smoke", ["model.mask_rate=0.2"])
    assert experiment.resume_conflicts(c, again) == []
    plain = experiment.load("bert_mlm_english", "smoke")
    assert experiment.resume_conflicts(c, plain) == ["model.mask_rate"]
    vq = experiment.load("dvae_shapes", "smoke", ["model.quantizer=vq", "model.ema_decay=0.9"])
    assert dvae.DVAEConfig.from_cfg(vq.model).ema_decay == 0.9
    vq = experiment.load("dvae_shapes", "smoke", ["model.restart_below=0"])  # an int: a float
    assert vq.model.restart_below == 0.0 and isinstance(vq.model.restart_below, float)
    for bad, match in (("model.mask_rate=often", "bad value"), ("model.mask_rat=0.2", "unknown")):
        with pytest.raises(UserError, match=match):
            experiment.load("bert_mlm_english", "smoke", [bad])
    # A family without a FromConfig dataclass (a user's module) has no hidden fields.
    assert base.config_fields(pytest) == {}


def test_resume_conflicts_ignore_run_length_mesh_and_logging():
    a, b = cfg(), cfg()
    experiment.apply_overrides(
        b, ["train.steps=99", "mesh.data=2", "log.every_steps=3", "eval.every_steps=4"]
    )
    assert experiment.resume_conflicts(a, b) == []
    experiment.apply_overrides(b, ["model.num_layers=3", "train.batch_size=4", "optim.b2=0.9"])
    assert experiment.resume_conflicts(a, b) == ["model.num_layers", "optim.b2", "train.batch_size"]


def test_config_json_round_trip():
    c = cfg()
    assert experiment.resume_conflicts(c, experiment.from_json(experiment.to_json(c))) == []


def test_mesh_fills_minus_one_and_rejects_bad_shapes():
    mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 2})
    assert dict(mesh.shape) == {"data": len(jax.devices()) // 4, "fsdp": 2, "tensor": 2}
    for bad in (
        {"data": -1, "fsdp": -1, "tensor": 1},
        {"data": 3, "fsdp": 1, "tensor": 1},
        {"data": 16, "fsdp": 1, "tensor": 1},
    ):
        with pytest.raises(UserError):
            sharding.make_mesh(bad)


def test_configs_saved_by_older_versions_gain_new_defaults():
    import json

    saved = json.loads(experiment.to_json(cfg()))
    del saved["train"]["trainable"], saved["eval"]["seed"]  # keys added after a run was saved
    loaded = experiment.from_json(json.dumps(saved))
    assert loaded.train.trainable == "" and loaded.eval.seed == 0
    assert loaded.model.width == cfg().model.width
    assert experiment.resume_conflicts(loaded, cfg()) == []


def test_a_run_saved_before_a_model_key_existed_resumes_while_it_keeps_the_old_behaviour():
    """`model` is taken whole from a saved config (no defaults laid over it), so a key added
    since (`ADDED_KEYS`) counts as its old behaviour's value when comparing for a resume."""
    import json

    new = experiment.load("hmm_shakespeare_char")
    saved = json.loads(experiment.to_json(new))
    del saved["model"]["expected_counts"]
    old = experiment.from_json(json.dumps(saved))
    assert "expected_counts" not in old.model
    assert experiment.resume_conflicts(old, new) == []
    experiment.apply_overrides(new, ["model.expected_counts=true", "optim.name=em"])
    assert experiment.resume_conflicts(old, new) == ["model.expected_counts", "optim.name"]


@pytest.mark.parametrize("name, setting", [
    ("dalle_shapes", "eval.evaluators.text_to_image.num_captions=0"),
    ("dalle_shapes", "eval.evaluators.text_to_image.candidates=-2"),
    ("transformer_bible_es_en", "eval.evaluators.translation.beams=0"),
    ("vae_fashion_mnist", "eval.evaluators.sample_quality.num_samples=0"),
])  # fmt: skip
def test_an_evaluator_asked_to_count_nothing_is_refused_when_the_config_loads(name, setting):
    variant = None if name == "vae_fashion_mnist" else "smoke"  # its smoke has no evaluator
    with pytest.raises(UserError, match=rf"{setting.split('=')[0]} must be an integer >= 1"):
        experiment.load(name, variant, [setting])
