"""Slow checks on real data (`make test-slow`): the demo's model learns tiny Shakespeare."""

import json

import pytest

from genzoo import cli


@pytest.mark.slow
def test_cpu_variant_learns_real_shakespeare(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("GENZOO_DATA_DIR")  # the packaged copy of the real corpus
    monkeypatch.setenv("GENZOO_CACHE_DIR", str(tmp_path / "cache"))
    wd = tmp_path / "cpu"
    argv = ["train", "gpt_shakespeare_char", "--variant", "cpu", "--workdir", str(wd)]
    assert cli.main([*argv, "--set", "train.steps=500", "--set", "log.progress=false"]) == 0
    capsys.readouterr()
    assert cli.main(["eval", "--workdir", str(wd), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    # The demo's run measured 2.17 at step 500 (of a 2000-step schedule); a shorter schedule
    # decays sooner, so it must do at least as well, with margin for noise.
    assert figures["num_tokens"] == 111_539 and figures["loss"] < 2.3
