"""Language models (GPT, HMM): continue prompts, score texts; `genzoo.load(...).generate`."""

from __future__ import annotations

import inspect
from typing import Protocol, runtime_checkable

import jax
import numpy as np

from genzoo import kinds, models, sampling
from genzoo.errors import UserError
from genzoo.kinds import Kind, Option, register


@runtime_checkable
class LanguageModelFamily(Protocol):
    """What a language-model family offers beyond training.

    `RAGGED_PROMPTS`: `sample` accepts left-padded prompt batches (`pad_B`); families
    without it are called once per prompt. Sampling keywords a family cannot honour
    (beams for an HMM) raise `UserError`.
    """

    RAGGED_PROMPTS: bool

    def sample(
        self, params, rng, cfg, *, prompt_BxP, max_new_tokens: int, temperature=1.0, top_k=0,
        top_p=1.0, num_beams=1, repetition_penalty=1.0,
    ):  # fmt: skip
        """New tokens [B, max_new_tokens] int32 after each prompt row. `rng` is one key for
        a family called per prompt, one key per row for a `RAGGED_PROMPTS` batch (row b
        samples with `rng[b]` alone: `sampling.row_keys`). Optional keywords, passed only to a
        sampler that names them: `length_penalty`, `eos_id` (rows stop there; else the text
        is cut afterwards), and `pad_B` with `RAGGED_PROMPTS`."""

    def token_log_probs(self, params, tokens_BxT, cfg):
        """log p(x_t | x_<t) for t = 1..T-1, [B, T-1] nats."""

    def context_length(self, cfg) -> int:
        """The most tokens (prompt + new) one row may hold."""


