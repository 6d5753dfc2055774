"""`genzoo import`: turn published weights into a genzoo workdir (eval, sample, --init-from)."""

from __future__ import annotations

from pathlib import Path

from genzoo import data as data_lib
from genzoo import experiment, workdir
from genzoo.checkpoint import Checkpointer
from genzoo.data import tokenizers
from genzoo.errors import UserError
from genzoo.models import gpt


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


def import_gpt2(source: Path, run_dir: Path) -> Path:
    """Writes `run_dir` holding the GPT-2 in `source` as a step-0 checkpoint plus its tokenizer."""
    from genzoo.trainer import Trainer

    source, run_dir = Path(source), Path(run_dir)
    if (run_dir / workdir.CONFIG).exists():
        raise UserError(f"{run_dir} already holds a run; import into a new workdir")
    missing = [f for f in tokenizers.GPT2_FILES if not (source / f).is_file()]
    if missing:
        raise UserError(f"{source} lacks the GPT-2 tokenizer files {', '.join(missing)}")
    fields, params = gpt.from_hf(source)
    cfg = gpt2_config(fields, source)
    data = data_lib.load(cfg.data)
    frozen = workdir.resolve(cfg, data)
    if data.tokenizer.vocab_size > fields["vocab_size"]:
        raise UserError(
            f"tokenizer has {data.tokenizer.vocab_size} ids, the model {fields['vocab_size']}"
        )
    trainer = Trainer(frozen)
    state = trainer.init_state(params)  # checks every shape before anything is written
    workdir.save_config(frozen, run_dir, data)
    ckpt = Checkpointer(run_dir / "checkpoints", keep=frozen.checkpoint.keep, async_save=False)
    ckpt.save(0, state, data.train_iterator(frozen.train.batch_size, frozen.train.seed).get_state())
    ckpt.close()
    return run_dir
