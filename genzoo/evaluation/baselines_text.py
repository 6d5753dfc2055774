"""The `classifier_baselines` evaluator: what a fine-tuned text classifier must beat.

Computed in the same run, on the same split: a bag-of-words logistic regression over the
data's word pieces (counts normalised by length, full-batch Adam; on the Bible genres,
500 steps at learning rate 0.05 without L2 was the best of the few settings tried: 70.5%
against 41% with L2 1e-4), and the same model trained from scratch with the same budget
(steps, batch, optimizer), whose result is kept in the workdir (`scratch_baseline.json`)
so repeated evals do not retrain.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from genzoo import optim


def _bags(data, split: str):
    tokens = np.stack([np.pad(t, (0, data.lengths["tokens"] - len(t))[:2])
                       for t in data.splits[split]["tokens"]])  # fmt: skip
    return tokens[:, : data.lengths["tokens"]], data.labels[split]["label"]


def bow_logistic_regression(data, split: str, *, first_word_id: int, steps: int = 500,
                            l2: float = 0.0, lr: float = 0.05) -> float:  # fmt: skip
    """Test accuracy of multinomial logistic regression on word-piece counts (ids below
    `first_word_id`, the specials and padding, are not words)."""
    vocab, classes = data.model_fields["vocab_size"], int(data.model_fields["num_classes"])
    x_tr, y_tr = _bags(data, "train")
    x_te, y_te = _bags(data, split)

    def logits(w, x_NxL):
        counts_NxL = (x_NxL >= first_word_id).astype(jnp.float32)
        bag_NxK = jnp.einsum("nl,nlk->nk", counts_NxL, w["W"][x_NxL])
        return bag_NxK / jnp.maximum(counts_NxL.sum(1, keepdims=True), 1.0) + w["b"]

    def loss(w):
        nll = optax.softmax_cross_entropy_with_integer_labels(logits(w, x_tr), y_tr).mean()
        return nll + l2 * jnp.sum(w["W"] ** 2)

    w = {"W": jnp.zeros((vocab, classes)), "b": jnp.zeros(classes)}
    w = optim.minimise(loss, w, optax.adam(lr), steps)
    return float((np.asarray(jnp.argmax(logits(w, x_te), -1)) == y_te).mean())


def scratch_model(run, split: str) -> float:
    """Accuracy of the same config trained from random initialisation, cached per split."""
    from genzoo.trainer import Trainer

    cache = Path(run.path) / "scratch_baseline.json" if run.path else None
    key = f"{split}@{run.cfg.train.steps}"
    saved = json.loads(cache.read_text()) if cache and cache.is_file() else {}
    if key in saved:
        return saved[key]
    cfg = ml_collections.ConfigDict(run.cfg.to_dict())
    cfg.train.update(init_from="", init_fresh="")
    cfg.eval.update(every_steps=0)
    cfg.log.update(tensorboard=False)
    trainer = Trainer(ml_collections.FrozenConfigDict(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        state = trainer.fit(Path(tmp), run.data)
    accuracy = trainer.evaluate(state.eval_params(), run.data, split, max_batches=-1)["accuracy"]
    if cache:
        from genzoo.data import sources

        payload = json.dumps({**saved, key: accuracy}).encode()
        sources.write_atomic(cache, lambda f: f.write(payload))
    return accuracy


def evaluate(run, split: str, *, bow: bool = True, scratch: bool = True) -> dict:
    figures = {}
    if bow:
        from genzoo.models.bert import BertConfig  # 7 for genzoo's pieces, 104 for BERT's own

        first_word_id = BertConfig.from_cfg(run.cfg.model).first_word_id
        figures["bow_logreg_accuracy"] = bow_logistic_regression(
            run.data, split, first_word_id=first_word_id
        )
    if scratch:
        figures["scratch_accuracy"] = scratch_model(run, split)
    return figures
