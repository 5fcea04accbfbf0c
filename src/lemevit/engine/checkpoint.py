"""Reading lemevit run checkpoints safely: tensors and plain values only (``weights_only``), never code.

A Lightning checkpoint written by someone else can run code when unpickled in full; lemevit reads every
checkpoint with ``torch.load(weights_only=True)``, which allows tensors, numbers, strings and containers only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lemevit.errors import DataError

__all__ = ["TASK_KEY", "backbone_state_dict", "checkpoint_task", "read_checkpoint", "training_minutes"]

#: Key naming the task in a checkpoint, so that ``lemevit eval`` and ``predict`` know what they load.
TASK_KEY = "lemevit_task"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The content of a lemevit run checkpoint, loaded on the CPU without unpickling any code."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for files that are not checkpoints
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path} is not a lemevit checkpoint that can be read safely ({first[:200]}); a file from "
                        "someone else should come as a portable model file") from None
    if not isinstance(content, dict) or not isinstance(content.get("state_dict"), dict) \
            or not isinstance(content.get("hyper_parameters"), dict):
        raise DataError(f"{path} is not a lemevit run checkpoint (no state_dict and hyper_parameters)")
    return content


def checkpoint_task(content: dict[str, Any]) -> str:
    """The task of the run that wrote the checkpoint ``content`` (checkpoints of lemevit 0.1 scene-recognition
    runs carry no task key)."""
    return content.get(TASK_KEY, "classification")


def training_minutes(path: str | Path) -> float:
    """Wall-clock minutes the run spent training (its validations included) up to the checkpoint ``path``,
    summed over every process that resumed it."""
    content = read_checkpoint(path)
    try:
        return content["callbacks"]["Timer"]["time_elapsed"]["train"] / 60
    except (KeyError, TypeError):
        raise DataError(f"checkpoint {path} records no training time (written before lemevit kept it)") from None


def backbone_state_dict(content: dict[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    """The weights under ``prefix`` of a run checkpoint's state dict (``model.encoder.`` for a segmentation run's
    backbone, say), with the prefix and a ``features_only`` wrapper's own ``model.`` removed: a state dict that
    :func:`lemevit.models.create_model` loads into the backbone of any task."""
    state = {k[len(prefix):]: v for k, v in content["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise DataError(f"the checkpoint holds no weights under {prefix!r}")
    if all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    return state
