"""A model folder described as a STAC Item with the Machine Learning Model extension (stac-extensions/mlm v1.5):
what the model is (name, architecture, tasks, framework, parameters, pretraining), what it takes (bands, shape,
normalisation), what it gives (shape, classes with their colours), and each model file as an asset with the role
``mlm:model``. Written as a plain dict: the item is a few fields, not worth a dependency."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import lemevit
from lemevit.io.atomic import atomic_path
from lemevit.io.model_file import CONFIG_FILE

__all__ = ["ITEM_FILE", "MLM_SCHEMA", "ModelAsset", "ModelDescription", "ModelOutput", "mlm_item",
           "write_mlm_item"]

ITEM_FILE = "item.json"
STAC_VERSION = "1.1.0"
MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
#: The MLM tasks of each of our tasks (and of a bare classifier or feature extractor), the dimensions of what its
#: network outputs after the batch, and their data type. MLM v1.5 names no change detection: a change map is a
#: semantic segmentation into "no change" and "change".
TASKS: dict[str, tuple[list[str], tuple[str, ...], str]] = {
    "classification": (["scene-classification", "classification"], ("class",), "float32"),
    "segmentation": (["semantic-segmentation", "segmentation"], ("class", "height", "width"), "float32"),
    "change": (["semantic-segmentation", "segmentation"], ("class", "height", "width"), "float32"),
    "detection": (["object-detection", "detection"], ("box", "attribute"), "float32"),
    "panoptic": (["panoptic-segmentation", "segmentation"], ("height", "width"), "int64"),
    "bare": (["classification"], ("class",), "float32"),
    "features": ([], ("channel", "height", "width"), "float32"),
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
    """A model file of the folder: its ``kind`` (a key of :data:`ARTIFACTS`), a ``title``, more ``roles``, and a
    ``description`` where the title is not enough."""

    path: Path
    kind: str
    title: str
    roles: tuple[str, ...] = ()
    description: str | None = None


@dataclass
class ModelOutput:
    """An output of the model: its ``name``, ``shape`` (batch first, -1 where any) and ``description``; ``task`` (a
    key of :data:`TASKS`), ``class_names`` and ``colours`` when they are not the model's own."""

    name: str
    shape: list[int]
    description: str
    task: str | None = None
    class_names: list[str] | None = None
    colours: list[tuple[int, int, int]] | None = None


@dataclass
class ModelDescription:
    """What the item says of a model: ``task`` is a key of :data:`TASKS`, ``mean``/``std`` in the images' own scale
    (None: none known), ``colours`` one RGB per class, ``inputs`` what each input of the network is, by name,
    ``pretrained`` None when not known."""

    name: str
    architecture: str
    task: str
    channels: int
    size: int
    class_names: list[str]
    colours: list[tuple[int, int, int]]
    total_parameters: int
    outputs: list[ModelOutput]
    mean: list[float] | None = None
    std: list[float] | None = None
    input_dtype: str | None = None
    band_names: list[str] | None = None
    inputs: dict[str, str] = field(default_factory=lambda: {"image": "the image"})
    pretrained: bool | None = None
    pretrained_source: str | None = None


def _classes(names: list[str], colours: list[tuple[int, int, int]]) -> list[dict]:
    return [{"value": i, "name": name, "color_hint": "{:02X}{:02X}{:02X}".format(*colour)}
            for i, (name, colour) in enumerate(zip(names, colours, strict=True))]


def _inputs(model: ModelDescription) -> list[dict]:
    bands = list(model.band_names or [])
    image = f"{model.channels}-band {model.input_dtype or 'uint8'} image"
    scaling = None
    if model.mean is not None:
        scaling = [{"type": "z-score", "mean": float(m), "stddev": float(s)}
                   for m, s in zip(model.mean, model.std, strict=True)]
        image += ", normalised per band as (raw - mean) / std with mean and std in the raw values' scale"
    return [{"name": name, "bands": bands, "description": f"{what}: {image}", "value_scaling": scaling,
             "resize_type": None,
             "input": {"shape": [-1, model.channels, model.size, model.size],
                       "dim_order": ["batch", "bands" if bands else "channel", "height", "width"],
                       "data_type": "float32"}}
            for name, what in model.inputs.items()]


def _output_tasks(model: ModelDescription, output: ModelOutput) -> list[str]:
    return TASKS[output.task or model.task][0]


def _outputs(model: ModelDescription) -> list[dict]:
    described = []
    for output in model.outputs:
        _, dims, data_type = TASKS[output.task or model.task]
        names = model.class_names if output.class_names is None else output.class_names
        colours = model.colours if output.colours is None else output.colours
        described.append({"name": output.name, "tasks": _output_tasks(model, output),
                          "description": output.description,
                          "result": {"shape": output.shape, "dim_order": ["batch", *dims], "data_type": data_type},
                          "classification:classes": _classes(names, colours)})
    return described


def mlm_item(model: ModelDescription, assets: list[ModelAsset], folder: Path) -> dict[str, Any]:
    """The STAC Item (STAC 1.1, MLM v1.5.2) of ``model`` whose files ``assets`` are in ``folder``."""
    properties: dict[str, Any] = {
        "datetime": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "description": f"{model.architecture} {model.task} model exported by lemevit {lemevit.__version__}",
        "mlm:name": model.name,
        "mlm:architecture": model.architecture,
        # The model's and those of any output of another task (a panoptic model's semantic branch).
        "mlm:tasks": list(dict.fromkeys([*TASKS[model.task][0], *(task for output in model.outputs
                                                                   for task in _output_tasks(model, output))])),
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
        key = asset.path.name.replace(".", "-")
        files[key] = {"href": f"./{asset.path.relative_to(folder).as_posix()}", "type": media, "title": asset.title,
                      "roles": ["mlm:model", *asset.roles], "mlm:artifact_type": artifact}
        if asset.description:
            files[key]["description"] = asset.description
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
