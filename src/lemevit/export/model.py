"""``lemevit export``: a run of any task, or a bare model, as a portable model file, optionally as ONNX or as a model
for QGIS's Deepness plugin, and always with a STAC Item (MLM extension) describing the files."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import lemevit
from lemevit.errors import ConfigError
from lemevit.export.deepness import DEEPNESS_FILE, FIXED_TILE, DeepnessModel, deepness_model, write_deepness
from lemevit.export.mlm import ModelAsset, ModelDescription, ModelOutput, write_mlm_item
from lemevit.inference.onnx import (
    NETWORK,
    Deviation,
    OnnxGraph,
    check_onnx,
    export_onnx,
    graph_file,
    quantize_onnx,
    require_onnxruntime,
)
from lemevit.io.model_file import WEIGHTS_FILE, model_file_folder, read_model_file, write_model_file
from lemevit.io.paths import check_writable_folder
from lemevit.labels import default_palette
from lemevit.models.pretrained import PRETRAINED

__all__ = ["ExportResult", "export_model", "timm_config"]

FORMATS = ("safetensors", "onnx", "onnx-int8", "deepness")
#: The data types ``model.safetensors`` may store its floating-point tensors in (loading computes in float32).
WEIGHT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def timm_config(architecture: str, *, num_classes: int, in_chans: int, img_size: int,
                mean: list[float] | None = None, std: list[float] | None = None, interpolation: str = "bicubic",
                label_names: list[str] | None = None, model_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The timm fields of ``config.json`` (``timm.create_model("local-dir:DIR")`` reads them). ``mean`` and ``std``
    are fractions of the full scale (timm's convention for 8-bit images)."""
    pretrained = {"input_size": [in_chans, img_size, img_size], "interpolation": interpolation, "crop_pct": 1.0,
                  "num_classes": num_classes}
    if mean is not None:
        pretrained.update(mean=list(mean), std=list(std))
    if label_names:
        pretrained["label_names"] = list(label_names)
    return {"architecture": architecture, "num_classes": num_classes, "pretrained_cfg": pretrained,
            "model_args": {"in_chans": in_chans, "num_classes": num_classes, **(model_args or {})}}


def _task_model_file(module) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    hparams = {**dict(module.hparams), "init_checkpoint": None}
    state = module.state_dict()
    foreign = [k for k in state if not k.startswith("model.")]
    if foreign:
        raise ConfigError("checkpoint", f"{module.name} module holds weights outside its network: {foreign[:5]}")
    labels = module.label_names()
    eight_bit = hparams.get("input_dtype") in (None, "uint8")
    config = timm_config(
        hparams["model"], num_classes=len(labels) if module.network_is_timm_model else 0,
        in_chans=hparams["in_chans"], img_size=hparams["img_size"],
        mean=[m / 255 for m in hparams["mean"]] if eight_bit else None,
        std=[s / 255 for s in hparams["std"]] if eight_bit else None,
        label_names=labels)
    config["lemevit"] = {"task": module.name, "lemevit_version": lemevit.__version__,
                         "backbone_prefix": module.backbone_prefix[len("model."):], "hyper_parameters": hparams}
    return {k[len("model."):]: v for k, v in state.items()}, config


#: Unknown, as the starting weights of a model file written before its config.json recorded them.
_UNKNOWN = object()


def _initial_weights(checkpoint: str | Path):
    """What the run of ``checkpoint`` started from: a weights file or name, None (random), or :data:`_UNKNOWN`."""
    if model_file_folder(checkpoint) is not None:
        return read_model_file(checkpoint).lemevit.get("initial_weights", _UNKNOWN)
    from lemevit.io.checkpoint import read_trained_model

    return read_trained_model(checkpoint).hyper_parameters.get("init_checkpoint")


def _weights_name(weights) -> str | None:
    return None if weights is None else str(weights) if str(weights) in PRETRAINED else Path(weights).name


