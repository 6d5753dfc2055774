"""int8 weight-only copies: the rounding, and a quantized workdir read like a trained one."""

import json

import jax
import numpy as np
import pytest

import genzoo
from genzoo import cli, quantize

TRAIN = ["train", "gpt_shakespeare_char", "--variant", "smoke", "--set", "train.steps=40",
         "--set", "log.progress=false"]  # fmt: skip


def test_per_channel_rounding_is_within_half_a_step():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(64, 48)).astype(np.float32) * np.linspace(0.01, 3.0, 48)  # per column
    q, scale = quantize.quantize_array("mlp/fc/kernel", w)
    assert q.dtype == np.int8 and scale.shape == (1, 48) and np.abs(q).max() == 127
    assert np.all(np.abs(q * scale - w) <= scale / 2 + 1e-7)
    table = rng.normal(size=(100, 16)).astype(np.float32)
    q, scale = quantize.quantize_array("wte/embedding", table)
    assert scale.shape == (100, 1)  # a row per token: also the tied head's output channel
    np.testing.assert_allclose(q * scale, table, atol=float(scale.max()) / 2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    assert cli.main([*TRAIN, "--workdir", str(root / "float")]) == 0
    assert (
        cli.main(["quantize", "--workdir", str(root / "float"), "--out", str(root / "int8")]) == 0
    )
    return root


def _eval(path, capsys):
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_quantized_run_evaluates_like_the_original(runs, capsys):
    original, quantized = _eval(runs / "float", capsys), _eval(runs / "int8", capsys)
    assert quantized["step"] == original["step"] == 40
    assert abs(quantized["loss"] - original["loss"]) < 0.01
    marker = json.loads((runs / "int8" / quantize.MARKER).read_text())
    assert marker["quantized"] >= 4 and marker["bytes_after"] < 0.5 * marker["bytes_before"]
    assert not (runs / "int8" / "checkpoints").exists()
    # The float run's training history and best-step record are not the copy's.
    assert (runs / "float" / "metrics.jsonl").is_file()
    assert not any((runs / "int8" / name).exists() for name in quantize.SKIP_FILES)


def test_a_quantized_run_samples_and_loads(runs, capsys):
    lm = genzoo.load(runs / "int8")
    reference = genzoo.load(runs / "float")
    text = lm.generate("ROMEO:", max_new_tokens=20, temperature=0.0)[0]
    assert len(text) == 20 and text == reference.generate("ROMEO:", max_new_tokens=20,
                                                          temperature=0.0)[0]  # fmt: skip
    capsys.readouterr()
    assert cli.main(["sample", "--workdir", str(runs / "int8"), "--prompt", "KING:",
                     "--max-new-tokens", "10"]) == 0  # fmt: skip
    assert capsys.readouterr().out.startswith("KING:")


@pytest.mark.parametrize(
    "argv",
    [
        [*TRAIN, "--workdir", "{int8}"],
        ["eval", "--workdir", "{int8}", "--checkpoint", "best"],
        ["quantize", "--workdir", "{int8}", "--out", "{new}"],
        ["quantize", "--workdir", "{float}", "--out", "{int8}"],
    ],
    ids=["train a copy", "checkpoint of a copy", "quantize twice", "out exists"],
)
def test_misuse_is_one_line_and_exit_2(runs, capsys, argv):
    argv = [a.format(int8=runs / "int8", float=runs / "float", new=runs / "new") for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("genzoo: error:") and len(err.strip().splitlines()) == 1
    assert not (runs / "new").exists()


def _int8(name, w):
    from genzoo.layers.quant import Int8

    return Int8(*quantize.quantize_array(name, w))


@pytest.mark.parametrize("rows", [1, 8, 128])  # padded to 2 on CPU; int8 operands; dequantized
def test_int8_matmul_is_the_float_product_within_the_rounding(rows):
    import jax.numpy as jnp

    from genzoo.layers import quant

    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, 96)).astype(np.float32)
    w = rng.normal(size=(96, 40)).astype(np.float32) * 0.05
    w8, table8 = _int8("mlp/fc/kernel", w), _int8("wte/embedding", w.T.copy())
    for weight, rows_out in ((w8, False), (table8, True)):
        fn = jax.jit(lambda x, w, r=rows_out: quant.matmul(x, w, jnp.float32, rows_out=r))
        got = np.asarray(fn(x, weight))
        assert got.shape == (rows, 40)
        np.testing.assert_allclose(got, x @ w, atol=0.03 * np.abs(x @ w).max())
        lines = fn.lower(x, weight).as_text().splitlines()
        (dot,) = [line for line in lines if "dot_general" in line]
        assert ("xi8>" in dot) == (rows <= quant.MAX_INT8_ROWS)  # int8 operands for few rows
    table = w.T * np.linspace(0.1, 3.0, 40, dtype=np.float32)[:, None]  # rows of many sizes
    ids = rng.integers(0, 40, (rows,))  # looked up as an int8 embedding reads them
    looked_up = np.asarray(quant.take(_int8("wte/embedding", table), ids, jnp.float32))
    half_step = np.abs(table[ids]).max(-1, keepdims=True) / 254  # each row's own scale
    assert np.all(np.abs(looked_up - table[ids]) <= half_step + 1e-7)
    exact = np.asarray(quant.matmul(x, w8, jnp.float32)) if rows > quant.MAX_INT8_ROWS else None
    if exact is not None:  # many rows: the dequantized weight, as evaluation uses it
        np.testing.assert_allclose(exact, x @ np.asarray(w8.dequantize(jnp.float32)), rtol=1e-5)


