"""Building blocks shared by the models."""
from lemevit.layers.lvt_attention import (
    AtrousDepthwiseConv,
    ClassAttention,
    ConvolutionalSelfAttention,
    RecursiveAtrousSelfAttention,
)
from lemevit.layers.meta_attention import DualCrossAttention, MetaCrossAttention, TokenSelfAttention, attend
from lemevit.layers.mlp import Mlp
from lemevit.layers.norm import SingleValueSafeBatchNorm2d, allow_single_value_batch_norm
from lemevit.layers.vicinity_attention import FeaturePreservingGate, VicinityAttention, abs_clamp

__all__ = [
    "AtrousDepthwiseConv", "ClassAttention", "ConvolutionalSelfAttention", "DualCrossAttention",
    "FeaturePreservingGate", "MetaCrossAttention", "Mlp", "RecursiveAtrousSelfAttention", "SingleValueSafeBatchNorm2d",
    "TokenSelfAttention", "VicinityAttention", "abs_clamp", "allow_single_value_batch_norm", "attend",
]
