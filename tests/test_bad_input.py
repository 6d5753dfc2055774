"""The bad-input contract, case by case: one stderr line under 300 characters, exit code 2,
no traceback, nothing on stdout, and every file left byte-identical (the tree is hashed
before and after)."""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_gpt2_dir

from genzoo import cli, errors, quantize, workdir
from genzoo.data import tokenizers

CHAR = ("train", "gpt_shakespeare_char", "--variant", "smoke", "--set", "log.progress=false")


@pytest.fixture(scope="module")
def runs(smoke_char_run, tmp_path_factory):
    """A trained char GPT and a trained BPE GPT (its workdir holds a tokenizer file)."""
    root = tmp_path_factory.mktemp("bad")
    shutil.copytree(smoke_char_run, root / "char")
    bpe = ["train", "gpt_shakespeare_bpe", "--variant", "smoke", "--workdir", str(root / "bpe")]
    assert cli.main([*bpe, "--set", "log.progress=false"]) == 0
    return root


def _copy(runs, tmp, name="char", as_name="copy") -> Path:
    return Path(shutil.copytree(runs / name, tmp / as_name))


def _edit_config(path: Path, section: str, key: str, value) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg[section][key] = value
    (path / "config.json").write_text(json.dumps(cfg))


SETUPS = {
    "file": lambda runs, tmp: (tmp / "afile").write_text("not a folder"),
    "copy": _copy,
    "typed": lambda runs, tmp: _edit_config(_copy(runs, tmp), "train", "batch_size", "eight"),
    "ranged": lambda runs, tmp: _edit_config(_copy(runs, tmp), "checkpoint", "keep", 0),
    "garbage": lambda runs, tmp: (_copy(runs, tmp) / "config.json").write_text("{not json"),
    "tokenizer": lambda runs, tmp: (_copy(runs, tmp, "bpe") / tokenizers.FILENAME).write_bytes(
        b"\x00garbage"
    ),
    "gpt2": lambda runs, tmp: tiny_gpt2_dir(tmp / "gpt2"),
    "truncated": lambda runs, tmp: (lambda f: f.write_bytes(f.read_bytes()[:100]))(
        tiny_gpt2_dir(tmp / "gpt2") / "model.safetensors"
    ),
    "random": lambda runs, tmp: (tiny_gpt2_dir(tmp / "gpt2") / "model.safetensors").write_bytes(
        np.random.default_rng(1).bytes(4000)
    ),
    "incomplete": lambda runs, tmp: tiny_gpt2_dir(tmp / "gpt2", drop="h.0.mlp.c_fc.weight"),
    "misshaped": lambda runs, tmp: tiny_gpt2_dir(tmp / "gpt2", reshape="h.0.attn.c_attn.weight"),
    "nosafetensors": lambda runs, tmp: (tiny_gpt2_dir(tmp / "gpt2") / "model.safetensors").unlink(),
    "empty": lambda runs, tmp: (tmp / "empty").mkdir(),
    "corpus_noval": lambda runs, tmp: _corpus(tmp, {"train.bin": 4000}),
    "corpus_odd": lambda runs, tmp: _corpus(tmp, {"train.bin": 4001, "val.bin": 400}),
    "latin1": lambda runs, tmp: (tmp / "text.txt").write_bytes("caf\xe9 ".encode("latin-1") * 99),
    "short": lambda runs, tmp: (tmp / "text.txt").write_text("too short\n", encoding="utf-8"),
    "empty text": lambda runs, tmp: (tmp / "text.txt").write_text(""),
    "quantized": lambda runs, tmp: (_copy(runs, tmp) / quantize.MARKER).write_text("{}"),
}


def _corpus(tmp: Path, sizes: dict) -> None:
    (tmp / "corpus").mkdir()
    for name, size in sizes.items():
        (tmp / "corpus" / name).write_bytes(bytes(size))


