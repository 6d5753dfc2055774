"""Layers shared by every model family: attention, MLP, norms, embeddings."""

from genzoo.layers.attention import CausalSelfAttention
from genzoo.layers.basic import MLP, Embed, LayerNorm, partitioned

__all__ = ["MLP", "CausalSelfAttention", "Embed", "LayerNorm", "partitioned"]