def _task_outputs(module, size: int) -> list[ModelOutput]:
    classes = len(module.label_names())
    if module.name == "classification":
        return [ModelOutput("logits", [-1, classes], "class scores (their softmax: the class probabilities)")]
    if module.name == "segmentation":
        return [ModelOutput("probabilities", [-1, classes, size, size], "class probabilities of each pixel (the ONNX "
                                                                         "graphs'; the PyTorch network gives their "
                                                                         "logits)")]
    if module.name == "change":
        return [ModelOutput("probabilities", [-1, classes, size, size],
                            "probabilities of no change and of change of each pixel between the two dates (the ONNX "
                            "graph's; the PyTorch network gives their logits); lemevit's maps call a pixel change "
                            f"from a change probability of {module.threshold:g}")]
    if module.name == "detection":
        return [ModelOutput("detections", [-1, -1, 7], "oriented boxes of each image: centre x, centre y, width, "
                                                       "height, angle (radians), score and class, in input pixels")]
    return [ModelOutput("panoptic", [-1, size, size], "the segment id of each pixel (0: none), each segment of one "
                                                      "of the classes listed")]


#: What each input of our tasks' networks is, by the name the ONNX graphs give it.
INPUTS = {"image": "the image", "image_a": "the first date of the pair (A, before)",
          "image_b": "the second date of the pair (B, after), on the first date's grid"}


def _task_description(module, initial, size: int | None) -> ModelDescription:
    hp = module.hparams
    size = size or getattr(module, "window", None) or hp["img_size"]
    names = module.label_names()
    architecture = hp["model"] + (f" {hp['head']}" if hp.get("head") else "")
    try:
        inputs = module.onnx_graphs()[NETWORK].inputs
    except ConfigError:  # a task without an ONNX export takes one image
        inputs = ("image",)
    return ModelDescription(
        name=f"{hp['model']} {module.name}", architecture=architecture, task=module.name, channels=hp["in_chans"],
        size=size, class_names=names, colours=module.label_colours(),
        total_parameters=sum(p.numel() for p in module.model.parameters()),
        outputs=_task_outputs(module, size), mean=list(hp["mean"]), std=list(hp["std"]),
        input_dtype=hp.get("input_dtype"), inputs={name: INPUTS[name] for name in inputs},
        pretrained=None if initial is _UNKNOWN else initial is not None,
        pretrained_source=None if initial is _UNKNOWN else _weights_name(initial))


def _deepness_output(model: DeepnessModel, description: ModelDescription) -> ModelOutput | None:
    """The output of the Deepness graph where it is not the model's own (a panoptic model's semantic branch)."""
    if description.task == "segmentation":
        return None
    names = list(model.metadata["class_names"].values())
    return ModelOutput("semantic", [-1, len(names), model.tile_size, model.tile_size],
                       f"class probabilities of each pixel of the semantic branch ({DEEPNESS_FILE}'s)",
                       task="segmentation", class_names=names, colours=list(default_palette(len(names))))


def _bare_model_file(name: str, weights: str | None, features_only: bool, in_chans: int, num_classes: int | None,
                     img_size: int | None) -> tuple[dict[str, torch.Tensor], dict[str, Any], OnnxGraph]:
    kwargs: dict[str, Any] = {"in_chans": in_chans}
    if features_only:
        kwargs["features_only"] = True
    elif num_classes is not None:
        kwargs["num_classes"] = num_classes
    model = lemevit.create_model(name, checkpoint=weights, **kwargs).eval()
    base = getattr(model, "model", model) if features_only else model
    cfg = dict(getattr(base, "pretrained_cfg", None) or {})
    size = img_size or int((cfg.get("input_size") or (3, 224, 224))[-1])
    classes = 0 if features_only else int(getattr(base, "num_classes", num_classes or 0))
    state = model.state_dict()
    if features_only and all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    config = timm_config(name, num_classes=classes, in_chans=in_chans, img_size=size, mean=cfg.get("mean"),
                         std=cfg.get("std"), interpolation=cfg.get("interpolation", "bicubic"),
                         model_args={"features_only": True} if features_only else None)
    config["lemevit"] = {"task": None, "lemevit_version": lemevit.__version__, "backbone_prefix": "",
                         "weights": str(Path(weights).resolve()) if weights else None}
    outputs = (tuple(f"features.{i}" for i in range(len(model.feature_info))) if features_only else ("logits",))
    return state, config, OnnxGraph(model, ("image",), outputs, in_chans, size)