RUN, TMP = "{run}", "{tmp}"
NEW = (*CHAR, "--workdir", f"{TMP}/new")  # were a check missed, nothing lands in ./runs
CORPUS = ("train", "gpt_token_corpus", "--variant", "smoke", "--workdir", f"{TMP}/new")
TEXT = ("train", "gpt_text_file", "--workdir", f"{TMP}/new")  # not smoke: it has a default
IMPORT = ("import", "gpt2", f"{TMP}/gpt2", "--workdir", f"{TMP}/imp")
CASES = {
    # experiment and overrides
    "unknown experiment": ((("train", "no_such_experiment")), None),
    "config of an unknown experiment": (("config", "no_such_experiment"), None),
    "unknown key": (("train", "gpt_shakespeare_char", "--set", "train.nope=1"), None),
    "ill-typed value": (("train", "gpt_shakespeare_char", "--set", "train.steps=ten"), None),
    "override without =": (("train", "gpt_shakespeare_char", "--set", "train.steps"), None),
    "a section as a value": (("train", "gpt_shakespeare_char", "--set", "optim=1"), None),
    "unknown variant": (("train", "gpt_shakespeare_char", "--variant", "huge"), None),
    "unknown flag": (("train", "gpt_shakespeare_char", "--bogus-flag"), None),
    "no experiment file": (("train", "experiments/none.py"), None),
    # sizes, frequencies, ranges
    "batch 0": ((*NEW, "--set", "train.batch_size=0"), None),
    "batch negative": ((*NEW, "--set", "train.batch_size=-4"), None),
    "steps negative": ((*NEW, "--set", "train.steps=-5"), None),
    "steps 0": ((*NEW, "--set", "train.steps=0"), None),
    "checkpoint every 0": ((*NEW, "--set", "checkpoint.every_steps=0"), None),
    "checkpoint keep 0": ((*NEW, "--set", "checkpoint.keep=0"), None),
    "log every 0": ((*NEW, "--set", "log.every_steps=0"), None),
    "eval every negative": ((*NEW, "--set", "eval.every_steps=-1"), None),
    "lr negative": ((*NEW, "--set", "optim.lr=-1.0"), None),
    "lr infinite": ((*NEW, "--set", "optim.lr=1e999"), None),
    "grad accum 0": ((*NEW, "--set", "train.grad_accum=0"), None),
    "batch not a multiple of accum": ((*NEW, "--set", "train.grad_accum=3"), None),
    "ema decay 1.5": ((*NEW, "--set", "train.ema_decay=1.5"), None),
    "seed past 2**32": ((*NEW, "--set", "train.seed=99999999999999999999"), None),  # traceback
    "eval seed past 2**32": ((*NEW, "--set", "eval.seed=99999999999999999999"), None),
    "unknown optimizer": ((*NEW, "--set", "optim.name=adam"), None),
    "best mode": ((*NEW, "--set", "checkpoint.best_mode=median"), None),
    "best metric": ((*NEW, "--set", "checkpoint.keep_best=loss"), None),
    "every seconds negative": ((*NEW, "--set", "checkpoint.every_seconds=-1.0"), None),
    "time budget negative": ((*NEW, "--set", "train.max_seconds=-5"), None),
    "sequence past the context": ((*NEW, "--set", "data.seq_len=64"), None),
    "context of one token": (
        (*NEW, "--set", "model.block_size=1", "--set", "data.seq_len=1"),
        None,
    ),  # sampling past it looped forever
    "loss scale unknown": ((*NEW, "--set", "train.loss_scale=static"), None),
    "unknown remat policy": ((*NEW, "--set", "model.remat=some"), None),
    "unknown eval split": ((*NEW, "--set", "eval.split=test"), None),
    "loss chunk not dividing": ((*NEW, "--set", "model.loss_chunk=5"), None),
    # family and data settings: each would crash deep in a layer, run as float32 or train NaN
    **{
        f"{name} {setting}": (
            ("train", name, "--variant", "smoke", "--workdir", f"{TMP}/new", "--set", setting),
            None,
        )
        for name, setting in (
            ("vae_fashion_mnist", "model.latent=0"),
            ("vae_fashion_mnist", "model.widths=(8,16,32)"),
            ("vae_fashion_mnist", "model.iw_samples=0"),
            ("dcgan_fashion_mnist", "model.loss=wasserstein"),
            ("dcgan_fashion_mnist", "model.widths=(8,)"),
            ("hmm_shakespeare_char", "model.num_states=0"),
            ("clip_shapes", "model.patch=0"),
            ("bert_mlm_english", "model.mlp_hidden=0"),
            ("transformer_bible_es_en", "model.max_decode_len=0"),
            ("dvae_shapes", "model.tau_end=0.0"),
            ("dvae_shapes", "model.ema_decay=1.0"),
            ("classifier_fashion_mnist", "model.features=0"),
            ("shapes_judge", "model.widths=(0,8)"),
            ("gpt_shakespeare_char", "model.dtype=float64"),
            ("gpt_shakespeare_char", "model.dtype=int8"),
            ("gpt_shakespeare_char", "data.seq_len=0"),
            ("bert_mlm_english", "data.max_len=0"),
            ("transformer_bible_es_en", "data.max_tgt_len=1"),
            ("gpt_shakespeare_bpe", "data.vocab_size=0"),
        )
    },
    # meshes
    "mesh not dividing devices": ((*NEW, "--set", "mesh.data=3"), None),
    "mesh 0": ((*NEW, "--set", "mesh.data=0"), None),
    "mesh two -1": ((*NEW, "--set", "mesh.fsdp=-1"), None),
    "batch not dividing mesh": (
        (*NEW, "--set", "train.batch_size=4", "--set", "mesh.data=8"),
        None,
    ),  # fmt: skip
    # workdirs
    "workdir is a file": ((*CHAR, "--workdir", f"{TMP}/afile"), "file"),
    "workdir under a file": ((*CHAR, "--workdir", f"{TMP}/afile/run"), "file"),
    "workdir of another experiment": (
        ("train", "gpt_shakespeare_bpe", "--variant", "smoke", "--workdir", RUN),
        None,
    ),  # fmt: skip
    "resume changing the model": ((*NEW, "--set", "model.width=64", "--workdir", RUN), None),
    "hand-edited config (type)": (("eval", "--workdir", f"{TMP}/copy"), "typed"),
    "hand-edited config (range)": ((*CHAR, "--workdir", f"{TMP}/copy"), "ranged"),
    "corrupt config.json": (("sample", "--workdir", f"{TMP}/copy"), "garbage"),
    "init-from missing": (
        (*CHAR, "--init-from", f"{TMP}/missing", "--workdir", f"{TMP}/new"),
        None,
    ),  # fmt: skip
    "init-from other shapes": (
        (*CHAR, "--init-from", RUN, "--set", "model.width=64", "--workdir", f"{TMP}/new"),
        None,
    ),  # fmt: skip
    "init-from bad checkpoint": (
        (*CHAR, "--init-from", f"{RUN}@banana", "--workdir", f"{TMP}/new"),
        None,
    ),  # fmt: skip
    # token corpora
    "corpus path unset": ((*CORPUS, "--set", "data.synthetic_tokens=0"), None),
    "corpus path not a folder": ((*CORPUS, "--set", f"data.path={TMP}/afile"), "file"),
    "corpus without val.bin": ((*CORPUS, "--set", f"data.path={TMP}/corpus"), "corpus_noval"),
    "corpus not uint16": ((*CORPUS, "--set", f"data.path={TMP}/corpus"), "corpus_odd"),
    "text file unset": (TEXT, None),
    "text file is a folder": ((*TEXT, "--set", f"data.path={TMP}"), None),
    "text file not UTF-8": ((*TEXT, "--set", f"data.path={TMP}/text.txt"), "latin1"),
    "text file shorter than a window": ((*TEXT, "--set", f"data.path={TMP}/text.txt"), "short"),
    "text file empty": ((*TEXT, "--set", f"data.path={TMP}/text.txt"), "empty text"),  # traceback
    "text file under BPE's vocabulary": (
        (*TEXT, "--variant", "bpe", "--set", f"data.path={TMP}/text.txt"),
        "short",
    ),
    "text file unknown_chars two characters": (
        (*TEXT, "--set", f"data.path={TMP}/text.txt", "--set", "data.unknown_chars=ab"),
        "short",
    ),
    "text file unknown tokenizer": (
        (*TEXT, "--set", f"data.path={TMP}/afile", "--set", "data.tokenizer=word"),
        "file",
    ),  # fmt: skip
    # export
    "export into an existing folder": (("export", "--workdir", RUN, "--out", TMP), None),
    "export missing workdir": (
        ("export", "--workdir", f"{TMP}/missing", "--out", f"{TMP}/o"),
        None,
    ),
    "export a quantized copy": (
        ("export", "--workdir", f"{TMP}/copy", "--out", f"{TMP}/o"),
        "quantized",
    ),
    # eval
    "eval missing workdir": (("eval", "--workdir", f"{TMP}/missing"), None),
    "eval not a workdir": (("eval", "--workdir", f"{TMP}/empty"), "empty"),
    "eval workdir is a file": (("eval", "--workdir", f"{TMP}/afile"), "file"),
    "eval --set outside eval": (("eval", "--workdir", RUN, "--set", "train.steps=3"), None),
    "eval --set eval range": (("eval", "--workdir", RUN, "--set", "eval.batch_size=-2"), None),
    "eval missing step": (("eval", "--workdir", RUN, "--checkpoint", "999"), None),
    "eval no best": (("eval", "--workdir", RUN, "--checkpoint", "best"), None),
    "eval bad --checkpoint": (("eval", "--workdir", RUN, "--checkpoint", "newest"), None),
    # sample
    "prompt out of vocabulary": (("sample", "--workdir", RUN, "--prompt", "\u00e9t\u00e9"), None),
    "prompt not UTF-8": (("sample", "--workdir", RUN, "--prompt", "ab\udcff"), None),
    "beams past context": (("sample", "--workdir", RUN, "--max-new-tokens=99", "--beams=2"), None),
    "top-p 0": (("sample", "--workdir", RUN, "--top-p", "0"), None),
    "top-p 1.5": (("sample", "--workdir", RUN, "--top-p", "1.5"), None),
    "temperature negative": (("sample", "--workdir", RUN, "--temperature", "-1"), None),
    "temperature nan": (("sample", "--workdir", RUN, "--temperature", "nan"), None),
    "num 0": (("sample", "--workdir", RUN, "--num", "0"), None),
    "greedy, twice": (("sample", "--workdir", RUN, "--temperature", "0", "--num", "2"), None),
    "beam search, twice": (("sample", "--workdir", RUN, "--beams", "2", "--num", "2"), None),
    "reconstruct a text model": (("sample", "--workdir", RUN, "--reconstruct"), None),
    "corrupt tokenizer file": (("sample", "--workdir", f"{TMP}/copy"), "tokenizer"),
    # import
    "import truncated safetensors": (IMPORT, "truncated"),
    "import random bytes": (IMPORT, "random"),
    "import incomplete": (IMPORT, "incomplete"),
    "import mis-shaped": (IMPORT, "misshaped"),
    "import without safetensors": (IMPORT, "nosafetensors"),
    "import into a run": (("import", "gpt2", f"{TMP}/gpt2", "--workdir", RUN), "gpt2"),
    "import with an empty tokenizer": (IMPORT, "gpt2"),  # vocab.json is {}
    "import into a folder not empty": (("import", "gpt2", f"{TMP}/gpt2", "--workdir", TMP), "gpt2"),
    "import unknown format": (
        ("import", "llama", f"{TMP}/gpt2", "--workdir", f"{TMP}/imp"),
        "gpt2",
    ),  # fmt: skip
}


