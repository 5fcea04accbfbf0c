"""Creating models by name, dense-task encoders, and loading local checkpoints into them (published or our own
layout)."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from lemevit.errors import ConfigError, DataError
from lemevit.io.model_file import BackboneWeights, model_file_folder, read_model_file
from lemevit.io.tensor_file import load_safetensors, load_torch_file

__all__ = ["DENSE_STRIDES", "create_dense_encoder", "create_model", "input_size_kwargs", "list_models",
           "load_checkpoint_file", "load_weights"]

_logger = logging.getLogger(__name__)

_FEATURE_KWARGS = ("features_only", "out_indices", "feature_cls", "feature_cfg", "output_stride")
#: The strides of the maps dense heads (UperNet, SegFormer, FPN, change heads) read.
DENSE_STRIDES = (4, 8, 16, 32)

# Model modules of this package; their timm registrations are what `list_models` reports.
_MODEL_MODULES = ("lemevit.models.lemevit", "lemevit.models.lvt", "lemevit.models.vvt")


def list_models() -> list[str]:
    """Names of the models this package registers with timm."""
    names = []
    for module in _MODEL_MODULES:
        names += sorted(timm.list_models(module=module.rsplit(".", 1)[-1]))
    return names


def load_checkpoint_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``.pth``, ``.pt``, ``.bin``, ``.ckpt``),
    unwrapping the usual ``state_dict`` / ``model`` containers; from a lemevit model file (its folder or a file in
    it), the backbone's weights."""
    if model_file_folder(path) is not None:
        return read_model_file(path).backbone_state_dict()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        state = load_safetensors(path)
    else:
        state = load_torch_file(path, "a checkpoint of weights")
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise DataError(f"checkpoint {path} holds no state dict of tensors")
    return state


def _filter_fn(model: nn.Module):
    return getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint",
                 full_keys: set[str] | None = None) -> None:
    """Load ``state_dict`` into ``model`` (or into the backbone of a ``features_only`` wrapper).

    The published layout is converted; a stem conv trained on another number of bands is adapted
    (timm's ``adapt_input_conv``); a classifier of another size, or one the state dict lacks (the weights of a
    backbone), is left at its initialisation with a warning. Any other missing or unexpected key is an error,
    except that keys in ``full_keys`` (the state dict keys of the unpruned model, when ``model`` is a
    ``features_only`` one) may be present in the checkpoint without being used, and the features model's own
    additions (those not in ``full_keys``) may be absent from it. A features wrapper that flattens the full
    model's sequences (timm's FeatureListNet: ``stages.0`` becomes ``stages_0``) takes the full model's names.
    """
    target = getattr(model, "model", model) if isinstance(model, nn.ModuleDict) else model
    own = target.state_dict()
    renamed = _flattened_names(own, full_keys)
    if isinstance(state_dict, BackboneWeights):
        return _load_backbone(target, own, state_dict, full_keys, renamed)
    filter_fn = _filter_fn(target)
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, target)
    state_dict = {renamed.get(k, k): v for k, v in state_dict.items()}
    cfg = getattr(target, "pretrained_cfg", {}) or {}

    first_conv = cfg.get("first_conv")
    key = renamed.get(f"{first_conv}.weight", f"{first_conv}.weight") if first_conv else None
    if key in state_dict and key in own and state_dict[key].shape[1] != own[key].shape[1]:
        _logger.info("adapting %s from %d to %d input channels", key, state_dict[key].shape[1], own[key].shape[1])
        state_dict[key] = adapt_input_conv(own[key].shape[1], state_dict[key])

    classifier = cfg.get("classifier")
    head_keys = [name + suffix for name in ([classifier] if isinstance(classifier, str) else classifier or [])
                 for suffix in (".weight", ".bias")]
    for k in head_keys:
        if k in state_dict and (k not in own or own[k].shape != state_dict[k].shape):
            if k in own:
                _logger.warning("%s: %s has shape %s, model has %s; left at initialisation",
                                source, k, tuple(state_dict[k].shape), tuple(own[k].shape))
            del state_dict[k]
        elif k in own and k not in state_dict:
            # The weights of a backbone (a dense task's encoder, say) bring no classifier.
            _logger.warning("%s has no %s; left at initialisation", source, k)

    unexpected = [k for k in state_dict if k not in own and k not in (full_keys or ())]
    # What a features_only model adds to the full one (LVT's stage norms) is not in a classifier's weights: it
    # starts at its initialisation, as in the published dense code. A wrapper that flattens the full model's
    # names (timm's FeatureListNet, its own target) adds nothing to it.
    adds = full_keys is not None and target is not model
    added = [k for k in own if adds and k not in full_keys and k not in state_dict]
    if added:
        _logger.warning("%s has no %s (the dense encoder's own); left at initialisation", source, _some(added))
    missing = [k for k in own if k not in state_dict and k not in head_keys and k not in added]
    if missing or unexpected:
        raise DataError(
            f"{source} does not fit {type(target).__name__}: missing keys {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}")
    mismatched = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
                  for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    if mismatched:
        raise DataError(f"{source} does not fit {type(target).__name__}: shape mismatch {mismatched[:10]}")
    target.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)


