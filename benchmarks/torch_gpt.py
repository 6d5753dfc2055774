"""The PyTorch reference the speed benchmarks race: nanoGPT's architecture at any shape.

Pre-LayerNorm blocks, fused q|k|v, GELU MLP of 4x width, a head tied to the token
embedding, `scaled_dot_product_attention` (flash/memory-efficient kernels on GPU).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class Shape:
    num_layers: int
    width: int
    heads: int
    context: int
    vocab: int
    dropout: float = 0.0  # nanoGPT's places: embeddings, attention weights, both residuals

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token, nanoGPT's formula: 6N + 12 * layers * width * seq_len."""
        n = 12 * self.num_layers * self.width**2 + self.vocab * self.width
        return 6 * n + 12 * self.num_layers * self.width * seq_len


class Block(nn.Module):
    def __init__(self, s: Shape):
        super().__init__()
        self.s = s
        self.ln_1, self.ln_2 = nn.LayerNorm(s.width), nn.LayerNorm(s.width)
        self.qkv, self.proj = nn.Linear(s.width, 3 * s.width), nn.Linear(s.width, s.width)
        self.fc, self.out = nn.Linear(s.width, 4 * s.width), nn.Linear(4 * s.width, s.width)
        self.drop = nn.Dropout(s.dropout) if s.dropout else nn.Identity()

    def forward(self, x, cache=None):
        B, T, D = x.shape
        H = self.s.heads
        q, k, v = self.qkv(self.ln_1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))
        if cache is not None:  # decode: append this step's keys/values
            if cache:
                k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
            cache[:] = [k, v]
        p = self.s.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=cache is None or T > 1)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, T, D)))
        return x + self.drop(self.out(F.gelu(self.fc(self.ln_2(x)))))


class GPT(nn.Module):
    def __init__(self, s: Shape):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(s.vocab, s.width), nn.Embedding(s.context, s.width)
        self.blocks = nn.ModuleList(Block(s) for _ in range(s.num_layers))
        self.ln_f = nn.LayerNorm(s.width)
        self.drop = nn.Dropout(s.dropout) if s.dropout else nn.Identity()

    def forward(self, idx, caches=None, start=0):
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.ln_f(x) @ self.wte.weight.T  # tied head


def train_step_fn(model, opt, x, y, vocab: int, autocast_dtype=None):
    """One AdamW step with gradient clipping, optionally under autocast (bf16 compute)."""
    device_type = x.device.type

    def step():
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = F.cross_entropy(model(x).view(-1, vocab).float(), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    return step
