"""LeMeViT: efficient vision transformer with learnable meta tokens (Jiang et al., IJCAI 2024).

Five stages with attention types C, D, D, S, S:

* C: the meta tokens (queries) read the image tokens (keys/values); image tokens pass unchanged.
* D: Dual Cross-Attention, image tokens and meta tokens read each other, O(N*M).
* S: self-attention, applied with the same weights to image tokens and to meta tokens separately.

Image tokens are kept channels-last, ``(B, H, W, C)``, from the stem to the head: linear layers then run
on them directly and every convolution (stem, position encoding, down-sampling) runs on a channels-last
view, so no layout copies are made between blocks. Dense features are returned as NCHW tensors in the
channels-last memory format.

Loads checkpoints of the published implementation through :func:`checkpoint_filter_fn`.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from lemevit.layers.conv_bn import conv_bn
from lemevit.layers.format import nchw, nhwc
from lemevit.layers.meta_attention import DualCrossAttention, MetaCrossAttention, TokenSelfAttention
from lemevit.layers.mlp import Mlp
from lemevit.models._checks import check_image_batch
from lemevit.models._convert import prepare_state_dict
from lemevit.models.pretrained import check_timm_pretrained, with_tagged_cfgs

__all__ = ["LeMeViT", "checkpoint_filter_fn"]

ATTENTION_TYPES = ("C", "D", "S")


class Stem(nn.Module):
    """conv3x3/2 -> BN -> GELU -> conv3x3/2 -> BN: stride 4. NCHW image in, (B, H, W, C) out."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1)
        self.norm1 = nn.BatchNorm2d(dim // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1)
        self.norm2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.act(conv_bn(self.conv1, self.norm1, x))
        return nhwc(conv_bn(self.conv2, self.norm2, x))


class Downsample(nn.Module):
    """conv3x3/2 + BN between stages, on (B, H, W, C) maps."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, dim, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nhwc(conv_bn(self.conv, self.norm, nchw(x)))


class MetaTokenProjection(nn.Module):
    """Carries the meta tokens into a stage: Linear(d, 4d) -> LN -> GELU -> Linear(4d, d') -> LN."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, in_dim * 4)
        self.norm1 = nn.LayerNorm(in_dim * 4)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(in_dim * 4, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.fc2(self.act(self.norm1(self.fc1(c)))))


class LeMeViTBlock(nn.Module):
    """Conditional position encoding (dw3x3 conv added to the map), then a pre-norm attention and MLP
    for the image tokens ``x`` (B, H, W, C) and the meta tokens ``c`` (B, M, C), sharing norms and MLP."""

    def __init__(self, dim: int, attn_type: str, head_dim: int = 32, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, proj_drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        if attn_type not in ATTENTION_TYPES:
            raise ValueError(f"attn_type must be one of {ATTENTION_TYPES}, got {attn_type!r}")
        self.attn_type = attn_type
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        # x + dwconv(x) is one depthwise conv whose centre tap is raised by one: a pass over the map saved.
        self.register_buffer("identity_tap", F.pad(torch.ones(1, 1, 1, 1), (1, 1, 1, 1)), persistent=False)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_cls = {"C": MetaCrossAttention, "D": DualCrossAttention, "S": TokenSelfAttention}[attn_type]
        self.attn = attn_cls(dim, dim // head_dim, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, H, W, C = x.shape
        pe = self.pos_embed
        t = F.conv2d(nchw(x), pe.weight + self.identity_tap, pe.bias, padding=1, groups=C)
        t = nhwc(t).reshape(B, H * W, C)
        if self.attn_type == "C":
            # Only the meta tokens are updated; the image map (before position encoding) passes through.
            c = c + self.drop_path(self.attn(self.norm1(t), self.norm1(c)))
            c = self.mlp.residual(c, self.norm2, self.drop_path)
            return x, c
        if self.attn_type == "D":
            dt, dc = self.attn(self.norm1(t), self.norm1(c))
        else:
            dt, dc = self.attn(self.norm1(t)), self.attn(self.norm1(c))
        t = self.mlp.residual(t + self.drop_path(dt), self.norm2, self.drop_path)
        c = self.mlp.residual(c + self.drop_path(dc), self.norm2, self.drop_path)
        return t.reshape(B, H, W, C), c


class LeMeViTStage(nn.Module):
    def __init__(self, in_dim: int, dim: int, meta_in_dim: int, depth: int, attn_type: str,
                 downsample: bool, drop_path: Sequence[float], **block_kwargs):
        super().__init__()
        self.downsample = Downsample(in_dim, dim) if downsample else nn.Identity()
        self.meta_proj = MetaTokenProjection(meta_in_dim, dim)
        self.blocks = nn.ModuleList(
            LeMeViTBlock(dim, attn_type, drop_path=drop_path[i], **block_kwargs) for i in range(depth))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.downsample(x)
        c = self.meta_proj(c)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x, c = checkpoint(block, x, c, use_reentrant=False)
            else:
                x, c = block(x, c)
        return x, c


class LeMeViT(nn.Module):
    """LeMeViT backbone and classifier.

    ``forward_features`` returns the normalised tokens ``(B, N + M, C)``: the N image tokens of the
    last stage followed by the M meta tokens; ``forward_head`` averages each group, sums them and
    classifies. ``forward_intermediates`` and ``features_only=True`` give the image maps of stages 1..4
    (strides 4, 8, 16, 32), as the published dense-prediction backbone does.
    """

    def __init__(
        self,
        depths: Sequence[int] = (1, 2, 2, 8, 2),
        dims: Sequence[int] = (64, 64, 128, 192, 320),
        attn_types: Sequence[str] = ("C", "D", "D", "S", "S"),
        head_dim: int = 32,
        num_meta_tokens: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if not len(depths) == len(dims) == len(attn_types):
            raise ValueError("depths, dims and attn_types must have the same length")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_meta_tokens = num_meta_tokens
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, dims[0])
        self.meta_tokens = nn.Parameter(torch.randn(num_meta_tokens, dims[0]))
        # Stochastic depth grows linearly over all blocks (Python floats: the model can be built on "meta").
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        dpr = [rates[sum(depths[:i]):sum(depths[:i + 1])] for i in range(len(depths))]
        self.stages = nn.ModuleList()
        self.feature_info = []
        stride = 4
        for i, (depth, dim, attn_type) in enumerate(zip(depths, dims, attn_types, strict=True)):
            downsample = i > 0 and attn_types[i - 1] != "C"
            stride *= 2 if downsample else 1
            self.stages.append(LeMeViTStage(
                in_dim=dims[max(i - 1, 0)], dim=dim, meta_in_dim=dims[max(i - 1, 0)], depth=depth,
                attn_type=attn_type, downsample=downsample, drop_path=dpr[i], head_dim=head_dim,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=proj_drop_rate, attn_drop=attn_drop_rate))
            if attn_type != "C":
                self.feature_info.append(dict(num_chs=dim, reduction=stride, module=f"stages.{i}"))
        # Dense features are the outputs of the stages that update the image map.
        self._feature_stages = [int(f["module"].split(".")[1]) for f in self.feature_info]

        self.norm = nn.BatchNorm2d(dims[-1])
        self.meta_norm = nn.LayerNorm(dims[-1])
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
    def no_weight_decay(self) -> set[str]:
        return {"meta_tokens"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem|^meta_tokens",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.(downsample|meta_proj)", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm|^meta_norm", (99999,)),
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

    def _meta_tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.meta_tokens.unsqueeze(0).expand(x.shape[0], -1, -1)

    def _normed_tokens(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = nhwc(self.norm(nchw(x))).flatten(1, 2)
        return torch.cat([x, self.meta_norm(c)], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_chans, "LeMeViT")
        x, c = self.stem(x), self._meta_tokens(x)
        for stage in self.stages:
            x, c = stage(x, c)
        return self._normed_tokens(x, c)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            M = self.num_meta_tokens
            x = x[:, :-M].mean(dim=1) + x[:, -M:].mean(dim=1)
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
        """Image maps of the feature stages (``feature_info``: stages 1..4), NCHW.

        Args:
            indices: take the last n feature stages if int, all if None, these indices if a sequence.
            norm: apply the final norm to the last stage's map when it is taken.
            stop_early: stop after the last stage needed.
            intermediates_only: return only the list of maps.

        Returns:
            the list of maps, or ``(forward_features output, maps)``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        check_image_batch(x, self.in_chans, "LeMeViT")
        take_indices, max_index = feature_take_indices(len(self._feature_stages), indices)
        take_stages = {self._feature_stages[i] for i in take_indices}
        last_stage = len(self.stages) - 1
        stages = self.stages
        if stop_early and not torch.jit.is_scripting():
            stages = self.stages[: self._feature_stages[max_index] + 1]

        intermediates = []
        x, c = self.stem(x), self._meta_tokens(x)
        for i, stage in enumerate(stages):
            x, c = stage(x, c)
            if i in take_stages:
                intermediates.append(self.norm(nchw(x)) if norm and i == last_stage else nchw(x))
        if intermediates_only:
            return intermediates
        return self._normed_tokens(x, c), intermediates

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last feature stage in ``indices`` and, if asked, the head."""
        take_indices, max_index = feature_take_indices(len(self._feature_stages), indices)
        keep = self._feature_stages[max_index] + 1
        prune_end = keep < len(self.stages)
        self.stages = self.stages[:keep]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
            self.meta_norm = nn.Identity()
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices


# Published checkpoint layout -> ours. The published model keeps the stem and the stage down-sampling in
# `downsample_layers`, the meta-token projections in `meta_token_downsample`, and nn.Sequential MLPs.
_OFFICIAL_KEY_RULES = [
    (r"^downsample_layers\.0\.0\.", "stem.conv1."),
    (r"^downsample_layers\.0\.1\.", "stem.norm1."),
    (r"^downsample_layers\.0\.3\.", "stem.conv2."),
    (r"^downsample_layers\.0\.4\.", "stem.norm2."),
    (r"^downsample_layers\.(\d+)\.0\.", r"stages.\1.downsample.conv."),
    (r"^downsample_layers\.(\d+)\.1\.", r"stages.\1.downsample.norm."),
    (r"^meta_token_downsample\.(\d+)\.0\.", r"stages.\1.meta_proj.fc1."),
    (r"^meta_token_downsample\.(\d+)\.1\.", r"stages.\1.meta_proj.norm1."),
    (r"^meta_token_downsample\.(\d+)\.3\.", r"stages.\1.meta_proj.fc2."),
    (r"^meta_token_downsample\.(\d+)\.4\.", r"stages.\1.meta_proj.norm2."),
    (r"^stages\.(\d+)\.(\d+)\.mlp\.0\.", r"stages.\1.blocks.\2.mlp.fc1."),
    (r"^stages\.(\d+)\.(\d+)\.mlp\.3\.", r"stages.\1.blocks.\2.mlp.fc2."),
    (r"^stages\.(\d+)\.(\d+)\.attn\.qkv1\.", r"stages.\1.blocks.\2.attn.qkv_img."),
    (r"^stages\.(\d+)\.(\d+)\.attn\.qkv2\.", r"stages.\1.blocks.\2.attn.qkv_meta."),
    (r"^stages\.(\d+)\.(\d+)\.attn\.proj_x\.", r"stages.\1.blocks.\2.attn.proj_img."),
    (r"^stages\.(\d+)\.(\d+)\.attn\.proj_c\.", r"stages.\1.blocks.\2.attn.proj_meta."),
    (r"^stages\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^norm_c\.", "meta_norm."),
]
_OFFICIAL_KEY_RULES = [(re.compile(p), r) for p, r in _OFFICIAL_KEY_RULES]


def convert_official_key(key: str) -> str:
    for pattern, repl in _OFFICIAL_KEY_RULES:
        new, n = pattern.subn(repl, key)
        if n:
            return new
    return key


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module | None = None
                         ) -> dict[str, torch.Tensor]:
    """Map a checkpoint of the published LeMeViT code to this implementation (ours pass unchanged).

    Accepts the published classification layout and its dense-prediction copies (``backbone.`` or
    ``module.`` prefixes, wrapped in ``state_dict`` / ``model``); float16 tensors become float32.
    """
    return {convert_official_key(key): value for key, value in prepare_state_dict(state_dict).items()}


def _create_lemevit(variant: str, pretrained: bool = False, **kwargs) -> LeMeViT:
    kwargs = check_timm_pretrained(variant, pretrained, kwargs)
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model_with_cfg(
        LeMeViT, variant, pretrained,
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
        "first_conv": "stem.conv1",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2405.09789",
        "paper_name": "LeMeViT: Efficient Vision Transformer with Learnable Meta Tokens for Remote Sensing "
                      "Image Interpretation",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(with_tagged_cfgs({
    "lemevit_tiny": _cfg(),
    "lemevit_small": _cfg(),
    "lemevit_base": _cfg(),
}))


@register_model
def lemevit_tiny(pretrained: bool = False, **kwargs) -> LeMeViT:
    args = dict(depths=(1, 2, 2, 8, 2), dims=(64, 64, 128, 192, 320))
    return _create_lemevit("lemevit_tiny", pretrained, **dict(args, **kwargs))


@register_model
def lemevit_small(pretrained: bool = False, **kwargs) -> LeMeViT:
    args = dict(depths=(1, 2, 2, 6, 2), dims=(96, 96, 192, 320, 384))
    return _create_lemevit("lemevit_small", pretrained, **dict(args, **kwargs))


@register_model
def lemevit_base(pretrained: bool = False, **kwargs) -> LeMeViT:
    args = dict(depths=(2, 4, 4, 18, 4), dims=(96, 96, 192, 384, 512))
    return _create_lemevit("lemevit_base", pretrained, **dict(args, **kwargs))