def _flattened_names(own: dict[str, torch.Tensor], full_keys: set[str] | None) -> dict[str, str]:
    """The full model's name of each tensor a features wrapper renamed, mapped to the wrapper's name: timm's
    FeatureListNet joins a top-level sequence and its child with ``_`` (``stages.0.x`` is ``stages_0.x``)."""
    if not full_keys:
        return {}
    renamed = {}
    for key in own:
        if key in full_keys:
            continue
        head, _, rest = key.partition(".")
        for i, char in enumerate(head):
            original = f"{head[:i]}.{head[i + 1:]}.{rest}"
            if char == "_" and original in full_keys:
                renamed[original] = key
                break
    return renamed


def _load_backbone(target: nn.Module, own: dict[str, torch.Tensor], backbone: BackboneWeights,
                   full_keys: set[str] | None, renamed: dict[str, str]) -> None:
    """Load the backbone of another task's network into ``target``: the tensors both have, the rest of ``target``
    left at its initialisation (its head, a classifier's last norm, the stages a truncated encoder lacks), the
    backbone's task-specific parts (a dense encoder's stage norms) unused; one line says what was taken. A backbone
    of another architecture, of which little fits, is refused as a weights file of the bare model is. ``own`` is
    ``target``'s state dict."""
    state = {renamed.get(k, k): v for k, v in backbone.items()}
    cfg = getattr(target, "pretrained_cfg", {}) or {}
    key = f"{cfg['first_conv']}.weight" if cfg.get("first_conv") else None
    key = renamed.get(key, key)
    if key in state and key in own and state[key].shape[1] != own[key].shape[1]:
        state[key] = adapt_input_conv(own[key].shape[1], state[key])
    classifier = cfg.get("classifier")
    # A classifier of another size (another run's classes) is left at its initialisation, as for any checkpoint.
    head_keys = {name + suffix for name in ([classifier] if isinstance(classifier, str) else classifier or [])
                 for suffix in (".weight", ".bias")}
    for k in head_keys & set(state) & set(own):
        if state[k].shape != own[k].shape:
            del state[k]
    taken = [k for k in own if k in state and state[k].shape == own[k].shape]
    mismatched = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    unused = [k for k in state if k not in own and k not in (full_keys or ())]
    if mismatched or len(taken) * 2 < len(state):
        missing = [k for k in own if k not in state]
        raise DataError(f"{backbone.source} does not fit {type(target).__name__}: {len(taken)} of the backbone's "
                        f"{len(state)} tensors do; shape mismatch {mismatched[:5]}, missing keys {missing[:5]}, "
                        f"unexpected keys {unused[:5]}")
    target.load_state_dict({k: state[k] for k in taken}, strict=False)
    left = [k for k in own if k not in state]
    rest = f"; left at initialisation: {_some(left)}" if left else ""
    others = f"; not used: {_some(unused)}" if unused else ""
    _logger.warning("%s: took %d tensors of its backbone%s%s", backbone.source, len(taken), rest, others)


