"""A model family kept outside genzoo (docs/examples/bigram.py) trains, evaluates, samples
and loads through the same commands; a module that is not a family is refused up front."""

import json
import math
import os
import shutil
import sys
import types
from pathlib import Path

import pytest

import genzoo
from genzoo import cli, models
from genzoo.errors import UserError
from genzoo.models.protocols import problems

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A copy of the example folder as the current folder; the search path and the module
    table are restored afterwards (the CLI adds the current folder to the path)."""
    for name in ("bigram.py", "bigram_char.py"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    sys.modules.pop("bigram", None)
    models._CHECKED.discard("bigram")


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_users_family_trains_evaluates_samples_and_loads(project, capsys):
    code, out, _ = run(capsys, "train", "bigram_char.py", "--variant", "smoke", "--workdir", "run")
    assert code == 0 and "checkpoints:" in out
    code, out, _ = run(capsys, "eval", "--workdir", "run", "--json")
    figures = json.loads(out)
    assert code == 0 and figures["step"] == 30
    # 30 steps of a bigram table: well below the uniform 6.0 bits/char over 65 characters.
    assert figures["bits_per_char"] < 4.2 and figures["loss"] < 0.75 * math.log(65)
    code, out, _ = run(capsys, "sample", "--workdir", "run", "--prompt", "ROMEO:",
                       "--max-new-tokens", "12", "--seed", "0")  # fmt: skip
    assert code == 0 and out.startswith("ROMEO:")
    lm = genzoo.load("run")
    text = lm.generate(["KING:", "A"], max_new_tokens=7, temperature=0.0)
    assert [len(t) for t in text] == [7, 7]
    scores = lm.score(["the king", "zqxj zqxj"])
    assert scores[0] > scores[1]  # the trained table prefers English letter pairs
    with pytest.raises(UserError, match="no beams"):
        lm.generate(["A"], max_new_tokens=3, num_beams=2)
    # Elsewhere, with the module not on the search path: one line naming where it looked.
    sys.modules.pop("bigram")
    models._CHECKED.discard("bigram")
    sys.path.remove(str(project))
    (project / "elsewhere").mkdir()
    os.chdir(project / "elsewhere")
    code, _, err = run(capsys, "eval", "--workdir", str(project / "run"))
    assert code == 2 and err.count("\n") == 1
    assert "no module 'bigram' importable from the current folder or PYTHONPATH" in err


def test_a_module_that_is_not_a_family_is_refused_before_anything_is_written(project, capsys):
    broken = (project / "bigram.py").read_text()
    broken = broken.replace("def eval_summary(", "def summary_of_eval(")
    broken = broken.replace("def loss(params, batch, rng, cfg,", "def loss(params, batch,")
    (project / "bigram.py").write_text(broken)
    code, _, err = run(capsys, "train", "bigram_char.py", "--variant", "smoke", "--workdir", "run")
    assert code == 2 and err.count("\n") == 1 and not (project / "run").exists()
    assert "lacks loss(params, batch, rng, cfg, train, step); eval_summary(totals, meta)" in err


def test_problems_name_what_a_module_lacks():
    assert problems(types.ModuleType("empty")) == ["KIND (the name of a kind in genzoo.kinds)"]
    stranger = types.ModuleType("stranger")
    stranger.KIND = "painting"
    assert problems(stranger)[0].startswith("unknown model kind 'painting'")
    lm = types.ModuleType("lm")
    lm.KIND = "language_model"
    lm.init = lambda rng, cfg: {}
    lm.loss = lambda *args, **kwargs: 0.0  # takes anything
    lm.eval_sums = lambda params, batch: {}  # lacks rng, cfg
    assert problems(lm) == [
        "eval_sums(params, batch, rng, cfg)", "eval_summary(totals, meta)",
        "sample(params, rng, cfg, prompt_BxP, max_new_tokens)",
        "token_log_probs(params, tokens_BxT, cfg)", "context_length(cfg)", "RAGGED_PROMPTS",
    ]  # fmt: skip
    for bad in ("", "a..b", "3", "os/path"):
        with pytest.raises(UserError, match="unknown model family"):
            models.get(bad)
