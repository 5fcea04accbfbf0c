"""VVT: Vicinity Vision Transformer (Sun et al., TPAMI 2023).

Four stages, each an overlapping patch embedding (conv7x7/4, then conv3x3/2, + LayerNorm), pre-norm blocks
of vicinity attention (linear in the number of tokens, see :mod:`lemevit.layers.vicinity_attention`) and a
Mix-FFN (Linear -> dw3x3 -> GELU -> Linear), and a stage LayerNorm whose output feeds the next stage.
The classifier averages the last stage's tokens and applies a Linear head.

Maps are kept channels-last, ``(B, H, W, C)``; dense features (``features_only`` /
``forward_intermediates``) are the NCHW views of the stage outputs (after the stage norms), strides
4, 8, 16, 32. Any input size works: the position angles follow each map's actual H x W. Loads checkpoints
of the published implementation through :func:`checkpoint_filter_fn`.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from lemevit.layers.format import nchw
from lemevit.layers.vicinity_attention import VicinityAttention
from lemevit.models._checks import check_image_batch
from lemevit.models._convert import prepare_state_dict
from lemevit.models.lvt import DwConvMlp, OverlapPatchEmbed
from lemevit.models.pretrained import check_timm_pretrained, with_tagged_cfgs

__all__ = ["VVT", "checkpoint_filter_fn"]


class VVTBlock(nn.Module):
    """Pre-norm block (LayerNorm eps 1e-6): vicinity attention, then Mix-FFN, on (B, H, W, C) maps."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, feature_reduction: int = 2,
                 qkv_bias: bool = True, proj_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = VicinityAttention(dim, num_heads, feature_reduction=feature_reduction, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = DwConvMlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VVTStage(nn.Module):
    """Patch embedding (NCHW in), blocks and the stage LayerNorm; returns a (B, H, W, C) map."""

    def __init__(self, in_dim: int, dim: int, depth: int, first: bool, drop_path: Sequence[float], **block_kwargs):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_dim, dim, 7 if first else 3, 4 if first else 2)
        self.blocks = nn.ModuleList(VVTBlock(dim, drop_path=drop_path[i], **block_kwargs) for i in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)


