"""The command line: every experiment's smoke variant end to end, and the error contract."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genzoo import cli, experiment, metrics, workdir
from genzoo import data as data_lib
from genzoo.data import tokenizers
from genzoo.kinds import masked_lm


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(smoke_char_run, tmp_path_factory):
    return Path(shutil.copytree(smoke_char_run, tmp_path_factory.mktemp("run") / "smoke"))


# Experiments that require trained runs are trained after them by test_text_to_image's chain.
ALONE = [row[0] for row in experiment.list_experiments()
         if not experiment.load(row[0], "smoke").model.get("requires")]  # fmt: skip


# A second experiment of an already covered family (CLIP; GPT, whose corpus path
# tests/test_corpus.py runs through the CLI) runs with `make test-slow`.
SECOND = ("clip_fashion_mnist", "gpt_token_corpus")
ALONE = [pytest.param(n, marks=pytest.mark.slow) if n in SECOND else n for n in ALONE]


@pytest.mark.parametrize("name", ALONE)
def test_every_experiment_smoke_trains_and_evaluates(name, tmp_path, capsys):
    code, out, _ = run(
        capsys, "train", name, "--variant", "smoke", "--workdir", str(tmp_path / name)
    )
    assert code == 0 and "checkpoints:" in out
    code, out, _ = run(capsys, "eval", "--workdir", str(tmp_path / name), "--json")
    figures = json.loads(out)
    numbers = [v for k, v in figures.items() if isinstance(v, float)]
    assert code == 0 and figures["step"] == experiment.load(name, "smoke").train.steps
    assert numbers and all(math.isfinite(v) for v in numbers)
    _check_kept_tokenizers(tmp_path / name)


def _check_kept_tokenizers(path):
    """A moved workdir samples with the tokenizers read from its files alone: they must read
    text as its data's do, and a classifier must name its classes. Bare ids keep no files."""
    cfg = workdir.load_config(path)
    data = data_lib.load(cfg.data, path)
    from_data = workdir.Run(cfg, data, None, None, 0).tokenizers  # no path: the data's
    kept = tokenizers.saved(path, cfg.data.get("lowercase", True))
    names = getattr(data, "class_names", None)
    if names:  # from classes.json: a Run without data has nowhere else to read them
        assert workdir.Run(cfg, None, None, None, 0, path).class_names == list(names)
    if names and cfg.model.family == "bert":
        assert masked_lm.class_names(workdir.Run(cfg, None, None, None, 0, path)) == list(names)
    if not tokenizers.files_of(from_data):
        assert kept is None
        return
    assert set(from_data) <= set(kept)
    for field, tokenizer in from_data.items():
        probe = "KING HENRY: Thou art, 12 said the Lord."
        alphabet = getattr(tokenizer, "vocab", None)  # a test alphabet may lack some
        probe = "".join(ch for ch in probe if ch in alphabet) if alphabet else probe
        if hasattr(tokenizer, "words"):  # a caption vocabulary: its own words, in reverse
            probe = " ".join(tokenizer.words[:1:-1])
        assert type(kept[field]) is type(tokenizer)
        assert kept[field].encode(probe) == tokenizer.encode(probe) != []