def _tree(*roots: Path) -> dict:
    """{path: sha256 of the bytes, or "dir"} under each root."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_the_sweep_has_forty_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case, runs, tmp_path, capsys):
    argv, setup = CASES[case]
    if setup:
        SETUPS[setup](runs, tmp_path)
    argv = [a.replace(RUN, str(runs / "char")).replace(TMP, str(tmp_path)) for a in argv]
    before = _tree(tmp_path, runs)
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, err[-600:])
    assert len(err.strip().splitlines()) == 1 and err.startswith("genzoo: error:"), err[-600:]
    assert len(err) < 300 and "Traceback" not in err and out == ""
    assert _tree(tmp_path, runs) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_read_only_workdir_is_refused(runs, tmp_path, capsys):
    path = _copy(runs, tmp_path)
    os.chmod(path, 0o555)
    try:
        assert cli.main([*CHAR, "--workdir", str(path), "--set", "train.steps=30"]) == 2
    finally:
        os.chmod(path, 0o755)
    assert "permission denied" in capsys.readouterr().err


def test_a_cache_folder_that_cannot_be_made_is_refused(runs, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("GENZOO_CACHE_DIR", str(tmp_path / "file" / "cache"))
    before = _tree(tmp_path, runs)
    assert cli.main([*CHAR, "--workdir", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "set GENZOO_CACHE_DIR to a writable folder" in err
    assert _tree(tmp_path, runs) == before


def test_a_busy_workdir_is_refused_before_loading_anything(runs, capsys):
    lock = workdir.WriterLock(runs / "char").acquire()
    try:
        assert cli.main([*CHAR, "--workdir", str(runs / "char")]) == 2
    finally:
        lock.release()
    assert "another process" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name,value",
    [
        ("GENZOO_ATTENTION_GRAD", "fast"),
        ("GENZOO_ATTENTION", "flash"),
        ("GENZOO_ATTENTION_BLOCKS", "zero"),
        ("GENZOO_FLASH_TILES", "128x64"),
        ("GENZOO_MATMUL_GRAD", "tall"),
        ("GENZOO_INT8", "fast"),
        ("GENZOO_OVERLAP", "yes"),
        ("GENZOO_EXECUTABLES", "false"),  # once silently "on" (only "0" was read)
        ("GENZOO_THREEFRY", "fast"),
        ("GENZOO_OFFLINE", "true"),
        ("GENZOO_DISTRIBUTED", "slurm"),
        ("GENZOO_MALLOC", "jemalloc"),
    ],
)
def test_a_bad_speed_knob_is_one_line_exit_2_and_writes_nothing(
    name, value, runs, tmp_path, capsys, monkeypatch
):
    """Every knob of `errors.KNOBS` and `errors.FORMATS` is checked when a command starts
    (`runs`: the data set is built already, so its one-time message is not in the output)."""
    monkeypatch.setenv(name, value)
    code = cli.main([*CHAR, "--workdir", str(tmp_path / "new")])
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("genzoo: error:") and name in err, err[-600:]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and out == "", out
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("damage", ["missing", "unreadable"])
def test_wmt14_not_built_is_one_line_exit_2_and_writes_nothing(damage, tmp_path, capsys,
                                                                monkeypatch):  # fmt: skip
    """A data set the user builds with TFDS: no catalogue lookup (its logged traceback and list
    of hundreds of names), no download, no workdir."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    if damage == "unreadable":
        version = tmp_path / "tfds" / "wmt14_translate" / "de-en" / "1.0.0"
        version.mkdir(parents=True)
        (version / "dataset_info.json").write_text("not json")
    code = cli.main(["train", "transformer_wmt14_en_de", "--workdir", str(tmp_path / "new")])
    out, err = capsys.readouterr()
    assert code == 2 and err.startswith("genzoo: error: TFDS wmt14_translate/de-en"), err[-600:]
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and out == "", err[-600:]
    assert not (tmp_path / "new").exists()


def test_every_genzoo_variable_is_a_checked_knob_or_a_path():
    """A new switch read with `os.environ.get` would accept typos silently: every GENZOO_
    variable the package reads is in `errors.KNOBS` or `errors.FORMATS` (checked at start) or
    takes free text."""
    free = {"GENZOO_DATA_DIR", "GENZOO_CACHE_DIR", "GENZOO_EXPERIMENTS_DIR", "GENZOO_WORDNET_DIR",
            "GENZOO_SHAPES_SPLITS"}  # fmt: skip
    source = "\n".join(p.read_text() for p in Path(errors.__file__).parent.rglob("*.py"))
    read = set(re.findall(r"GENZOO_[A-Z0-9_]*[A-Z0-9]", source))
    assert read - free - set(errors.KNOBS) - set(errors.FORMATS) == set()
