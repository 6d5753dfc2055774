"""Count-based n-gram baselines for bits per character, the scale for the LM families."""

from __future__ import annotations

import numpy as np


def ngram_bits_per_char(train, valid, order: int, vocab_size: int, alpha: float = 1.0) -> float:
    """Bits per token of `valid` under an add-`alpha` n-gram (order 1 or 2) fit on `train`.

    Every token of `valid` but the first is scored, as `genzoo eval` scores a window.
    """
    train, valid = np.asarray(train, np.int64), np.asarray(valid, np.int64)
    if order == 1:
        counts = np.bincount(train, minlength=vocab_size) + alpha
        log_p = np.log2(counts / counts.sum())
        return float(-log_p[valid[1:]].mean())
    if order == 2:
        counts = np.zeros((vocab_size, vocab_size)) + alpha
        np.add.at(counts, (train[:-1], train[1:]), 1.0)
        log_p = np.log2(counts / counts.sum(axis=1, keepdims=True))
        return float(-log_p[valid[:-1], valid[1:]].mean())
    raise ValueError(f"order must be 1 or 2, got {order}")