class LanguageModel:
    """A trained (or imported) language-model run: its parameters, tokenizer and family."""

    def __init__(self, run):
        self.run, self.family = run, models.get(run.cfg.model.family)
        self.params, self.tokenizer = run.params, run.tokenizers["tokens"]
        if getattr(run, "sampling_params", None) is not None:  # int8 weights stay int8
            self.params = run.sampling_params
        self.context = self.family.context_length(run.cfg.model)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def generate(
        self,
        prompts: str | list[str],
        *,
        max_new_tokens: int = 100,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        num_beams: int = 1,
        length_penalty: float = 1.0,
        repetition_penalty: float = 1.0,
        eos: str | None = None,
        stop: str | tuple[str, ...] | list[str] = (),
        batch_size: int = 64,
    ) -> list[str]:
        """One continuation per prompt (the prompt not included).

        Prompts of different lengths are batched with left padding where the family supports
        it (the GPT), and one by one otherwise; both give the same text. `eos` names a token
        that ends a row; `stop` strings cut the returned text at their first occurrence.
        Sampling may run past the model's context (the window slides: `_slide`); beam search
        may not. Prompts go `batch_size` at a time (a KV cache per row: 1,000 GPT-2 prompts
        at once would hold 75 GB).
        """
        prompts = kinds.texts(prompts, "prompts")
        stop = kinds.texts(stop or (), "stop")  # one string is one stop, not its characters
        kinds.check_sampling(dict(max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_k=top_k, top_p=top_p, num_beams=num_beams,
                                  length_penalty=length_penalty, seed=seed, batch_size=batch_size,
                                  repetition_penalty=repetition_penalty))  # fmt: skip
        if not prompts:
            return []
        encoded = [self.encode(p if p else "\n") for p in prompts]
        if num_beams > 1 and max(map(len, encoded)) + max_new_tokens > self.context:
            # Beams compare whole continuations; a sliding window would rescore them on
            # different contexts, so beam search stays within one window.
            raise UserError(f"beam search: prompt + max_new_tokens exceeds the model's "
                            f"context of {self.context}")  # fmt: skip
        eos_id = -1
        if eos is not None:
            eos_ids = self.encode(eos)
            if len(eos_ids) != 1:
                raise UserError(f"eos {eos!r} is not a single token")
            eos_id = eos_ids[0]
        options = dict(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            num_beams=num_beams,
            repetition_penalty=repetition_penalty,
        )
        if num_beams > 1 or eos_id >= 0:
            # Only to a family that takes them (the GPT); the rest cut at the EOS afterwards
            # (`_finish`) and refuse beams themselves (the HMM said TypeError for both).
            optional = dict(length_penalty=length_penalty, eos_id=eos_id)
            options.update({k: v for k, v in optional.items() if self._takes(k)})
        # Prompt j draws with the seed's key folded with j, whatever batch it falls in.
        keys_N = sampling.row_keys(jax.random.PRNGKey(seed), len(encoded))
        batches = [slice(i, i + batch_size) for i in range(0, len(encoded), batch_size)]
        rows = [
            row
            for b in batches
            for row in self._slide(encoded[b], max_new_tokens, keys_N[b], options, eos_id)
        ]
        return [self._finish(row, eos_id, stop) for row in rows]

    def _slide(self, encoded, max_new_tokens, keys_B, options, eos_id) -> list[np.ndarray]:
        """New tokens per row. Within the context one call; past it the window slides as in
        nanoGPT, which crops to the last `context` tokens for every new token. Here a window
        keeps the last 3/4 of the context and adds 1/4 new tokens through the KV cache, so
        each token sees at least 3/4 of a context and only two shapes compile (the first
        window, then every later one)."""
        if max(map(len, encoded)) + max_new_tokens <= self.context:
            return self._continue(encoded, max_new_tokens, keys_B, options)
        keep = self.context - _stride(self.context)
        rows = [list(ids[-keep:]) for ids in encoded]  # nanoGPT crops long prompts too
        new = [[] for _ in rows]
        window = 0
        while len(new[0]) < max_new_tokens:
            keys = keys_B if window == 0 else sampling.fold_rows(keys_B, window)
            grown = self._continue(rows, self.context - max(map(len, rows)), keys, options)
            for row, more, tokens in zip(rows, new, grown, strict=True):
                more.extend(int(t) for t in tokens)
                row[:] = (row + list(tokens))[-keep:]
            window += 1
            if eos_id >= 0 and all(eos_id in more for more in new):
                break  # every row has ended; `_finish` cuts there
        return [np.asarray(more[:max_new_tokens], np.int32) for more in new]

    def _continue(self, encoded, max_new_tokens, keys_B, options) -> list[np.ndarray]:
        """One call of the family's sampler: `max_new_tokens` new tokens after each row, row b
        drawn with `keys_B[b]`."""
        options = dict(options, max_new_tokens=max_new_tokens)
        if getattr(self.family, "RAGGED_PROMPTS", False):
            longest = max(len(ids) for ids in encoded)
            pad_B = np.array([longest - len(ids) for ids in encoded], np.int32)
            prompt_BxP = np.zeros((len(encoded), longest), np.int32)
            for row, ids in enumerate(encoded):
                prompt_BxP[row, pad_B[row] :] = ids
            new_BxN = self.family.sample(
                self.params,
                keys_B,
                self.run.cfg.model,
                prompt_BxP=prompt_BxP,
                pad_B=pad_B,
                **options,
            )
            return list(np.asarray(new_BxN))
        # One call per prompt, with its row's key.
        return [
            np.asarray(self.family.sample(self.params, keys_B[row],
                                          self.run.cfg.model, prompt_BxP=np.asarray([ids]),
                                          **options))[0]
            for row, ids in enumerate(encoded)
        ]  # fmt: skip

    def _takes(self, keyword: str) -> bool:
        params = inspect.signature(self.family.sample).parameters.values()
        return any(p.name == keyword or p.kind is p.VAR_KEYWORD for p in params)

    def _finish(self, row, eos_id: int, stop) -> str:
        ids = list(row)
        if eos_id >= 0 and eos_id in ids:
            ids = ids[: ids.index(eos_id)]
        text = self.decode(ids)
        cuts = [text.index(s) for s in stop if s and s in text]
        return text[: min(cuts)] if cuts else text

    def score(self, texts: str | list[str], batch_size: int = 64) -> list[float]:
        """Total log-likelihood of each text in nats: sum over tokens i >= 1 of
        log p(token_i | tokens before i) (the first token is conditioned on, not scored).
        A text longer than the context is read in the windows generation slides through
        (`_windows`), so each token is scored once, seeing at least 3/4 of a context."""
        texts = kinds.texts(texts)
        kinds.check_sampling(dict(batch_size=batch_size))
        if not texts:
            return []
        windows, owners, firsts = [], [], []
        for owner, ids in enumerate(self.encode(t) for t in texts):
            for start, first in _windows(len(ids), self.context):
                windows.append(ids[start : start + self.context])
                owners.append(owner)
                firsts.append(first - start)
        tokens_WxT = np.zeros((len(windows), max(2, *map(len, windows))), np.int32)
        scored_WxT = np.zeros(tokens_WxT.shape, bool)  # the tokens this window scores
        for row, (ids, first) in enumerate(zip(windows, firsts, strict=True)):
            tokens_WxT[row, : len(ids)] = ids
            scored_WxT[row, first : len(ids)] = True
        log_p = kinds.in_batches(
            lambda t: self.family.token_log_probs(self.params, t, self.run.cfg.model),
            tokens_WxT, batch_size,
        )  # fmt: skip
        totals = np.zeros(len(texts))
        np.add.at(totals, owners, np.where(scored_WxT[:, 1:], log_p, 0.0).sum(axis=1))
        return [float(v) for v in totals]


