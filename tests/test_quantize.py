"""int8 weight-only copies: the rounding, and a quantized workdir read like a trained one."""

import json

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
