"""`genzoo export`: GPT and BERT runs as Hugging Face folders that PyTorch's transformers loads
and that compute what genzoo computes."""

import json
import types

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch", reason="parity needs PyTorch (pip install torch==2.13.0)")
transformers = pytest.importorskip("transformers", reason="parity needs transformers")

from safetensors.numpy import save_file  # noqa: E402

from genzoo import cli, exports  # noqa: E402
from genzoo.converters import hf_bert, hf_gpt2  # noqa: E402
from genzoo.data import tokenizers  # noqa: E402
from genzoo.errors import UserError  # noqa: E402
from genzoo.models import bert, gpt  # noqa: E402


def _jitter(params, seed: int):
    """`params` plus small noise: zero biases and unit norm scales would hide a misplaced one
    (a constant shift instead grows the residual stream until LayerNorm loses precision)."""
    rng = np.random.default_rng(seed)
    noisy = lambda x: (np.asarray(x) + 0.02 * rng.standard_normal(x.shape)).astype(np.float32)  # noqa: E731
    return jax.tree.map(noisy, params)


def _hf_model(tmp_path, config: dict, tensors: dict, cls: str):
    """The transformers model a folder of `config` and `tensors` loads into, with no weight
    of its own left at random (every parameter came from the file)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp_path / "model.safetensors"), {"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    model, info = getattr(transformers, cls).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


@pytest.mark.parametrize("use_bias, gelu_approximate", [(True, False), (False, True)])
def test_gpt_logits_match_gpt2lmheadmodel(tmp_path, use_bias, gelu_approximate):
    fields = dict(vocab_size=70, block_size=32, num_layers=2, num_heads=4, width=32,
                  use_bias=use_bias, gelu_approximate=gelu_approximate)  # fmt: skip
    params = _jitter(nn.unbox(gpt.init(jax.random.PRNGKey(1), fields)), 1)
    model = _hf_model(tmp_path, *hf_gpt2.to_hf(fields, params), "GPT2LMHeadModel")
    ids = np.random.default_rng(0).integers(0, 70, (3, 32))
    with torch.no_grad():
        want = model(torch.tensor(ids)).logits.numpy()
    got = np.asarray(gpt.logits(params, ids.astype(np.int32), fields))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # And back: importing the export gives the same parameters (without biases, the import
    # has GPT-2's biases in addition, all zero; the padded vocabulary rows are not exported).
    again = traverse_util.flatten_dict(hf_gpt2.from_hf(tmp_path)[1], sep="/")
    for path, x in traverse_util.flatten_dict(params, sep="/").items():
        rows = 70 if path == "wte/embedding" else None
        np.testing.assert_array_equal(again.pop(path)[:rows], x[:rows])
    assert all(not np.any(x) for x in again.values()) and (len(again) > 0) != use_bias


@pytest.mark.parametrize("num_classes", [0, 3])
def test_bert_logits_match_transformers(tmp_path, num_classes):
    fields = dict(vocab_size=90, max_len=24, num_layers=2, num_heads=4, width=32, mlp_hidden=48,
                  dropout=0.0, num_classes=num_classes)  # fmt: skip
    params = _jitter(bert.unboxed_init(jax.random.PRNGKey(2), fields), 2)
    config, tensors, cls = hf_bert.to_hf(fields, params, ["a", "b", "c"] if num_classes else None)
    model = _hf_model(tmp_path, config, tensors, cls)
    ids = np.random.default_rng(0).integers(0, 90, (2, 24))
    zeros, valid = np.zeros_like(ids), np.ones(ids.shape, bool)
    with torch.no_grad():
        out = model(torch.tensor(ids), token_type_ids=torch.tensor(zeros)).logits.numpy()
    if num_classes:
        assert cls == "BertForSequenceClassification" and model.config.id2label[2] == "c"
        got = np.asarray(bert.classify(params, fields, ids, zeros, valid))
        np.testing.assert_allclose(got, torch.softmax(torch.tensor(out), -1).numpy(), atol=1e-5)
    else:
        assert cls == "BertForMaskedLM"
        got = np.asarray(bert.encode(params, fields, ids, zeros, valid)[1])
        np.testing.assert_allclose(got, out, atol=1e-4, rtol=0)


def test_export_command_writes_a_folder_transformers_loads(char_run, tmp_path, capsys):
    run, out = char_run, tmp_path / "hf"
    assert cli.main(["export", "--workdir", str(run), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "GPT2LMHeadModel" in said and "tokenizer: chars.json" in said
    assert sorted(p.name for p in out.iterdir()) == ["chars.json", "config.json",
                                                     "model.safetensors"]  # fmt: skip
    chars = json.loads((out / "chars.json").read_text())
    assert len(chars) == 65 and chars[:2] == "\n "
    model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    from genzoo import api

    lm = api.load(run)
    ids = np.array([[chars.index(ch) for ch in "ROMEO: the king"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor(ids)).logits, -1).numpy()
    want = np.take_along_axis(logp[:, :-1], ids[:, 1:, None], -1)[..., 0].sum()
    np.testing.assert_allclose(lm.score("ROMEO: the king")[0], want, rtol=1e-5)
    # A second export into the same folder is refused; so is a family without a counterpart.
    assert cli.main(["export", "--workdir", str(run), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_a_family_without_a_hugging_face_counterpart_is_refused(tmp_path):
    model = types.SimpleNamespace(family="hmm")
    hmm = types.SimpleNamespace(cfg=types.SimpleNamespace(model=model), path=tmp_path / "hmm")
    with pytest.raises(UserError, match="for gpt, bert; .* is a hmm"):
        exports.write(hmm, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_fine_tuned_bert_exports_its_labels_and_vocabulary(tmp_path):
    import ml_collections

    model = ml_collections.ConfigDict(dict(family="bert", vocab_size=40, max_len=16, num_layers=1,
                                           num_heads=2, width=16, mlp_hidden=32, dropout=0.0,
                                           num_classes=2))  # fmt: skip
    vocab = {"tokens": tokenizers.WordPieceTokenizer(b"[PAD]\n[UNK]\n")}
    run = types.SimpleNamespace(cfg=types.SimpleNamespace(model=model), step=7,
                                class_names=["law", "poetry"], tokenizers=vocab,
                                params=bert.unboxed_init(jax.random.PRNGKey(0), model),
                                path=tmp_path / "run")  # fmt: skip
    done = exports.write(run, tmp_path / "hf")
    assert done["class"] == "BertForSequenceClassification" and done["files"] == ["vocab.txt"]
    loaded = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "hf")
    assert loaded.config.id2label == {0: "law", 1: "poetry"} and loaded.config.num_labels == 2
    assert (tmp_path / "hf" / "vocab.txt").read_bytes() == b"[PAD]\n[UNK]\n"
    assert not any(p.name.startswith(".partial") for p in tmp_path.iterdir())
