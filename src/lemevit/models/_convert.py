"""What every converter of published checkpoints does before renaming keys."""
from __future__ import annotations

import re

import torch

__all__ = ["prepare_state_dict"]


def prepare_state_dict(state_dict: dict, strip: str = r"^(module\.|backbone\.)+") -> dict[str, torch.Tensor]:
    """Unwrap ``state_dict`` / ``model`` containers, strip wrapper prefixes (DDP's ``module.``, mmseg and
    mmdet's ``backbone.``) and cast float tensors to float32 (published fixtures are stored as float16)."""
    for wrapper in ("state_dict", "model"):
        if wrapper in state_dict and isinstance(state_dict[wrapper], dict):
            state_dict = state_dict[wrapper]
    prefix = re.compile(strip)
    return {prefix.sub("", key): value.float() if torch.is_tensor(value) and value.is_floating_point() else value
            for key, value in state_dict.items()}
