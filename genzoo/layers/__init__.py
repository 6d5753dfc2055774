"""Layers shared by every model family: attention, Transformer blocks, MLP, norms, embeddings."""

from genzoo.layers.attention import Attention, cross_kv
from genzoo.layers.basic import MLP, Embed, LayerNorm, partitioned, sinusoidal_positions
from genzoo.layers.conv import ConvDecoder, ConvEncoder
from genzoo.layers.transformer import TransformerBlock

__all__ = [
    "MLP",
    "Attention",
    "ConvDecoder",
    "ConvEncoder",
    "Embed",
    "LayerNorm",
    "TransformerBlock",
    "cross_kv",
    "partitioned",
    "sinusoidal_positions",
]
