"""`genzoo import`: turn published weights into a genzoo workdir (eval, sample, --init-from)."""

from __future__ import annotations

from pathlib import Path

from genzoo import data as data_lib
from genzoo import experiment, workdir
from genzoo.checkpoint import Checkpointer
from genzoo.converters import hf_bert, hf_gpt2
from genzoo.data import tokenizers
from genzoo.data.sources import folder_atomic
from genzoo.errors import UserError


def gpt2_config(fields: dict, tokenizer_dir: Path):
    c = experiment.base_config()
    c.experiment.update(name="gpt2_import", description="GPT-2 weights imported from Hugging Face")
    c.model = dict(family="gpt", **fields)
    c.data = dict(name="tinyshakespeare_gpt2", seq_len=min(256, fields["block_size"]),
                  tokenizer_dir=str(Path(tokenizer_dir).absolute()))  # fmt: skip
    c.train.update(steps=0, batch_size=8)
    c.optim.update(lr=1e-4, min_lr=1e-5, warmup_steps=10)
    c.eval.batch_size = 8
    return c


def bert_config(fields: dict, tokenizer_dir: Path, lowercase: bool):
    c = experiment.base_config()
    c.experiment.update(name="bert_import", description="BERT weights imported from Hugging Face")
    c.model = dict(family="bert", **fields)
    c.data = dict(name="english_mlm", vocab_size=fields["vocab_size"], seed=0,
                  max_len=min(128, fields["max_len"]), lowercase=lowercase,
                  tokenizer_dir=str(Path(tokenizer_dir).absolute()))  # fmt: skip
    c.train.update(steps=0, batch_size=8)
    c.optim.update(lr=1e-4, min_lr=1e-5, warmup_steps=10)
    c.eval.batch_size = 8
    return c


def _write(cfg, params, run_dir: Path) -> Path:
    """Writes `cfg` and `params` as a step-0 run, after checking every shape."""
    from genzoo.trainer import Trainer

    data = data_lib.load(cfg.data)
    frozen = workdir.resolve(cfg, data)
    trainer = Trainer(frozen)
    state = trainer.init_state(params)  # checks every shape before anything is written
    data_state = data.train_iterator(frozen.train.batch_size, frozen.train.seed).get_state()
    with folder_atomic(run_dir) as folder:  # a failure (a full disk) leaves no half a run
        workdir.save_config(frozen, folder, data)
        ckpt = Checkpointer(folder / "checkpoints", keep=frozen.checkpoint.keep, async_save=False)
        ckpt.save(0, state, data_state)
        ckpt.close()
    return run_dir


def _check_new(run_dir: Path, source: Path, files) -> None:
    if (run_dir / workdir.CONFIG).exists():
        raise UserError(f"{run_dir} already holds a run; import into a new workdir")
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(f"{run_dir} is not an empty folder; import into a new workdir")
    missing = [f for f in files if not (source / f).is_file()]
    if missing:
        raise UserError(f"{source} lacks the tokenizer files {', '.join(missing)}")


def import_gpt2(source: Path, run_dir: Path) -> Path:
    """Writes `run_dir` holding the GPT-2 in `source` as a step-0 checkpoint plus its tokenizer."""
    source, run_dir = Path(source), Path(run_dir)
    _check_new(run_dir, source, tokenizers.GPT2_FILES)
    fields, params = hf_gpt2.from_hf(source)
    cfg = gpt2_config(fields, source)
    vocab = data_lib.load(cfg.data).tokenizer.vocab_size
    if vocab > fields["vocab_size"]:
        raise UserError(f"tokenizer has {vocab} ids, the model {fields['vocab_size']}")
    return _write(cfg, params, run_dir)


def import_bert(source: Path, run_dir: Path) -> Path:
    """Writes `run_dir` holding the BertForMaskedLM in `source` plus its WordPiece vocabulary."""
    import json

    source, run_dir = Path(source), Path(run_dir)
    _check_new(run_dir, source, (tokenizers.WORDPIECE_FILE,))
    lowercase = True
    if (source / "tokenizer_config.json").is_file():
        lowercase = json.loads((source / "tokenizer_config.json").read_text()).get(
            "do_lower_case", True
        )
    tok = tokenizers.WordPieceTokenizer(
        (source / tokenizers.WORDPIECE_FILE).read_bytes(), lowercase
    )
    fields, params = hf_bert.from_hf(source, tok)
    return _write(bert_config(fields, source, lowercase), params, run_dir)