def _bare_description(name: str, weights, graph: OnnxGraph, config: dict[str, Any]) -> ModelDescription:
    cfg, model = config["pretrained_cfg"], graph.module
    size, classes = graph.size, config["num_classes"]
    if classes:
        outputs = [ModelOutput("logits", [-1, classes], "class scores (their softmax: the class probabilities)")]
    else:
        info = model.feature_info
        outputs = [ModelOutput(output, [-1, info.channels()[i], size // info.reduction()[i],
                                        size // info.reduction()[i]], f"features at stride {info.reduction()[i]}")
                   for i, output in enumerate(graph.outputs)]
    # timm's mean and std are fractions of the full scale of 8-bit images.
    mean = [m * 255 for m in cfg["mean"]] if cfg.get("mean") else None
    std = [s * 255 for s in cfg["std"]] if cfg.get("std") else None
    source = weights if weights is not None else name if name in PRETRAINED else None
    return ModelDescription(
        name=name, architecture=config["architecture"], task="bare" if classes else "features",
        channels=graph.channels, size=size, class_names=list(cfg.get("label_names") or []),
        colours=list(default_palette(len(cfg.get("label_names") or []))),
        total_parameters=sum(p.numel() for p in model.parameters()), outputs=outputs, mean=mean, std=std,
        pretrained=source is not None, pretrained_source=_weights_name(source))


def _part_description(graph: OnnxGraph, graphs: dict[str, OnnxGraph], int8: bool = False) -> str | None:
    """What a graph of a model exported as several computes, and what runs between them."""
    if len(graphs) == 1:
        return None
    runtime = "onnxruntime-int8" if int8 else "onnxruntime"
    return (f"one of the model's {len(graphs)} graphs ({', '.join(graph.inputs)} -> {', '.join(graph.outputs)}); "
            f"what runs between and after them stays in lemevit's Python: `lemevit predict --runtime {runtime}` on "
            "this folder runs them together")


@dataclass
class GraphCheck:
    """An ONNX file written and its deviation from PyTorch (at a second size, unless ``fixed_size`` says why not)."""

    path: Path
    deviation: Deviation
    fixed_size: str | None = None
    int8: bool = False


@dataclass
class ExportResult:
    """The files written and, for ONNX, the check of each graph."""

    files: list[Path]
    checks: list[GraphCheck] = field(default_factory=list)


def export_model(output: str | Path, *, checkpoint: str | Path | None = None, model: str | None = None,
                 weights: str | Path | None = None, features_only: bool = False, in_chans: int = 3,
                 num_classes: int | None = None, img_size: int | None = None, formats: tuple[str, ...] = FORMATS[:1],
                 opset: int = 18, dtype: str = "fp32", resolution_cm: float | None = None,
                 band_names: list[str] | None = None) -> ExportResult:
    """Write the model file of a run (``checkpoint``: its ``.ckpt`` or model file) or of a bare ``model`` (random,
    or with ``weights`` of ours or of the published layout) into ``output``; with ``"onnx"`` in ``formats`` also
    ``model.onnx`` (and a detector's ``model.box_head.onnx``), each checked against PyTorch with onnxruntime at a
    size other than the export size; with ``"onnx-int8"`` also ``model.int8.onnx`` (``model.box_head.int8.onnx``), their
    dynamic int8 quantization (the deviation measured, not bounded); with ``"deepness"`` also ``model.deepness.onnx``,
    a run's class probabilities for QGIS's Deepness plugin (:mod:`lemevit.export.deepness`; ``resolution_cm`` is its
    pixel size when the run's data does not say it). ``dtype`` is that of the floating-point tensors of
    ``model.safetensors`` (``"fp16"`` halves the file; ONNX graphs are exported in float32). ``item.json`` describes
    the files as a STAC Item with the MLM extension, naming the input bands ``band_names`` when given."""
    if dtype not in WEIGHT_DTYPES:
        raise ConfigError("dtype", f"must be one of {', '.join(WEIGHT_DTYPES)}, got {dtype!r}")
    if (checkpoint is None) == (model is None):
        raise ConfigError("checkpoint", "give either `checkpoint` (a run of any task) or `model` (a bare model)")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError("format", f"unknown format(s) {unknown}; the formats are {', '.join(FORMATS)}")
    if resolution_cm is not None and "deepness" not in formats:
        raise ConfigError("resolution_cm", "is the pixel size of a Deepness model: it goes with format deepness")
    if "onnx-int8" in formats and "onnx" not in formats:
        formats = (*formats, "onnx")
    if "onnx" in formats or "deepness" in formats:
        require_onnxruntime()
    output = check_writable_folder(output)
    deepness: DeepnessModel | None = None
    if checkpoint is not None:
        if features_only or weights is not None or num_classes is not None:
            raise ConfigError("checkpoint", "a run's export takes its network as trained: `features_only`, "
                                            "`weights` and `num_classes` go with `model`")
        from lemevit.engine.eval_predict import load_task

        module = load_task(checkpoint)
        initial = _initial_weights(checkpoint)
        if "deepness" in formats:
            deepness = deepness_model(module, checkpoint, resolution_cm, img_size, opset)
        state, config = _task_model_file(module)
        if initial is not _UNKNOWN:
            config["lemevit"]["initial_weights"] = initial
        description = _task_description(module, initial, img_size)
        graphs = module.onnx_graphs() if "onnx" in formats else {}
        if graphs and img_size:
            graphs[NETWORK].size = img_size
    else:
        if "deepness" in formats:
            raise ConfigError("format", "deepness exports a run's class maps: give a run's `checkpoint`")
        state, config, graph = _bare_model_file(model, weights, features_only, in_chans, num_classes, img_size)
        description = _bare_description(model, weights, graph, config)
        graphs = {NETWORK: graph} if "onnx" in formats else {}
    if band_names is not None:
        if len(band_names) != description.channels:
            raise ConfigError("band_names", f"{len(band_names)} name(s) for a model of {description.channels} input "
                                            "band(s)")
        description.band_names = list(band_names)
    stored = {k: v.to(WEIGHT_DTYPES[dtype]) if v.is_floating_point() else v for k, v in state.items()}
    result = ExportResult(write_model_file(output, stored, config))
    assets = [ModelAsset(output / WEIGHTS_FILE, "safetensors", f"weights ({dtype}) and config.json, for lemevit "
                                                               "and timm", ("weights",))]
    for part, graph in graphs.items():
        path = export_onnx(graph, graph_file(output / "model", part), opset=opset)
        result.files.append(path)
        result.checks.append(GraphCheck(path, check_onnx(graph, path), graph.fixed_size))
        assets.append(ModelAsset(path, "onnx", f"ONNX graph of the {part}", description=_part_description(
            graph, graphs)))
        if "onnx-int8" in formats:
            quantized = quantize_onnx(path, graph_file(output / "model", part, int8=True))
            result.files.append(quantized)
            result.checks.append(GraphCheck(quantized, check_onnx(graph, quantized, tolerance=None), graph.fixed_size,
                                            int8=True))
            assets.append(ModelAsset(quantized, "onnx-int8", f"ONNX graph of the {part}, dynamic int8 quantization",
                                     description=_part_description(graph, graphs, int8=True)))
    if deepness is not None:
        semantic = _deepness_output(deepness, description)
        if semantic is not None:
            description.outputs.append(semantic)
        path, deviation = write_deepness(deepness, output / DEEPNESS_FILE)
        result.files.append(path)
        result.checks.append(GraphCheck(path, deviation, FIXED_TILE))
        assets.append(ModelAsset(path, "onnx", f"ONNX model for QGIS's Deepness plugin: class probabilities of "
                                               f"{deepness.tile_size}-pixel tiles", ("qgis-deepness",)))
    result.files.append(write_mlm_item(description, assets, output))
    return result
