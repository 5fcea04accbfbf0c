"""The portable model file: a folder with ``model.safetensors`` (the network's weights) and ``config.json`` (what
rebuilds it), in the layout of Hugging Face / timm model folders.

``config.json`` holds timm's fields (``architecture``, ``num_classes``, ``pretrained_cfg`` with mean, std, input
size and label names, ``model_args``), so that a classifier loads with ``timm.create_model("local-dir:DIR")`` or
``pretrained_cfg_overlay=dict(file=DIR/model.safetensors)``, and a ``lemevit`` section: the task, the task module's
hyper-parameters (bands, classes, normalisation, window, head), and where the backbone's weights are. Reading it
unpickles nothing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lemevit.errors import DataError
from lemevit.io.atomic import atomic_path
from lemevit.io.tensor_file import load_safetensors

__all__ = ["CONFIG_FILE", "FORMAT_VERSION", "WEIGHTS_FILE", "BackboneWeights", "ModelFile", "model_file_folder",
           "read_model_file", "weights_under", "write_model_file"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: Version of the ``lemevit`` section of ``config.json``.
FORMAT_VERSION = 1


@dataclass
class ModelFile:
    """A model file folder, read: ``config`` is the whole ``config.json``."""

    folder: Path
    config: dict[str, Any]

    @property
    def lemevit(self) -> dict[str, Any]:
        return self.config["lemevit"]

    @property
    def task(self) -> str | None:
        """The task of the exported run (None: a bare model)."""
        return self.lemevit.get("task")

    @property
    def hyper_parameters(self) -> dict[str, Any]:
        return dict(self.lemevit.get("hyper_parameters") or {})

    @property
    def architecture(self) -> str:
        return self.config["architecture"]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The network's weights (the task module's ``model``, or the bare model)."""
        path = self.folder / WEIGHTS_FILE
        if not path.is_file():
            raise DataError(f"{path} is missing: a model file folder holds {WEIGHTS_FILE} beside {CONFIG_FILE}")
        return load_safetensors(path)

    def backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """The backbone's weights, keyed as in the bare model: what ``lemevit.create_model`` and the
        ``--init-checkpoint`` of a run load from a model file of any task."""
        what = f"a {self.task} model file" if self.task else "a model file"
        return weights_under(self.state_dict(), self.lemevit.get("backbone_prefix", ""), f"{self.folder} ({what})")


class BackboneWeights(dict):
    """The weights of the backbone of a trained network of some task, keyed as in the bare model, from ``source``.

    Another task's network is built on the same backbone in another form (a classifier ends in a norm and a head, a
    dense encoder in feature maps, change detection's BIT stops at stride 16), so loading these takes the tensors
    both have and leaves the rest of the network at its initialisation, where a weights file of the bare model
    must fit it whole."""

    def __init__(self, state: dict[str, torch.Tensor], source: str | Path):
        super().__init__(state)
        self.source = str(source)


def weights_under(state: dict[str, torch.Tensor], prefix: str, source: str | Path) -> BackboneWeights:
    """The weights of ``state`` under ``prefix`` (``encoder.`` for a segmentation network's backbone, say), with the
    prefix and a ``features_only`` wrapper's own ``model.`` removed: a state dict of the bare model."""
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not state:
        raise DataError(f"{source} holds no weights under {prefix!r}")
    if all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    return BackboneWeights(state, source)


def model_file_folder(path: str | Path) -> Path | None:
    """The model file folder ``path`` names (the folder, its ``config.json`` or its ``model.safetensors``), or None
    when ``path`` is not one."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent if path.name in (CONFIG_FILE, WEIGHTS_FILE) else None
    if folder is None or not (folder / CONFIG_FILE).is_file():
        return None
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    return folder if isinstance(config, dict) and isinstance(config.get("lemevit"), dict) else None


def read_model_file(path: str | Path) -> ModelFile:
    """Read the model file folder ``path`` names; a folder that is not one is a :class:`DataError` naming it."""
    path = Path(path)
    folder = model_file_folder(path)
    if folder is None:
        config = (path if path.is_dir() else path.parent) / CONFIG_FILE
        raise DataError(f"{path} is not a lemevit model file: {config} "
                        f"{'has no lemevit section' if config.is_file() else 'does not exist'}")
    config = json.loads((folder / CONFIG_FILE).read_text())
    section = config["lemevit"]
    if section.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{folder / CONFIG_FILE}: model file format {section.get('format_version')!r}, this lemevit "
                        f"reads format {FORMAT_VERSION}")
    if not isinstance(config.get("architecture"), str):
        raise DataError(f"{folder / CONFIG_FILE}: \"architecture\" must name the model")
    return ModelFile(folder, config)


def write_model_file(folder: str | Path, state_dict: dict[str, torch.Tensor], config: dict[str, Any]) -> list[Path]:
    """Write ``model.safetensors`` and ``config.json`` into ``folder``, each atomically, the config last (a folder
    whose config is there holds its weights). Returns the two paths."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights, config_path = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    # safetensors stores each tensor once, contiguous: shared or strided views are copied out.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    with atomic_path(config_path) as tmp:
        tmp.write_text(json.dumps({**config, "lemevit": {"format_version": FORMAT_VERSION, **config["lemevit"]}},
                                  indent=2) + "\n")
    return [weights, config_path]
