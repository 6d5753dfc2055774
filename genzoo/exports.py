"""`genzoo export`: a trained run as a Hugging Face folder (config.json + model.safetensors +
the run's tokenizer files), so PyTorch users load it with `from_pretrained`.

A GPT becomes a `GPT2LMHeadModel` (the same architecture: pre-LayerNorm, learned positions,
tied head); a BERT a `BertForMaskedLM`, or a `BertForSequenceClassification` when fine-tuned
to classify (its labels named). The tokenizer files are the run's own: GPT-2's vocab.json and
merges.txt when it reads GPT-2 pieces (then `GPT2TokenizerFast.from_pretrained` works too),
WordPiece's vocab.txt, else genzoo's (`chars.json`: the characters in id order;
`tokenizer.model`: sentencepiece). The weights are the ones evaluation uses (the average when
the run keeps one).
"""

from __future__ import annotations

import json
from pathlib import Path

from genzoo.data import tokenizers
from genzoo.data.sources import folder_atomic
from genzoo.errors import UserError


def _gpt(run) -> tuple[dict, dict, str]:
    from genzoo.converters import hf_gpt2

    config, tensors = hf_gpt2.to_hf(run.cfg.model, run.params)
    return config, tensors, "GPT2LMHeadModel"


def _bert(run) -> tuple[dict, dict, str]:
    from genzoo.converters import hf_bert
    from genzoo.kinds.masked_lm import class_names

    return hf_bert.to_hf(run.cfg.model, run.params, class_names(run))


EXPORTERS = {"gpt": _gpt, "bert": _bert}


def write(run, out: Path) -> dict:
    """Writes `run` (a workdir.Run) as a Hugging Face folder at the new path `out`; returns
    what was written ({"class", "tensors", "bytes", "files"})."""
    from safetensors.numpy import save

    family = run.cfg.model.family
    if family not in EXPORTERS:
        raise UserError(f"genzoo export writes Hugging Face models for {', '.join(EXPORTERS)}; "
                        f"{run.path} is a {family}")  # fmt: skip
    config, tensors, cls = EXPORTERS[family](run)
    files = tokenizers.files_of(run.tokenizers)  # a char alphabet too: chars.json
    with folder_atomic(out) as tmp:
        meta = {"format": "pt", "genzoo_step": str(run.step)}
        (tmp / "model.safetensors").write_bytes(save(tensors, meta))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name, blob in files.items():
            (tmp / name).write_bytes(blob)
    size = sum(v.nbytes for v in tensors.values())
    return {"class": cls, "tensors": len(tensors), "bytes": size, "files": sorted(files)}
