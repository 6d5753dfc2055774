"""Layers shared by every model family: attention, Transformer blocks, MLP, norms, embeddings."""

from genzoo.layers.attention import Attention, cross_kv, empty_kv
from genzoo.layers.basic import MLP, Embed, LayerNorm, gelu, partitioned, sinusoidal_positions
from genzoo.layers.conv import ConvDecoder, ConvEncoder
from genzoo.layers.dropout import Dropout
from genzoo.layers.transformer import REMAT_POLICIES, TransformerBlock, call_blocks

__all__ = [
    "REMAT_POLICIES",
    "MLP",
    "Attention",
    "ConvDecoder",
    "ConvEncoder",
    "Dropout",
    "Embed",
    "LayerNorm",
    "TransformerBlock",
    "call_blocks",
    "gelu",
    "cross_kv",
    "empty_kv",
    "partitioned",
    "sinusoidal_positions",
]