def _some(keys: list[str], shown: int = 4) -> str:
    """``keys`` counted, with the first few named."""
    return f"{len(keys)} ({', '.join(keys[:shown])}{', ...' if len(keys) > shown else ''})"


def _timm_model(name: str, **kwargs) -> nn.Module:
    try:
        return timm.create_model(name, **kwargs)
    except RuntimeError as e:
        if str(e).startswith("Unknown model"):
            raise ConfigError("model", f"unknown model {name!r}: not one of lemevit's (`lemevit models` lists them) "
                                       "nor of timm's") from None
        raise


def input_size_kwargs(name: str, img_size: int) -> dict:
    """``{"img_size": img_size}`` for a timm model whose input size is fixed when it is built (plain ViTs, Swin: their
    position tables or attention windows), nothing for the others, which take any size."""
    cfg = timm.models.get_pretrained_cfg(name)
    return {"img_size": img_size} if cfg is not None and cfg.fixed_input_size else {}


def create_model(name: str, checkpoint: str | Path | dict[str, torch.Tensor] | None = None, **kwargs) -> nn.Module:
    """``timm.create_model`` that also loads local weights.

    Args:
        name: any model name timm knows (ours are registered on ``import lemevit``).
        checkpoint: a ``.safetensors`` / torch file in our layout or in the published one, a lemevit model file
            (the backbone of any task's), or a state dict.
        **kwargs: passed to ``timm.create_model`` (``num_classes``, ``in_chans``, ``features_only``,
            ``drop_path_rate``, ...).
    """
    model = _timm_model(name, **kwargs)
    if checkpoint is not None:
        full_keys = None
        if kwargs.get("features_only"):
            # The features model has dropped its head; keys of the full model are still legitimate.
            full_kwargs = {k: v for k, v in kwargs.items() if k not in _FEATURE_KWARGS}
            with torch.device("meta"):
                full_keys = set(timm.create_model(name, **full_kwargs).state_dict())
        state_dict = checkpoint if isinstance(checkpoint, dict) else load_checkpoint_file(checkpoint)
        source = "the given state dict" if isinstance(checkpoint, dict) else str(checkpoint)
        # The conversions change a copy (a backbone's loading copies it itself).
        load_weights(model, state_dict if isinstance(state_dict, BackboneWeights) else dict(state_dict),
                     source=source, full_keys=full_keys)
    return model


def create_dense_encoder(name: str, in_chans: int = 3, strides: tuple[int, ...] = DENSE_STRIDES,
                         checkpoint: str | Path | dict[str, torch.Tensor] | None = None,
                         drop_path_rate: float = 0.0) -> nn.Module:
    """The ``features_only`` model of ``name`` giving its deepest map at each of ``strides``: the encoder of every
    dense task (segmentation, change detection, detection).

    The feature layout is read from a copy built on the meta device, so that the real model is built once and
    holds only the stages the chosen maps need. A model without a map at one of the strides is a
    :class:`~lemevit.errors.ConfigError` naming the strides it has.
    """
    extra = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    with torch.device("meta"):
        probe = _timm_model(name, features_only=True, in_chans=in_chans, **extra)
    reductions = list(probe.feature_info.reduction())
    missing = [s for s in strides if s not in reductions]
    if missing:
        raise ConfigError("model", f"{name} has feature maps at strides {reductions}, none at {missing}; this head "
                                   f"reads the maps at strides {list(strides)}")
    out_indices = tuple(max(i for i, r in enumerate(reductions) if r == s) for s in strides)
    return create_model(name, checkpoint=checkpoint, features_only=True, out_indices=out_indices,
                        in_chans=in_chans, **extra)
