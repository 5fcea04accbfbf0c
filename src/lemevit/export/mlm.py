"""A model folder described as a STAC Item with the Machine Learning Model extension (stac-extensions/mlm v1.5):
what the model is (name, architecture, tasks, framework, parameters, pretraining), what it takes (bands, shape,
normalisation), what it gives (shape, classes with their colours), and each model file as an asset with the role
``mlm:model``. Written as a plain dict: the item is a few fields, not worth a dependency."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import lemevit
from lemevit.io.atomic import atomic_path
from lemevit.io.model_file import CONFIG_FILE

__all__ = ["ITEM_FILE", "MLM_SCHEMA", "ModelAsset", "ModelDescription", "mlm_item", "write_mlm_item"]

ITEM_FILE = "item.json"
STAC_VERSION = "1.1.0"
MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
#: The MLM tasks of each of our tasks (and of a bare classifier or feature extractor), and the dimensions of what its
#: network outputs after the batch.
TASKS: dict[str | None, tuple[list[str], tuple[str, ...]]] = {
    "classification": (["scene-classification", "classification"], ("class",)),
    "segmentation": (["semantic-segmentation", "segmentation"], ("class", "height", "width")),
    "change": (["semantic-segmentation", "segmentation"], ("class", "height", "width")),
    "detection": (["object-detection", "detection"], ("box", "attribute")),
    "panoptic": (["panoptic-segmentation", "segmentation"], ("height", "width")),
    "bare": (["classification"], ("class",)),
    "features": ([], ("channel", "height", "width")),
}
#: What each of our model files is, as MLM names it: artifact type and media type.
ARTIFACTS = {
    "safetensors": ("safetensors.torch.save_file", "application/octet-stream; framework=pytorch; profile=safetensors"),
    "onnx": ("torch.onnx.export", "application/octet-stream; framework=onnx; profile=onnx"),
    "onnx-int8": ("onnxruntime.quantization.quantize_dynamic",
                  "application/octet-stream; framework=onnx; profile=onnx"),
}


@dataclass
class ModelAsset:
    """A model file of the folder: its ``kind`` (a key of :data:`ARTIFACTS`), a ``title``, more ``roles``."""

    path: Path
    kind: str
    title: str
    roles: tuple[str, ...] = ()


@dataclass
class ModelDescription:
    """What the item says of a model: ``task`` is a key of :data:`TASKS`, ``mean``/``std`` in the images' own scale
    (None: none known), ``colours`` one RGB per class, ``outputs`` the name, shape (batch first, -1 where any) and
    description of each output, ``pretrained`` None when not known."""

    name: str
    architecture: str
    task: str
    channels: int
    size: int
    class_names: list[str]
    colours: list[tuple[int, int, int]]
    total_parameters: int
    outputs: list[tuple[str, list[int], str]]
    mean: list[float] | None = None
    std: list[float] | None = None
    input_dtype: str | None = None
    band_names: list[str] | None = None
    inputs: tuple[str, ...] = ("image",)
    pretrained: bool | None = None
    pretrained_source: str | None = None


def _classes(model: ModelDescription) -> list[dict]:
    return [{"value": i, "name": name, "color_hint": "{:02X}{:02X}{:02X}".format(*colour)}
            for i, (name, colour) in enumerate(zip(model.class_names, model.colours, strict=True))]


def _inputs(model: ModelDescription) -> list[dict]:
    bands = list(model.band_names or [])
    description = f"{model.channels}-band {model.input_dtype or 'uint8'} image"
    scaling = None
    if model.mean is not None:
        scaling = [{"type": "z-score", "mean": float(m), "stddev": float(s)}
                   for m, s in zip(model.mean, model.std, strict=True)]
        description += ", normalised per band as (raw - mean) / std with mean and std in the raw values' scale"
    return [{"name": name, "bands": bands, "description": description, "value_scaling": scaling,
             "resize_type": None,
             "input": {"shape": [-1, model.channels, model.size, model.size],
                       "dim_order": ["batch", "bands" if bands else "channel", "height", "width"],
                       "data_type": "float32"}}
            for name in model.inputs]


def _outputs(model: ModelDescription) -> list[dict]:
    tasks, dims = TASKS[model.task]
    return [{"name": name, "tasks": tasks, "description": description,
             "result": {"shape": shape, "dim_order": ["batch", *dims], "data_type": "float32"},
             "classification:classes": _classes(model) if model.class_names else []}
            for name, shape, description in model.outputs]


def mlm_item(model: ModelDescription, assets: list[ModelAsset], folder: Path) -> dict[str, Any]:
    """The STAC Item (STAC 1.1, MLM v1.5.2) of ``model`` whose files ``assets`` are in ``folder``."""
    properties: dict[str, Any] = {
        "datetime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "description": f"{model.architecture} {model.task} model exported by lemevit {lemevit.__version__}",
        "mlm:name": model.name,
        "mlm:architecture": model.architecture,
        "mlm:tasks": TASKS[model.task][0],
        "mlm:framework": "PyTorch",
        "mlm:framework_version": torch.__version__.split("+")[0],
        "mlm:total_parameters": int(model.total_parameters),
        "mlm:input": _inputs(model),
        "mlm:output": _outputs(model),
    }
    if model.pretrained is not None:
        properties["mlm:pretrained"] = model.pretrained
        properties["mlm:pretrained_source"] = model.pretrained_source
    if model.band_names:
        properties["bands"] = [{"name": name} for name in model.band_names]
    files = {}
    for asset in assets:
        artifact, media = ARTIFACTS[asset.kind]
        files[asset.path.name.replace(".", "-")] = {
            "href": f"./{asset.path.relative_to(folder).as_posix()}", "type": media, "title": asset.title,
            "roles": ["mlm:model", *asset.roles], "mlm:artifact_type": artifact}
    if (folder / CONFIG_FILE).is_file():
        files["config"] = {"href": f"./{CONFIG_FILE}", "type": "application/json", "roles": ["metadata"],
                           "title": "the model's settings: timm's fields and lemevit's task and hyper-parameters"}
    return {
        "type": "Feature", "stac_version": STAC_VERSION,
        "stac_extensions": [MLM_SCHEMA, CLASSIFICATION_SCHEMA],
        "id": model.name, "geometry": None, "properties": properties, "links": [], "assets": files,
    }


def write_mlm_item(model: ModelDescription, assets: list[ModelAsset], folder: str | Path) -> Path:
    """Write :func:`mlm_item` as ``folder/item.json`` (atomically); returns its path."""
    folder = Path(folder)
    path = folder / ITEM_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(mlm_item(model, assets, folder), indent=1) + "\n")
    return path