def _stride(context: int) -> int:
    """New tokens per window past the context: a quarter of it (each token then sees at
    least 3/4 of a context; nanoGPT re-reads the context for every token)."""
    return max(1, context // 4)


def _windows(length: int, context: int) -> list[tuple[int, int]]:
    """(start, first scored position) of each window over a text of `length` tokens: the
    first window scores positions 1..context-1, and each later one ends a quarter context
    past the last (or at the text's end) and scores only what it adds, as generation slides."""
    windows, end = [(0, 1)], min(length, context)
    while end < length:
        start = min(end + _stride(context), length) - context
        windows.append((start, end))
        end = start + context
    return windows


def _sample(lm: LanguageModel, args) -> None:
    prompt = args.prompt if args.prompt else "\n"
    if (args.num or 1) > 1 and (args.temperature == 0 or args.beams > 1):
        how = "beam search" if args.beams > 1 else "greedy decoding (--temperature 0)"
        raise UserError(f"{how} is deterministic: --num {args.num} would print one text "
                        f"{args.num} times")  # fmt: skip
    if args.max_new_tokens is None:  # beams stay within the context; sampling slides past it
        fits = lm.context - len(lm.encode(prompt))
        args.max_new_tokens = max(1, min(200, fits)) if args.beams > 1 else 200
    texts = lm.generate(
        [prompt] * (args.num or 1),
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        num_beams=args.beams,
        length_penalty=args.length_penalty,
        repetition_penalty=args.repetition_penalty,
        eos=args.eos,
        stop=args.stop or (),
    )
    for i, text in enumerate(texts):
        if i:
            print("-" * 40)
        print(prompt + text)


SAMPLING_OPTIONS = (
    Option("--temperature", 0.8, dict(type=float, help="0: greedy")),
    Option("--top-k", 0, dict(type=int, help="0: off (masked LM: fillers shown)")),
    Option("--top-p", 1.0, dict(type=float, help="nucleus mass, in (0, 1]")),
    Option("--repetition-penalty", 1.0, dict(type=float, help="CTRL-style; 1: off")),
)
BEAM_OPTIONS = (
    Option("--beams", 1, dict(type=int, help="beam search width (1: sample)")),
    Option("--length-penalty", 1.0, dict(type=float, help="beams: score / len**this")),
    Option("--max-new-tokens", None, dict(type=int, help="default 200 (beams: what fits)")),
)
PROMPT = Option("--prompt", "", dict(help="text to continue / translate / fill"))

register(
    Kind(
        "language_model",
        LanguageModelFamily,
        LanguageModel,
        options=(
            PROMPT,
            *SAMPLING_OPTIONS,
            *BEAM_OPTIONS,
            Option("--eos", None, dict(help="a token that ends a continuation")),
            Option("--stop", None, dict(action="append", help="cut the text here (repeatable)")),
        ),
        sample=_sample,
    )
)