def test_list_names_every_experiment(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    assert "gpt_shakespeare_char" in out and "tinyshakespeare_char" in out
    # A description is the docstring's first sentence, not its first line cut mid-way.
    assert "with classifier-free guidance and CLIP reranking." in out
    doc = "A Transformer over codes,\nwith guidance. More here.\n\nUsage: ..."
    assert experiment.summary(doc) == "A Transformer over codes, with guidance."
    assert experiment.summary("One line, no period") == "One line, no period"


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`genzoo list | head -1`: stdout's reader closes first; the command ends as a pipeline
    member killed by SIGPIPE does (141), with nothing on stderr (it was a traceback)."""
    proc = subprocess.Popen([sys.executable, "-m", "genzoo.cli", "list"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # before the child, still importing, writes anything
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == b""


def test_config_prints_what_train_would_use_with_the_overrides(capsys):
    code, out, err = run(capsys, "config", "gpt_shakespeare_char", "--variant", "cpu",
                         "--set", "optim.lr=3e-4", "--set", "model.dtype=bfloat16")  # fmt: skip
    assert code == 0 and err == ""
    cfg = json.loads(out)
    assert cfg["optim"]["lr"] == 3e-4 and cfg["model"]["dtype"] == "bfloat16"
    assert cfg["experiment"]["variant"] == "cpu" and cfg["model"]["width"] == 128
    assert cfg == json.loads(experiment.load("gpt_shakespeare_char", "cpu", [
        "optim.lr=3e-4", "model.dtype=bfloat16"]).to_json())  # fmt: skip
    code, out, err = run(capsys, "config", "gpt_shakespeare_char", "--set", "optim.lr=abc")
    assert code == 2 and out == "" and "optim.lr" in err


def test_train_writes_config_metrics_and_plot(trained):
    saved = json.loads((trained / "config.json").read_text())
    assert saved["model"]["vocab_size"] > 0 and saved["train"]["steps"] == 20
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert any("val/loss" in r for r in rows)
    assert any("perf/tokens_per_second" in r and "perf/mfu" in r for r in rows)
    assert (trained / "plots" / "loss.png").stat().st_size > 1000


def test_eval_json_reports_language_model_figures(trained, text, capsys):
    code, out, _ = run(capsys, "eval", "--workdir", str(trained), "--json")
    f = json.loads(out)
    assert code == 0 and f["step"] == 20
    assert f["num_tokens"] == len(text) - int(0.9 * len(text)) - 1  # the whole split
    assert f["perplexity"] == pytest.approx(math.exp(f["loss"]))
    assert f["bits_per_char"] == pytest.approx(f["loss"] / math.log(2))
    assert f["loss"] < math.log(len(set(text)))  # it learned something in 20 steps
    # Fewer batches only when this command asks (the run's saved eval.max_batches is 2).
    code, out, _ = run(capsys, "eval", "--workdir", str(trained), "--json",
                       "--set", "eval.max_batches=1")  # fmt: skip
    part = json.loads(out)
    assert code == 0 and part["max_batches"] == 1 and part["num_tokens"] == 8 * 32


def test_load_takes_a_checkpoint_as_the_cli_does(trained):
    import genzoo
    from genzoo.errors import UserError

    assert genzoo.load(trained, checkpoint="10").run.step == 10  # digits, as --checkpoint 10
    assert genzoo.load(trained, checkpoint=np.int64(10)).run.step == 10
    for bad in (True, None, 3.5, -1, "ten", "latest "):
        with pytest.raises(UserError, match="checkpoint must be latest, best or a step number"):
            genzoo.load(trained, checkpoint=bad)


def test_sample_is_seeded_and_greedy_is_deterministic(trained, capsys):
    base = ("sample", "--workdir", str(trained), "--prompt", "KING:", "--max-new-tokens", "20")
    _, a, _ = run(capsys, *base, "--seed", "1", "--num", "2")
    _, b, _ = run(capsys, *base, "--seed", "1", "--num", "2")
    _, c, _ = run(capsys, *base, "--seed", "2", "--num", "2")
    assert a == b and a != c and a.startswith("KING:")
    _, g1, _ = run(capsys, *base, "--temperature", "0", "--seed", "1")
    _, g2, _ = run(capsys, *base, "--temperature", "0", "--seed", "9")
    assert g1 == g2 and g1.startswith("KING:")


def test_a_moved_run_samples_without_its_data_set(trained, tmp_path, monkeypatch, capsys):
    """The run keeps its alphabet (chars.json): sampling on a machine without tiny Shakespeare
    gives what it gave beside it; evaluation names the missing file."""
    base = ("sample", "--workdir", str(trained), "--prompt", "KING:", "--max-new-tokens", "20")
    _, here, _ = run(capsys, *base, "--seed", "3")
    monkeypatch.setenv("GENZOO_DATA_DIR", str(tmp_path / "no_data"))
    monkeypatch.setenv("GENZOO_CACHE_DIR", str(tmp_path / "no_cache"))
    code, moved, err = run(capsys, *base, "--seed", "3")
    assert code == 0 and moved == here and err == ""
    code, _, err = run(capsys, "eval", "--workdir", str(trained))
    assert code == 2 and "tinyshakespeare/input.txt not found" in err


def test_resume_with_longer_run_and_refusal_of_model_change(trained, capsys):
    code, _, err = run(
        capsys,
        "train",
        "gpt_shakespeare_char",
        "--variant",
        "smoke",
        "--workdir",
        str(trained),
        "--set",
        "model.width=64",
        "--set",
        "optim.lr=0.1",
    )
    assert code == 2 and "model.width" in err and "optim.lr" in err
    before = (trained / "config.json").read_text()
    assert json.loads(before)["model"]["width"] == 32  # nothing rewritten by the refusal


def test_a_longer_resumed_run_keeps_the_first_launchs_decay(trained, tmp_path, capsys):
    """`optim.decay_steps=-1` is the run's length at its first launch: training on past it
    keeps that schedule (then flat at min_lr) rather than stretch the decay already begun."""
    longer = tmp_path / "longer"
    shutil.copytree(trained, longer)
    argv = ("train", "gpt_shakespeare_char", "--variant", "smoke", "--workdir", str(longer))
    code, _, _ = run(capsys, *argv, "--set", "train.steps=24", "--set", "log.every_steps=1")
    saved = json.loads((longer / "config.json").read_text())
    assert code == 0 and saved["train"]["steps"] == 24 and saved["optim"]["decay_steps"] == 20
    lrs = {r["step"]: r["train/lr"] for r in metrics.read(longer / "metrics.jsonl")
           if "train/lr" in r and r["step"] > 20}  # fmt: skip
    assert sorted(lrs) == [21, 22, 23, 24]
    np.testing.assert_allclose(list(lrs.values()), saved["optim"]["min_lr"], rtol=1e-6)


def test_init_from_starts_where_the_source_run_ended(trained, tmp_path, capsys):
    _, out, _ = run(capsys, "eval", "--workdir", str(trained), "--json")
    source_loss = json.loads(out)["loss"]
    new = tmp_path / "finetuned"
    argv = ("train", "gpt_shakespeare_char", "--variant", "smoke", "--workdir", str(new))
    code, _, _ = run(capsys, *argv, "--init-from", str(trained), "--set", "train.steps=1")
    assert code == 0
    assert json.loads((new / "config.json").read_text())["train"]["init_from"] == str(trained)
    _, out, _ = run(capsys, "eval", "--workdir", str(new), "--json")
    assert abs(json.loads(out)["loss"] - source_loss) < 0.05  # one small step from the source
    # The fine-tune logs its starting point (step 0) on the same eval batches the source run
    # used at its last step, so the two figures are the same number.
    read = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    source_last = [r["val/loss"] for r in read(trained) if r["step"] == 20 and "val/loss" in r]
    first = read(new)[0]
    assert first["step"] == 0 and first["val/loss"] == pytest.approx(source_last[0], abs=1e-6)


def test_chain_links_a_fine_tune_to_the_run_it_starts_from():
    from genzoo import chain

    plan = chain.plan("bert_bible_genre", "cpu")
    assert plan == [("bert_mlm_english", "cpu", "runs/bert_mlm_english"),
                    ("bert_bible_genre", "cpu", "runs/bert_bible_genre")]  # fmt: skip
    # `runs/demo` (made by `make demo`) has no experiment of its name: no link, train's own check
    assert chain.plan("gpt_bible_finetune", "cpu") == [
        ("gpt_bible_finetune", "cpu", "runs/gpt_bible_finetune")
    ]
    assert [p[0] for p in chain.plan("gpt_bible_finetune", None)] == [
        "gpt_shakespeare_char", "gpt_bible_finetune"
    ]  # fmt: skip