class VVT(nn.Module):
    """VVT backbone and classifier.

    ``forward_features`` returns the last stage's normalised tokens ``(B, N, C)``; ``forward_head`` averages
    them and classifies.
    """

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 2, 2),
        dims: Sequence[int] = (96, 160, 320, 512),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        feature_reduction: int = 2,
        qkv_bias: bool = True,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if len({len(depths), len(dims), len(num_heads), len(mlp_ratios)}) != 1:
            raise ValueError("depths, dims, num_heads and mlp_ratios must have the same length")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False

        # Stochastic depth grows linearly over all blocks (Python floats: the model can be built on "meta").
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        self.stages = nn.ModuleList()
        self.feature_info = []
        for i, dim in enumerate(dims):
            self.stages.append(VVTStage(
                in_dim=in_chans if i == 0 else dims[i - 1], dim=dim, depth=depths[i], first=i == 0,
                drop_path=rates[sum(depths[:i]):sum(depths[:i + 1])], num_heads=num_heads[i],
                mlp_ratio=mlp_ratios[i], feature_reduction=feature_reduction, qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}"))

        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stages\.0\.patch_embed",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.patch_embed", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\.norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, **kwargs) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            if global_pool not in ("avg", ""):
                raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_chans, "VVT")
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else nchw(x))
        return x.flatten(1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """NCHW maps of the stages after their stage norms (``feature_info``: strides 4, 8, 16, 32).

        Args:
            indices: take the last n stages if int, all if None, these indices if a sequence.
            norm: accepted for timm's interface; every map already went through its stage norm.
            stop_early: stop after the last stage needed.
            intermediates_only: return only the list of maps.

        Returns:
            the list of maps, or ``(forward_features output, maps)``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        check_image_batch(x, self.in_chans, "VVT")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages
        if stop_early and not torch.jit.is_scripting():
            stages = self.stages[: max_index + 1]

        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x if i == 0 else nchw(x))
            if i in take_indices:
                intermediates.append(nchw(x))
        if intermediates_only:
            return intermediates
        return x.flatten(1, 2), intermediates

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last one in ``indices`` and, if asked, the head. The stage norms stay:
        they are part of the stages (each feeds the next stage)."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        keep = max_index + 1
        prune_end = keep < len(self.stages)
        self.stages = self.stages[:keep]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices


# Published checkpoint layout -> ours. The published model names its stages `patch_embed<n>`, `block<n>` and
# `norm<n>` (n = 1..4), the attention projections `q_proj`/`k_proj`/`v_proj`/`out_proj`, the
# feature-preserving gate `se_fc` (an nn.Sequential) and wraps the Mix-FFN's dw conv in a `dwconv` module.
_OFFICIAL_KEY_RULES = [(re.compile(p), r) for p, r in [
    (r"\.attn\.([qkv])_proj\.", r".attn.\1."),
    (r"\.attn\.out_proj\.", ".attn.proj."),
    (r"\.attn\.se_fc\.0\.", ".attn.gate.fc1."),
    (r"\.attn\.se_fc\.2\.", ".attn.gate.fc2."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
]]
_OFFICIAL_STAGE = re.compile(r"^(patch_embed|block|norm)(\d)\.")


def convert_official_key(key: str) -> str:
    m = _OFFICIAL_STAGE.match(key)
    if m is None:
        return key
    part = {"patch_embed": "patch_embed", "block": "blocks", "norm": "norm"}[m.group(1)]
    key = f"stages.{int(m.group(2)) - 1}.{part}.{key[m.end():]}"
    for pattern, repl in _OFFICIAL_KEY_RULES:
        key = pattern.sub(repl, key)
    return key


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module | None = None
                         ) -> dict[str, torch.Tensor]:
    """Map a checkpoint of the published VVT code to this implementation (ours pass unchanged).

    Also accepts ``module.`` / ``backbone.`` prefixes and ``state_dict`` / ``model`` containers; float16
    tensors become float32.
    """
    return {convert_official_key(key): value for key, value in prepare_state_dict(state_dict).items()}


def _create_vvt(variant: str, pretrained: bool = False, **kwargs) -> VVT:
    kwargs = check_timm_pretrained(variant, pretrained, kwargs)
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        VVT, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "stages.0.patch_embed.proj",
        "classifier": "head",
        "paper_ids": "arXiv:2206.10552",
        "paper_name": "Vicinity Vision Transformer",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(with_tagged_cfgs({
    "vvt_tiny": _cfg(),
    "vvt_small": _cfg(),
    "vvt_medium": _cfg(),
    "vvt_large": _cfg(),
}))


@register_model
def vvt_tiny(pretrained: bool = False, **kwargs) -> VVT:
    args = dict(depths=(2, 2, 2, 2), mlp_ratios=(8, 8, 4, 4))
    return _create_vvt("vvt_tiny", pretrained, **dict(args, **kwargs))


@register_model
def vvt_small(pretrained: bool = False, **kwargs) -> VVT:
    args = dict(depths=(3, 3, 9, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_vvt("vvt_small", pretrained, **dict(args, **kwargs))


@register_model
def vvt_medium(pretrained: bool = False, **kwargs) -> VVT:
    args = dict(depths=(3, 3, 27, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_vvt("vvt_medium", pretrained, **dict(args, **kwargs))


@register_model
def vvt_large(pretrained: bool = False, **kwargs) -> VVT:
    args = dict(depths=(4, 4, 36, 4), mlp_ratios=(4, 4, 4, 4))
    return _create_vvt("vvt_large", pretrained, **dict(args, **kwargs))
