"""Layers shared by every model family: attention, MLP, norms, embeddings."""

from genzoo.layers.attention import CausalSelfAttention
from genzoo.layers.basic import MLP, Embed, LayerNorm, partitioned
from genzoo.layers.conv import ConvDecoder, ConvEncoder

__all__ = [
    "MLP",
    "CausalSelfAttention",
    "ConvDecoder",
    "ConvEncoder",
    "Embed",
    "LayerNorm",
    "partitioned",
]
