"""Reading trained models safely: run checkpoints with tensors and plain values only (``weights_only``), never
code, and portable model files (:mod:`lemevit.io.model_file`).

A Lightning checkpoint written by someone else can run code when unpickled in full; lemevit reads every
checkpoint with ``torch.load(weights_only=True)``, which allows tensors, numbers, strings and containers only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lemevit.errors import DataError
from lemevit.io.model_file import BackboneWeights, ModelFile, model_file_folder, read_model_file, weights_under
from lemevit.io.tensor_file import load_torch_file

__all__ = ["TASK_KEY", "TrainedModel", "backbone_state_dict", "checkpoint_task",
           "read_checkpoint", "read_trained_model", "trained_model_task", "training_minutes"]

#: Key naming the task in a checkpoint, so that ``lemevit eval`` and ``predict`` know what they load.
TASK_KEY = "lemevit_task"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The content of a lemevit run checkpoint, loaded on the CPU without unpickling any code."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder but not a lemevit model file (it needs a config.json with a lemevit "
                        "section beside model.safetensors)")
    if not path.is_file():
        raise DataError(f"checkpoint {path} {'is not a file' if path.exists() else 'does not exist'}")
    content = load_torch_file(path, "a lemevit checkpoint", mmap=True)
    if not isinstance(content, dict) or not isinstance(content.get("state_dict"), dict) \
            or not isinstance(content.get("hyper_parameters"), dict):
        raise DataError(f"{path} is not a lemevit run checkpoint (no state_dict and hyper_parameters)")
    return content


def checkpoint_task(content: dict[str, Any]) -> str:
    """The task of the run that wrote the checkpoint ``content`` (checkpoints of lemevit 0.1 scene-recognition
    runs carry no task key)."""
    return content.get(TASK_KEY, "classification")


# The optimiser settings runs saved as four hyperparameters before they became one ``optimization`` mapping.
_OPTIMIZATION_BEFORE = ("lr", "weight_decay", "warmup_epochs", "min_lr_factor")


def current_hyper_parameters(saved: dict[str, Any]) -> dict[str, Any]:
    """A task module's saved hyperparameters in this version's form: the optimiser settings of older runs are
    gathered into their ``optimization`` mapping, so that their checkpoints still evaluate, predict and export."""
    hparams = dict(saved)
    if "optimization" not in hparams and any(k in hparams for k in _OPTIMIZATION_BEFORE):
        hparams["optimization"] = {k: hparams.pop(k) for k in _OPTIMIZATION_BEFORE if k in hparams}
    return hparams


def training_minutes(path: str | Path) -> float:
    """Wall-clock minutes the run spent training (its validations included) up to the checkpoint ``path``,
    summed over every process that resumed it."""
    content = read_checkpoint(path)
    try:
        return content["callbacks"]["Timer"]["time_elapsed"]["train"] / 60
    except (KeyError, TypeError):
        raise DataError(f"checkpoint {path} records no training time (written before lemevit kept it)") from None


def backbone_state_dict(content: dict[str, Any], prefix: str, source: str | Path = "the checkpoint") -> BackboneWeights:
    """The weights under ``prefix`` of a run checkpoint's state dict (``model.encoder.`` for a segmentation run's
    backbone, say), as :func:`lemevit.models.create_model` loads them into the backbone of any task; ``source``
    names the checkpoint in messages."""
    return weights_under(content["state_dict"], prefix, source)


@dataclass
class TrainedModel:
    """What rebuilds a trained task module, read from a run checkpoint or a model file: the task, its
    hyper-parameters and the module's state dict."""

    task: str
    hyper_parameters: dict[str, Any]
    state_dict: dict[str, torch.Tensor]


def _run_model_file(path: str | Path) -> ModelFile:
    """The model file ``path`` names, which must be a run's (a bare model has no task)."""
    model_file = read_model_file(path)
    if model_file.task is None:
        raise DataError(f"{path} is a bare {model_file.architecture} model (no task, no head): eval and predict "
                        "take the model file of a run (lemevit export --checkpoint RUN/best.ckpt)")
    return model_file


def trained_model_task(path: str | Path) -> str:
    """The task of the run checkpoint or model file ``path``."""
    if model_file_folder(path) is not None:
        return _run_model_file(path).task
    return checkpoint_task(read_checkpoint(path))


def read_trained_model(path: str | Path) -> TrainedModel:
    """The trained task module a run checkpoint (``.ckpt``) or a model file folder holds; nothing is unpickled."""
    if model_file_folder(path) is not None:
        model_file = _run_model_file(path)
        return TrainedModel(model_file.task, current_hyper_parameters(model_file.hyper_parameters),
                            {f"model.{k}": v for k, v in model_file.state_dict().items()})
    content = read_checkpoint(path)
    return TrainedModel(checkpoint_task(content), current_hyper_parameters(content["hyper_parameters"]),
                        content["state_dict"])
