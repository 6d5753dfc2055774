"""GPT-2 import: logits and greedy decoding match Hugging Face's PyTorch GPT-2 exactly."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity needs PyTorch (pip install torch==2.13.0)")
transformers = pytest.importorskip("transformers", reason="parity needs transformers")

from conftest import gpt2_byte_vocab  # noqa: E402

from genzoo import cli  # noqa: E402
from genzoo.converters import hf_gpt2  # noqa: E402
from genzoo.models import gpt  # noqa: E402

MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a"), ("i", "n"), ("o", "u")]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random 2-layer GPT-2 saved as config.json + model.safetensors + vocab.json + merges.txt."""
    folder = tmp_path_factory.mktemp("gpt2")
    vocab = gpt2_byte_vocab()
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in MERGES))
    config = transformers.GPT2Config(
        vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        initializer_range=0.2,  # larger than GPT-2's 0.02 so greedy choices are not near-ties
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    return folder, model


@pytest.fixture(scope="module")
def imported(hf_dir):
    fields, params = hf_gpt2.from_hf(hf_dir[0])
    return fields, params


def test_logits_match_pytorch(hf_dir, imported):
    _, model = hf_dir
    fields, params = imported
    ids = np.random.default_rng(0).integers(0, 300, (3, 40))
    with torch.no_grad():
        want = model(torch.tensor(ids)).logits.numpy()
    got = np.asarray(gpt.logits(params, ids.astype(np.int32), fields))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_greedy_generation_matches_pytorch(hf_dir, imported):
    _, model = hf_dir
    fields, params = imported
    prompt = np.random.default_rng(1).integers(0, 300, (2, 5))
    with torch.no_grad():
        want = model.generate(
            torch.tensor(prompt), max_new_tokens=30, do_sample=False, pad_token_id=0
        ).numpy()[:, 5:]
    import jax

    got = gpt.sample(params, jax.random.PRNGKey(0), fields, prompt_BxP=prompt, max_new_tokens=30,
                     temperature=0.0)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(got), want)


def test_imported_workdir_evaluates_and_samples(hf_dir, tmp_path, capsys):
    wd = tmp_path / "gpt2"
    assert cli.main(["import", "gpt2", str(hf_dir[0]), "--workdir", str(wd)]) == 0
    assert (wd / "vocab.json").is_file() and (wd / "merges.txt").is_file()
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(wd), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["step"] == 0 and np.isfinite(figures["bits_per_char"])
    argv = ["sample", "--workdir", str(wd), "--prompt", "the king", "--temperature", "0",
            "--max-new-tokens", "8"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("the king") and len(out) > len("the king")
    # Importing over an existing run is refused.
    assert cli.main(["import", "gpt2", str(hf_dir[0]), "--workdir", str(wd)]) == 2


def test_init_from_an_imported_workdir(hf_dir, imported, tmp_path, capsys):
    src = tmp_path / "gpt2"
    assert cli.main(["import", "gpt2", str(hf_dir[0]), "--workdir", str(src)]) == 0
    fields, _ = imported
    experiment_file = tmp_path / "gpt2_tiny_finetune.py"
    experiment_file.write_text(
        "from genzoo.imports import gpt2_config\n"
        f"def get_config(variant=None):\n"
        f"    c = gpt2_config({fields!r}, {str(src)!r})\n"
        "    c.train.update(steps=2, batch_size=8)\n"
        "    c.data.seq_len = 32\n"
        "    c.eval.update(every_steps=2, batch_size=8, max_batches=1)\n"
        "    return c\n"
    )
    new = tmp_path / "tuned"
    argv = ["train", str(experiment_file), "--workdir", str(new), "--init-from", str(src)]
    assert cli.main([*argv, "--set", "log.progress=false"]) == 0
    assert (new / "vocab.json").read_bytes() == (src / "vocab.json").read_bytes()
    rows = [json.loads(x) for x in (new / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and np.isfinite(rows[0]["val/loss"])  # started from GPT-2


def test_exporting_an_import_gives_back_the_hugging_face_model(hf_dir, tmp_path, capsys):
    """Hugging Face -> genzoo -> Hugging Face: the same tensors, and GPT-2's tokenizer files."""
    folder, model = hf_dir
    wd, out = tmp_path / "gpt2", tmp_path / "hf"
    assert cli.main(["import", "gpt2", str(folder), "--workdir", str(wd)]) == 0
    assert cli.main(["export", "--workdir", str(wd), "--out", str(out)]) == 0
    for name in ("vocab.json", "merges.txt"):
        assert (out / name).read_bytes() == (folder / name).read_bytes()
    again = transformers.GPT2LMHeadModel.from_pretrained(out).state_dict()
    for name, tensor in model.state_dict().items():
        np.testing.assert_array_equal(again[name].numpy(), tensor.numpy(), err_msg=name)
    tokenizer = transformers.GPT2TokenizerFast.from_pretrained(out)
    from genzoo import api

    lm = api.load(wd)
    assert tokenizer("the king")["input_ids"] == list(lm.encode("the king"))
