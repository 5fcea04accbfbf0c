"""LVT: Lite Vision Transformer with enhanced self-attention (Yang et al., CVPR 2022).

Four stages, each an overlapping patch embedding (conv + LayerNorm) and pre-norm blocks:

* stage 1: convolutional self-attention (CSA) and a Linear MLP;
* stages 2-4: recursive atrous self-attention (RASA) and a conv MLP (1x1 conv -> dw3x3 -> GELU -> 1x1 conv).

Two published networks share these stages:

* ``lvt`` (classification): the last map's tokens and a class token go through two class-attention blocks
  and a LayerNorm; ``logits = head(cls) + 0.5 * max over tokens of aux_head(tokens)`` (token labelling).
* ``lvt_backbone`` (dense prediction, ``dense_backbone=True``): every stage output goes through its own
  LayerNorm, and that normalised map is both the stage's feature (strides 4, 8, 16, 32) and the next
  stage's input. ``features_only=True`` builds this network, so that ``timm.create_model("lvt",
  features_only=True)`` gives the published dense features and loads the published dense checkpoint.

The per-stage norms are not part of the classification network (its checkpoint has none, and they change
what the later stages see), hence two configurations of one class rather than one model owning both. A
classifier's weights start the dense backbone with those norms at their initialisation (a warning names them), as
the published dense code starts from ImageNet weights.

Maps are kept channels-last, ``(B, H, W, C)``; dense features are NCHW views of them. Loads checkpoints of
the published implementation through :func:`checkpoint_filter_fn`.
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

from lemevit.layers.format import nchw, nhwc
from lemevit.layers.lvt_attention import ClassAttention, ConvolutionalSelfAttention, RecursiveAtrousSelfAttention
from lemevit.layers.mlp import Mlp
from lemevit.models._checks import check_image_batch
from lemevit.models._convert import prepare_state_dict
from lemevit.models.pretrained import check_timm_pretrained, with_tagged_cfgs

__all__ = ["LVT", "DwConvMlp", "OverlapPatchEmbed", "checkpoint_filter_fn"]

ATTENTION_TYPES = ("csa", "rasa")


class OverlapPatchEmbed(nn.Module):
    """Conv (kernel ``patch_size``, padding ``patch_size // 2``) then LayerNorm: NCHW in, (B, H, W, C) out."""

    def __init__(self, in_chans: int, dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(nhwc(self.proj(x)))


class DwConvMlp(nn.Module):
    """Linear -> depthwise 3x3 conv -> GELU -> Linear on (B, H, W, C) maps.

    LVT's conv MLP (its 1x1 convs are these Linears) and VVT's Mix-FFN are this same computation.
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nhwc(self.dwconv(nchw(self.fc1(x))))
        return self.drop2(self.fc2(self.drop1(self.act(x))))


class LVTBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))`` on (B, H, W, C) maps."""

    def __init__(self, dim: int, num_heads: int, attn_type: str, mlp_ratio: float, conv_mlp: bool,
                 sr_ratio: int = 1, atrous_rates: Sequence[int] = (1, 3, 5), recursions: int = 2,
                 qkv_bias: bool = False, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        if attn_type not in ATTENTION_TYPES:
            raise ValueError(f"attn_type must be one of {ATTENTION_TYPES}, got {attn_type!r}")
        self.norm1 = nn.LayerNorm(dim)
        if attn_type == "csa":
            self.attn = ConvolutionalSelfAttention(dim, num_heads, attn_drop=attn_drop)
        else:
            self.attn = RecursiveAtrousSelfAttention(
                dim, num_heads, sr_ratio=sr_ratio, atrous_rates=atrous_rates, recursions=recursions,
                qkv_bias=qkv_bias, attn_drop=attn_drop)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = DwConvMlp(dim, hidden) if conv_mlp else Mlp(dim, hidden)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class LVTStage(nn.Module):
    """Patch embedding (NCHW in) and blocks; returns a (B, H, W, C) map."""

    def __init__(self, in_dim: int, dim: int, depth: int, first: bool, drop_path: Sequence[float], **block_kwargs):
        super().__init__()
        self.patch_embed = OverlapPatchEmbed(in_dim, dim, 7 if first else 3, 4 if first else 2)
        self.blocks = nn.ModuleList(LVTBlock(dim, drop_path=drop_path[i], **block_kwargs) for i in range(depth))
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class ClassBlock(nn.Module):
    """Updates only the class token (first token): class attention over all tokens, then an MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 attn_drop: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClassAttention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = x[:, :1] + self.attn(self.norm1(x))
        cls = cls + self.mlp(self.norm2(cls))
        return torch.cat([cls, x[:, 1:]], dim=1)


class LVT(nn.Module):
    """LVT classifier (``dense_backbone=False``) or the published dense backbone (``dense_backbone=True``).

    Classifier: ``forward_features`` returns the normalised tokens ``(B, 1 + N, C)`` (class token first);
    ``forward_head`` gives ``head(cls) + 0.5 * max_tokens(aux_head(tokens))``, in training mode as well:
    the token-labelling training of the paper (MixToken and per-token targets) is not implemented, so the
    model trains as an ordinary classifier on these logits.

    Dense backbone: per-stage LayerNorms inside the stage chain, no class token, class-attention blocks,
    final norm or auxiliary head. ``forward_features`` returns the last normalised map's tokens ``(B, N, C)``
    and ``forward_head`` averages them (then ``head`` if ``num_classes > 0``).

    ``forward_intermediates`` / ``features_only``: NCHW maps of the four stages (strides 4, 8, 16, 32),
    normalised by the per-stage norms in the dense backbone and raw stage outputs in the classifier.
    """

    def __init__(
        self,
        depths: Sequence[int] = (2, 2, 2, 2),
        dims: Sequence[int] = (64, 64, 160, 256),
        num_heads: Sequence[int] = (2, 2, 5, 8),
        mlp_ratios: Sequence[float] = (4, 8, 4, 4),
        attn_types: Sequence[str] = ("csa", "rasa", "rasa", "rasa"),
        conv_mlp: Sequence[bool] = (False, True, True, True),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        atrous_rates: Sequence[int] = (1, 3, 5),
        recursions: int = 2,
        num_post_blocks: int = 2,
        qkv_bias: bool = False,
        dense_backbone: bool = False,
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        per_stage = (depths, dims, num_heads, mlp_ratios, attn_types, conv_mlp, sr_ratios)
        if len({len(v) for v in per_stage}) != 1:
            raise ValueError("depths, dims, num_heads, mlp_ratios, attn_types, conv_mlp and sr_ratios must have "
                             "the same length")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.dense_backbone = dense_backbone
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False

        # Stochastic depth grows linearly over all blocks (Python floats: the model can be built on "meta").
        rates = [drop_path_rate * i / max(sum(depths) - 1, 1) for i in range(sum(depths))]
        self.stages = nn.ModuleList()
        self.feature_info = []
        for i, dim in enumerate(dims):
            self.stages.append(LVTStage(
                in_dim=in_chans if i == 0 else dims[i - 1], dim=dim, depth=depths[i], first=i == 0,
                drop_path=rates[sum(depths[:i]):sum(depths[:i + 1])], num_heads=num_heads[i],
                attn_type=attn_types[i], mlp_ratio=mlp_ratios[i], conv_mlp=conv_mlp[i], sr_ratio=sr_ratios[i],
                atrous_rates=atrous_rates, recursions=recursions, qkv_bias=qkv_bias, attn_drop=attn_drop_rate))
            self.feature_info.append(dict(num_chs=dim, reduction=4 * 2 ** i, module=f"stages.{i}"))

        if dense_backbone:
            self.stage_norms = nn.ModuleList(nn.LayerNorm(d) for d in dims)
            self.cls_token = None
            self.post_blocks = nn.ModuleList()
            self.norm = nn.Identity()
        else:
            self.stage_norms = None
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dims[-1]))
            self.post_blocks = nn.ModuleList(
                ClassBlock(dims[-1], num_heads[-1], mlp_ratio=mlp_ratios[-1], qkv_bias=qkv_bias,
                           attn_drop=attn_drop_rate) for _ in range(num_post_blocks))
            self.norm = nn.LayerNorm(dims[-1])
        self.global_pool = "avg" if dense_backbone else "token"
        self.head_drop = nn.Dropout(drop_rate)
        self.head, self.aux_head = self._heads(num_classes)

        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _heads(self, num_classes: int) -> tuple[nn.Module, nn.Module | None]:
        head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        with_aux = self.global_pool == "token" and num_classes > 0
        return head, nn.Linear(self.num_features, num_classes) if with_aux else None

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"} if self.cls_token is not None else set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stages\.0\.patch_embed",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.patch_embed", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stage_norms\.(\d+)", (99999,)),
                (r"^cls_token|^post_blocks|^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        """``head``; both heads for the classifier, whose logits add ``aux_head``'s, so that training only
        ``get_classifier()`` (torchgeo's and TerraTorch's ``freeze_backbone``) trains all of the classifier."""
        return self.head if self.aux_head is None else nn.ModuleList([self.head, self.aux_head])

    def reset_classifier(self, num_classes: int, global_pool: str | None = None, **kwargs) -> None:
        """New ``head`` (and ``aux_head`` for the classifier). The pooling is set by the architecture
        (class token for the classifier, token mean for the dense backbone)."""
        if global_pool not in (None, self.global_pool):
            raise ValueError(f"this LVT pools with {self.global_pool!r}; got global_pool={global_pool!r}")
        self.num_classes = num_classes
        self.head, self.aux_head = self._heads(num_classes)

    def _run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``i`` on an NCHW map; (B, H, W, C) out, through the stage norm in the dense backbone."""
        x = self.stages[i](x)
        return self.stage_norms[i](x) if self.stage_norms is not None else x

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Last (B, H, W, C) map -> normalised tokens, after the class-attention blocks if any."""
        x = x.flatten(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            for block in self.post_blocks:
                x = block(x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.in_chans, "LVT")
        for i in range(len(self.stages)):
            x = self._run_stage(i, x if i == 0 else nchw(x))
        return self._tokens(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            pooled = self.head_drop(x.mean(dim=1))
            return pooled if pre_logits else self.head(pooled)
        x = self.head_drop(x)
        if pre_logits:
            return x[:, 0]
        logits = self.head(x[:, 0])
        if self.aux_head is not None:
            logits = logits + 0.5 * self.aux_head(x[:, 1:]).amax(dim=1)
        return logits

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
        """NCHW maps of the stages (``feature_info``: strides 4, 8, 16, 32).

        Args:
            indices: take the last n stages if int, all if None, these indices if a sequence.
            norm: pass the last stage's map through the final LayerNorm when it is taken (classifier only;
                the dense backbone's maps always go through their per-stage norms).
            stop_early: stop after the last stage needed.
            intermediates_only: return only the list of maps.

        Returns:
            the list of maps, or ``(forward_features output, maps)``.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        check_image_batch(x, self.in_chans, "LVT")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        num_run = max_index + 1 if stop_early and not torch.jit.is_scripting() else len(self.stages)

        intermediates = []
        for i in range(num_run):
            x = self._run_stage(i, x if i == 0 else nchw(x))
            if i in take_indices:
                intermediates.append(nchw(self.norm(x) if norm and i == last else x))
        if intermediates_only:
            return intermediates
        if num_run < len(self.stages) and self.cls_token is not None:
            raise ValueError("stop_early before the last stage leaves no class-token output: "
                             "use intermediates_only=True")
        return self._tokens(x), intermediates

    def prune_intermediate_layers(
        self,
        indices: int | Sequence[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages after the last one in ``indices`` and, if asked, the final norm and the head. The
        class token and class-attention blocks go with the head (they only serve it) and the pooling becomes
        the token mean."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        keep = max_index + 1
        prune_end = keep < len(self.stages)
        self.stages = self.stages[:keep]
        if self.stage_norms is not None:
            self.stage_norms = self.stage_norms[:keep]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_head or prune_end:
            self.cls_token = None
            self.post_blocks = nn.ModuleList()
            self.global_pool = "avg"
            self.reset_classifier(0)
        return take_indices


# Published checkpoint layout -> ours. The published model keeps each stage as `backbone.<i>` =
# Sequential(patch embedding, Sequential(blocks)), the dense-backbone norms in `downstream_norms`, the class
# attention blocks in `post_network`, CSA's value projection as a grouped 1x1 conv (`attn.weight`), RASA's
# atrous query conv as `attn.ds`, and the conv MLP with 1x1 convs and a `depconv`.
_OFFICIAL_KEY_RULES = [(re.compile(p), r) for p, r in [
    (r"^backbone\.(\d+)\.0\.", r"stages.\1.patch_embed."),
    (r"^backbone\.(\d+)\.1\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^downstream_norms\.", "stage_norms."),
    (r"^post_network\.", "post_blocks."),
    (r"\.attn\.weight\.weight$", ".attn.v_weight"),
    (r"\.attn\.ds\.", ".attn.q_conv."),
    (r"\.mlp\.depconv\.", ".mlp.dwconv."),
]]
_CSA_VALUE = re.compile(r"^stages\.\d+\.blocks\.\d+\.attn\.v_weight$")
_CONV_MLP_FC = re.compile(r"^stages\.\d+\.blocks\.\d+\.mlp\.fc[12]\.weight$")


def convert_official_key(key: str) -> str:
    if not key.startswith(("backbone.", "downstream_norms.", "post_network.")):
        return key
    for pattern, repl in _OFFICIAL_KEY_RULES:
        key = pattern.sub(repl, key)
    return key


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module | None = None
                         ) -> dict[str, torch.Tensor]:
    """Map a checkpoint of the published LVT code (classifier or dense backbone) to this implementation
    (ours pass unchanged).

    Also accepts ``module.`` prefixes, an mmseg/mmdet ``backbone.`` wrapper and ``state_dict`` / ``model``
    containers; float16 tensors become float32.
    """
    out = {}
    # The published model's own stages live under `backbone.`, so only an outer mmseg/mmdet one is stripped.
    outer_prefix = r"^(module\.)*(backbone\.(?=backbone\.|downstream_norms\.))?"
    for key, value in prepare_state_dict(state_dict, outer_prefix).items():
        key = convert_official_key(key)
        if _CSA_VALUE.match(key) and value.ndim == 4:
            # Grouped 1x1 conv (k*k*C, C, 1, 1), group p = kernel position p -> (k*k, C_out, C_in).
            value = value.reshape(-1, value.shape[1], value.shape[1])
        elif _CONV_MLP_FC.match(key) and value.ndim == 4:
            value = value.flatten(1)
        out[key] = value
    return out


def _create_lvt(variant: str, pretrained: bool = False, **kwargs) -> LVT:
    kwargs = check_timm_pretrained(variant, pretrained, kwargs)
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    if kwargs.get("features_only"):
        # Dense features are those of the published dense backbone unless asked otherwise; no head is needed.
        kwargs.setdefault("dense_backbone", True)
        kwargs["num_classes"] = 0
    return build_model_with_cfg(
        LVT, variant, pretrained,
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
        "crop_pct": 0.96,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "stages.0.patch_embed.proj",
        "classifier": ("head", "aux_head"),
        "paper_ids": "arXiv:2112.10809",
        "paper_name": "Lite Vision Transformer with Enhanced Self-Attention",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(with_tagged_cfgs({
    "lvt": _cfg(),
    "lvt_backbone": _cfg(num_classes=0, classifier="head"),
}))


@register_model
def lvt(pretrained: bool = False, **kwargs) -> LVT:
    """LVT classifier (5.52 M parameters with 1000 classes)."""
    return _create_lvt("lvt", pretrained, **kwargs)


@register_model
def lvt_backbone(pretrained: bool = False, **kwargs) -> LVT:
    """The published LVT dense-prediction backbone (per-stage LayerNorms, 3.43 M parameters)."""
    args = dict(dense_backbone=True)
    return _create_lvt("lvt_backbone", pretrained, **dict(args, **kwargs))
