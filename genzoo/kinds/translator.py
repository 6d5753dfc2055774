"""Translators (the encoder-decoder Transformer): text in, text out, batched with beams."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from genzoo import kinds, models
from genzoo.data.tokenizers import EOS
from genzoo.errors import UserError
from genzoo.kinds import Kind, Option, register
from genzoo.kinds.language_model import BEAM_OPTIONS, PROMPT

log = logging.getLogger(__name__)


@runtime_checkable
class TranslatorFamily(Protocol):
    def translate(self, params, cfg, src_BxS, src_valid_BxS, *, max_new_tokens: int,
                  num_beams: int = 1, length_penalty: float = 1.0):  # fmt: skip
        """Target ids [B, max_new_tokens] per source row: EOS, then EOS-padded."""

    def max_decode_length(self, cfg) -> int:
        """The most target tokens a translation may have."""


class Translator:
    """A trained translation run: `translate(texts)` with its tokenizers and beams."""

    def __init__(self, run):
        self.run, self.family = run, models.get(run.cfg.model.family)
        self.src_tok, self.tgt_tok = run.tokenizers["src"], run.tokenizers["tgt"]
        self.src_len = run.cfg.data.max_src_len  # the data's `lengths["src"]`

    def translate(self, texts, *, num_beams: int = 4, length_penalty: float = 0.6,
                  max_new_tokens: int | None = None, batch_size: int = 64,
                  progress: bool = False) -> list[str]:  # fmt: skip
        """One translation per text; sources longer than the training length are cut (with a
        warning naming how many)."""
        texts = kinds.texts(texts)
        kinds.check_sampling(dict(num_beams=num_beams, length_penalty=length_penalty,
                                  max_new_tokens=max_new_tokens,
                                  batch_size=batch_size))  # fmt: skip
        limit = self.family.max_decode_length(self.run.cfg.model)
        max_new_tokens = limit if max_new_tokens is None else max_new_tokens
        if not 1 <= max_new_tokens <= limit:
            raise UserError(f"--max-new-tokens must be in [1, {limit}]")
        out, cut = [], 0
        chunks = range(0, len(texts), batch_size)
        for start in tqdm(chunks, disable=not progress, unit="batch", desc="translating"):
            rows = texts[start : start + batch_size]
            src_BxS = np.zeros((batch_size, self.src_len), np.int32)  # fixed shape: one compile
            for i, text in enumerate(rows):
                ids = self.src_tok.encode(text)
                cut += len(ids) > self.src_len - 1
                ids = ids[: self.src_len - 1] + [EOS]
                src_BxS[i, : len(ids)] = ids
            new_BxN = self.family.translate(
                self.run.params, self.run.cfg.model, src_BxS, src_BxS > 0,
                max_new_tokens=max_new_tokens, num_beams=num_beams, length_penalty=length_penalty,
            )  # fmt: skip
            for ids in np.asarray(new_BxN)[: len(rows)].tolist():
                out.append(self.tgt_tok.decode(ids[: ids.index(EOS)] if EOS in ids else ids))
        if cut:  # the encoder never saw more; a silent cut reads as a bad translation
            log.warning("%d of %d texts had more than the model's %d source tokens: each was "
                        "cut there (translate them in shorter pieces)", cut, len(texts),
                        self.src_len - 1)  # fmt: skip
        return out


def _sample(translator: Translator, args) -> None:
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise UserError(f"--input {path} is not a file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"--input {path} is not UTF-8 text: {e.reason} at byte {e.start}"
            ) from None
        # One translation per "\n"-ended line, so output line i answers input line i
        # (str.splitlines would also split at U+2028 or U+0085 inside a line).
        lines = (
            [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")]
            if text
            else []
        )
    elif args.prompt:
        lines = [args.prompt]
    else:
        raise UserError("give the text to translate with --prompt TEXT or --input FILE")
    if args.output and not Path(args.output).absolute().parent.is_dir():
        raise UserError(f"folder of --output {args.output} does not exist")
    out = translator.translate(
        lines, num_beams=args.beams, length_penalty=args.length_penalty,
        max_new_tokens=args.max_new_tokens, progress=bool(args.input),
    )  # fmt: skip
    text = "".join(line + "\n" for line in out)
    if args.output:
        from genzoo.data import sources

        sources.write_atomic(Path(args.output), lambda f: f.write(text.encode("utf-8")))
        print(f"{len(out)} translations written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


register(
    Kind(
        "translator",
        TranslatorFamily,
        Translator,
        options=(
            PROMPT,
            Option("--input", None, dict(help="translator: a file to translate line by line")),
            Option("--output", None, dict(help="translator: write translations here")),
            dataclasses.replace(BEAM_OPTIONS[0], default=4),
            dataclasses.replace(BEAM_OPTIONS[1], default=0.6),
            BEAM_OPTIONS[2],
        ),
        sample=_sample,
    )
)