def test_scales_factor_out_of_their_matmuls(monkeypatch):
    from genzoo.layers import quant

    w = np.random.default_rng(0).normal(size=(4, 8, 16)).astype(np.float32)  # [H, K, D]
    q, scale = quantize.quantize_array("block_0/attn/out_kernel", w)
    assert scale.shape == (1, 1, 16)
    assert quant.Int8(q, scale).matrix().values.shape == (32, 16)
    qkv = np.ones((32, 3, 4, 8), np.float32)  # [D, 3, H, K]
    assert quantize.quantize_array("attn/qkv_kernel", qkv)[1].shape == (1, 3, 4, 8)
    monkeypatch.setattr(quant, "MIN_INT8_SIZE", 0)
    over_h = np.max(np.abs(w), axis=0, keepdims=True) / 127  # [1, K, D]: how older copies scaled
    old = {"attn/out_kernel": q, "attn/out_kernel::scale": over_h}
    new = {"attn/out_kernel": q, "attn/out_kernel::scale": scale}
    abstract = {"attn": {"out_kernel": jax.ShapeDtypeStruct(w.shape, np.float32)}}
    int8 = lambda tensors: quantize.int8_params(tensors, quantize.dequantize(tensors, abstract))
    assert isinstance(int8(new)["attn"]["out_kernel"], quant.Int8)
    kept = int8(old)["attn"]["out_kernel"]  # an older copy: float
    assert kept.dtype == np.float32 and kept.shape == w.shape


def test_a_quantized_run_samples_with_int8_operands(runs, monkeypatch):
    """Large weights stay int8 in sampling (the smoke model's are small: the bar is lowered
    here); scores through int8 x int8 products stay within 2% of the float original's."""
    from genzoo.layers import quant

    monkeypatch.setattr(quant, "MIN_INT8_SIZE", 0)
    lm, reference = genzoo.load(runs / "int8"), genzoo.load(runs / "float")
    int8_leaves = [x for x in jax_leaves(lm.params) if isinstance(x, quant.Int8)]
    assert len(int8_leaves) >= 4 and all(x.values.dtype == np.int8 for x in int8_leaves)
    texts = ["ROMEO: what", "KING:\nO"]
    got, want = np.asarray(lm.score(texts)), np.asarray(reference.score(texts))
    np.testing.assert_allclose(got, want, rtol=0.02)
    assert len(lm.generate("ROMEO:", max_new_tokens=12, temperature=0.0)[0]) == 12


def jax_leaves(tree):
    from genzoo.layers.quant import Int8

    return jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, Int8))


def test_int8_switch(monkeypatch):
    from genzoo.errors import UserError
    from genzoo.layers import quant

    assert quant.int8_operands(1) and not quant.int8_operands(quant.MAX_INT8_ROWS + 1)
    monkeypatch.setenv("GENZOO_INT8", "off")
    assert not quant.int8_operands(1)
    monkeypatch.setenv("GENZOO_INT8", "fast")
    with pytest.raises(UserError, match="GENZOO_INT8"):
        quant.int8_operands(1)
