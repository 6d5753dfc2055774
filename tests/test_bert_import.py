"""BERT import: hidden states and top-5 fillers match Hugging Face's PyTorch BertForMaskedLM."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity needs PyTorch (pip install torch==2.13.0)")
transformers = pytest.importorskip("transformers", reason="parity needs transformers")

from conftest import WORDS  # noqa: E402

import genzoo  # noqa: E402
from genzoo import cli  # noqa: E402
from genzoo.converters import hf_bert  # noqa: E402
from genzoo.data import tokenizers  # noqa: E402
from genzoo.models import bert  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = SPECIALS + sorted(set(WORDS)) + list(LETTERS) + [f"##{c}" for c in LETTERS] + [".", ","]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bert")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    config = transformers.BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, initializer_range=0.2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return folder, model


@pytest.fixture(scope="module")
def imported(hf_dir):
    tok = tokenizers.WordPieceTokenizer((hf_dir[0] / "vocab.txt").read_bytes())
    fields, params = hf_bert.from_hf(hf_dir[0], tok)
    return fields, params, tok


def _inputs(tok):
    texts = ["the king and queen [MASK] my lord", "thou art [MASK] a fool"]
    ids = [[tok.piece_id("[CLS]"), *tok.encode(t), tok.piece_id("[SEP]")] for t in texts]
    L = max(map(len, ids))
    tokens = np.zeros((2, L), np.int64)
    for i, seq in enumerate(ids):
        tokens[i, : len(seq)] = seq
    return tokens, tokens > 0


def test_hidden_states_and_top5_fillers_match_pytorch(hf_dir, imported):
    _, model = hf_dir
    fields, params, tok = imported
    tokens, valid = _inputs(tok)
    with torch.no_grad():
        out = model(torch.tensor(tokens), attention_mask=torch.tensor(valid.astype(np.int64)),
                    output_hidden_states=True)  # fmt: skip
    want_h, want_logits = out.hidden_states[-1].numpy(), out.logits.numpy()
    got_h, got_logits = bert.encode(params, fields, tokens, np.zeros_like(tokens), valid)
    got_h, got_logits = np.asarray(got_h), np.asarray(got_logits)
    np.testing.assert_allclose(got_h[valid], want_h[valid], atol=1e-4, rtol=0)
    masks = tokens == tok.piece_id("[MASK]")
    top5 = lambda logits: np.argsort(-logits[masks], axis=-1)[:, :5]
    np.testing.assert_array_equal(top5(got_logits), top5(want_logits))


def test_import_fill_mask_and_fine_tune(hf_dir, tmp_path, capsys):
    wd = tmp_path / "bert"
    assert cli.main(["import", "bert", str(hf_dir[0]), "--workdir", str(wd)]) == 0
    assert (wd / "vocab.txt").is_file()
    fills = genzoo.load(wd).fill_mask(["the king [MASK] the queen"], top_k=5)[0][0]
    assert len(fills) == 5 and all(0 <= p <= 1 for _, p in fills)
    capsys.readouterr()
    new = tmp_path / "genre"
    sizes = ("model.num_layers=2", "model.num_heads=4", "model.width=32", "model.mlp_hidden=64",
             "model.max_len=64", "data.max_len=32", f"data.tokenizer_dir={wd}",
             "train.init_fresh=cls_head/*", "log.progress=false", "train.steps=4")  # fmt: skip
    argv = ["train", "bert_bible_genre", "--variant", "smoke", "--workdir", str(new),
            "--init-from", str(wd)] + [x for s in sizes for x in ("--set", s)]  # fmt: skip
    assert cli.main(argv) == 0
    rows = [json.loads(x) for x in (new / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and np.isfinite(rows[0]["val/accuracy"])
    assert (new / "vocab.txt").read_bytes() == (wd / "vocab.txt").read_bytes()
