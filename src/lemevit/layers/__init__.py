"""Building blocks shared by the models."""
from lemevit.layers.meta_attention import DualCrossAttention, MetaCrossAttention, TokenSelfAttention, attend

__all__ = ["DualCrossAttention", "MetaCrossAttention", "TokenSelfAttention", "attend"]
