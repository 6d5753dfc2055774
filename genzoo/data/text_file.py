"""A UTF-8 text file of the user's as a language-model data set (`data.name=text_file`).

nanoGPT's `prepare.py` on any text: the first 90% of the file trains, the rest validates.
`data.tokenizer=char` reads it as characters (the alphabet of the whole file, sorted: on tiny
Shakespeare's input.txt exactly the ids of `tinyshakespeare_char`); `bpe` as sentencepiece
pieces fit on the train part (`data.vocab_size`). Either tokenizer is kept in the workdir and
read back from there, so `eval`, `sample` and a resume keep it even when the file changes.
A character outside the alphabet (another run's, `data.alphabet_from`) is refused unless
`data.unknown_chars` says `drop` or names a character of the alphabet to put in its place.

The file is read whole, as the TFDS-built corpora are read whole once built: an array_record
copy in the cache would cost a second copy of the user's file and buy nothing for text that
fits in memory (corpora that do not: `token_corpus`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from genzoo.data import sources, tokenizers
from genzoo.data.text import CharTokenizer, TokenStreamData
from genzoo.data.tokenizers import CHARS
from genzoo.errors import UserError

TOKENIZERS = ("char", "bpe")
log = logging.getLogger(__name__)


def text_file(cfg, workdir=None) -> TokenStreamData:
    path = cfg.path
    if not path and cfg.get("shakespeare_if_unset", False):  # smoke runs: no file to give
        from genzoo.data import shakespeare

        path = str(shakespeare.source_path())
    text = _read(path)
    cut = int(0.9 * len(text))
    texts = {"train": text[:cut], "validation": text[cut:]}
    if cfg.tokenizer not in TOKENIZERS:
        raise UserError(f"data.tokenizer must be one of {', '.join(TOKENIZERS)}, "
                        f"got {cfg.tokenizer!r}")  # fmt: skip
    saved = Path(workdir) if workdir else None
    if cfg.tokenizer == "char":
        alphabet, whose = _alphabet(saved, text, cfg.get("alphabet_from", ""))
        tokenizer = CharTokenizer(alphabet)
        artifacts = tokenizer.artifacts
        unknown = _unknown_chars(cfg.get("unknown_chars", "refuse"), alphabet)
        encode = lambda t: char_ids(t, alphabet, unknown=unknown)  # noqa: E731
    else:  # pieces with byte fallback: every text fits
        fit = lambda: tokenizers.train_sentencepiece(texts["train"], cfg.vocab_size, "bpe")  # noqa: E731
        tokenizer = tokenizers.saved_or_trained(workdir, tokenizers.FILENAME, fit)
        artifacts, whose = tokenizer.artifacts, "this run's pieces"
        encode = lambda t: np.asarray(tokenizer.encode(t), np.int32)  # noqa: E731
    try:
        splits = {s: encode(t) for s, t in texts.items()}
    except UserError as e:  # the file changed since the run saved its alphabet, or
        # another run's alphabet (data.alphabet_from) lacks some of the file's characters
        hint = ("; --set data.unknown_chars=drop drops them, or =C reads them as the character C"
                if cfg.tokenizer == "char" else "")  # fmt: skip
        raise UserError(f"{path} does not fit {whose}: {e}{hint}") from None
    for name, part in (("train", "first 90%"), ("validation", "last 10%")):
        if len(splits[name]) < cfg.seq_len + 2:  # a window and its shifted targets
            raise UserError(f"{path}: its {part} ({name}) holds {len(splits[name])} tokens, "
                            f"too few for data.seq_len={cfg.seq_len} (needs {cfg.seq_len + 2}): "
                            "give a longer text or a smaller data.seq_len")  # fmt: skip
    per_char = {s: len(texts[s]) / max(len(splits[s]), 1) for s in splits}
    return TokenStreamData(splits, tokenizer, cfg.seq_len, per_char, artifacts)


def _read(path: str) -> str:
    if not path:
        raise UserError("data.path: set it to a UTF-8 text file (--set data.path=input.txt)")
    file = Path(path)
    if not file.is_file():
        raise UserError(f"data.path={path!r} is not a file")
    text = sources.read_utf8(file, "utf-8-sig")  # a byte-order mark is not text
    if not text:
        raise UserError(f"data.path={path!r} is empty")
    return text


def _alphabet(saved: Path | None, text: str, other_run: str = "") -> tuple[str, str]:
    """(alphabet, whose it is): the run's saved one, else another run's (`data.alphabet_from`:
    a fine-tune from it keeps its embedding rows), else the file's own."""
    if saved is not None and (saved / CHARS).is_file():
        return tokenizers.read_chars(saved / CHARS), "this run's alphabet"
    if other_run:
        return _alphabet_of_run(Path(other_run)), f"{other_run}'s alphabet"
    return "".join(sorted(set(text))), "the file's alphabet"


def _alphabet_of_run(run: Path) -> str:
    """A character model's alphabet: its `chars.json`, or its data set's (`runs/demo`)."""
    from genzoo import data, workdir

    if (run / CHARS).is_file():
        return tokenizers.read_chars(run / CHARS)
    tokenizer = data.load(workdir.load_config(run).data, run).tokenizer
    if not isinstance(tokenizer, CharTokenizer):
        raise UserError(f"data.alphabet_from={str(run)!r} is not a character model's run")
    return tokenizer.vocab


def _unknown_chars(value, alphabet: str) -> int | str:
    """`data.unknown_chars` as `char_ids` takes it: "refuse", "drop", or the replacement's id."""
    if value in ("refuse", "drop"):
        return value
    if isinstance(value, str) and len(value) == 1 and value in alphabet:
        return alphabet.index(value)
    raise UserError(f"data.unknown_chars must be refuse, drop or one character of the alphabet, "
                    f"got {value!r}")  # fmt: skip


def char_ids(text: str, alphabet: str, chunk: int = 1 << 24, unknown="refuse") -> np.ndarray:
    """`CharTokenizer(alphabet).encode(text)` as an array (uint16 for alphabets that fit), by
    a table over code points, a chunk at a time: a list of Python ints took 10 s and 1.4 GiB
    for a 100 MB file. Characters outside the alphabet are refused, dropped (`unknown="drop"`)
    or read as the id `unknown`; how many were is logged."""
    codes = np.array([ord(ch) for ch in alphabet], np.int64)
    table = np.full(int(codes.max()) + 2, -1, np.int32)  # the last slot: any point beyond
    table[codes] = np.arange(len(codes), dtype=np.int32)
    out = np.empty(len(text), np.uint16 if len(alphabet) <= 1 << 16 else np.int32)
    end, changed = 0, {}
    for start in range(0, len(text), chunk):
        part = np.frombuffer(text[start : start + chunk].encode("utf-32-le"), np.uint32)
        ids = table[np.minimum(part, len(table) - 1)]
        bad = ids < 0
        if bad.any():
            points, counts = np.unique(part[bad], return_counts=True)
            if unknown == "refuse":
                missing = "".join(chr(c) for c in points)
                raise UserError(f"characters not in the vocabulary: {missing!r}")
            for c, n in zip(points.tolist(), counts.tolist(), strict=True):
                changed[chr(c)] = changed.get(chr(c), 0) + n
            ids = ids[~bad] if unknown == "drop" else np.where(bad, unknown, ids)
        out[end : end + len(ids)] = ids
        end += len(ids)
    if changed:
        what = "dropped" if unknown == "drop" else f"read as {alphabet[unknown]!r}"
        log.warning("%d characters outside the alphabet %s: %s", sum(changed.values()), what,
                    "".join(sorted(changed)))  # fmt: skip
    return out[:end]
