"""QGIS through the Deepness plugin (PUTvision/qgis-plugin-deepness): a run's per-pixel class probabilities as one
ONNX graph of fixed tile size, carrying in its ``metadata_props`` what the plugin reads to set itself up.

The plugin's contract, as its model classes implement it: one NCHW float input, whose height and width are the tile
size (the batch may be dynamic); for a ``Segmentor``, an output ``(B, K, H, W)`` of class probabilities, of which it
keeps the largest per pixel (above ``seg_thresh`` when that is not 0); metadata values JSON-encoded. Each tile is read
from the layer resampled to ``resolution`` (cm per pixel), multiplied by 1/255 whatever the raster's data type, then
standardised as ``(x - standardization_mean) / standardization_std`` per band. A run normalises raw values as
``(raw - mean) / std``, which is the plugin's arithmetic with ``mean / 255`` and ``std / 255``: this holds for 8-bit,
16-bit and float rasters alike, as long as the plugin can read the raster's type and no std is zero.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from lemevit.errors import ConfigError, DataError, RunError
from lemevit.inference.onnx import Deviation, OnnxGraph, check_onnx, export_onnx, require_onnxruntime
from lemevit.io.atomic import atomic_path

__all__ = ["DEEPNESS_FILE", "DeepnessModel", "data_resolution_cm", "deepness_model", "write_deepness"]

DEEPNESS_FILE = "model.deepness.onnx"
#: The raster data types the plugin reads a tile of (QGIS's Byte, UInt16, Int16, UInt32, Int32, Float32, Float64).
READABLE_DTYPES = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
#: What the plugin multiplies every tile by before it standardises it.
PLUGIN_SCALE = 1 / 255
#: The newest opset that onnxruntime 1.17, the newest version the plugin installs, reads.
PLUGIN_MAX_OPSET = 20
#: Why the graph's height and width are fixed.
FIXED_TILE = "Deepness takes its tile size from the input's shape"


@dataclass
class DeepnessModel:
    """What a Deepness export holds: ``network`` (normalised images -> class probabilities) at ``tile_size``, the
    plugin's ``metadata`` (plain values, JSON-encoded when written), and the ONNX ``opset`` to write it in."""

    network: nn.Module
    channels: int
    tile_size: int
    metadata: dict[str, Any]
    opset: int = 18

    def graph(self) -> OnnxGraph:
        return OnnxGraph(self.network, ("image",), ("probabilities",), self.channels, self.tile_size,
                         fixed_size=FIXED_TILE)


def standardization(mean: list[float], std: list[float], dtype: str | None) -> tuple[list[float], list[float]]:
    """The plugin's ``standardization_mean`` and ``standardization_std`` that reproduce ``(raw - mean) / std`` on
    rasters of ``dtype`` (None: 8-bit) after its 1/255 scaling; refuses what it cannot read or divide by."""
    dtype = dtype or "uint8"
    if dtype not in READABLE_DTYPES:
        raise ConfigError("checkpoint", f"the run's images are {dtype}; Deepness reads rasters of "
                                        f"{', '.join(READABLE_DTYPES)} only")
    if not all(math.isfinite(s) and s > 0 for s in std) or not all(math.isfinite(m) for m in mean):
        raise ConfigError("checkpoint", f"the run's normalisation (mean {list(mean)}, std {list(std)}) needs finite "
                                        "values and positive stds: Deepness divides by them")
    return [m * PLUGIN_SCALE for m in mean], [s * PLUGIN_SCALE for s in std]


def data_resolution_cm(checkpoint: str | Path, module) -> float | None:
    """The ground size in cm of a pixel of the run's first training image, when the run's split is beside
    ``checkpoint`` and that image is georeferenced in a projected CRS; else None."""
    from lemevit.engine.run import RunDirectory
    from lemevit.io.raster import RasterScene

    checkpoint = Path(checkpoint)
    run = RunDirectory(checkpoint.parent)
    if checkpoint.suffix.lower() != ".ckpt" or not run.split_file.is_file():
        return None
    try:
        images = type(module).training_images(run.read_split(module.name))
        scene = RasterScene(images[0])
    except (DataError, RunError, IndexError, OSError):
        return None  # the run's data is not at hand: the caller asks for the resolution
    try:
        if scene.crs is None or not scene.crs.is_projected or scene.transform.b or scene.transform.d:
            return None
        x, y = abs(scene.transform.a), abs(scene.transform.e)
        if not math.isclose(x, y, rel_tol=1e-6):
            return None  # Deepness takes one resolution for both axes
        return x * scene.crs.linear_units_factor[1] * 100
    finally:
        scene.close()


def deepness_model(module, checkpoint: str | Path, resolution_cm: float | None = None,
                   tile_size: int | None = None, opset: int = 18) -> DeepnessModel:
    """The Deepness export of the task ``module`` loaded from ``checkpoint``: its class probabilities at
    ``tile_size`` (default the run's window) with the run's overlap, normalisation and classes, the pixel size
    ``resolution_cm`` (default that of the run's georeferenced data), in ONNX ``opset``. Everything is checked here,
    before any file is written."""
    if opset > PLUGIN_MAX_OPSET:
        raise ConfigError("opset", f"Deepness installs onnxruntime 1.17 at most, which reads opsets up to "
                                   f"{PLUGIN_MAX_OPSET}; got {opset}")
    network, names = module.class_probabilities()
    hp = module.hparams
    mean, std = standardization(list(hp["mean"]), list(hp["std"]), hp.get("input_dtype"))
    if resolution_cm is None:
        resolution_cm = data_resolution_cm(checkpoint, module)
        if resolution_cm is None:
            raise ConfigError("resolution_cm", "give the ground size of a pixel in cm: the run's training images are "
                                               "not at hand or not georeferenced in a projected CRS")
    elif not (math.isfinite(resolution_cm) and resolution_cm > 0):
        raise ConfigError("resolution_cm", f"must be a positive number of cm per pixel, got {resolution_cm}")
    window, stride = module.window, module.stride
    tile = tile_size or window
    metadata = {
        "model_type": "Segmentor",
        "class_names": {str(i): name for i, name in enumerate(names)},
        "resolution": round(float(resolution_cm), 6),
        "tile_size": tile,
        # The run's sliding-window overlap, as a share of the tile the plugin can take.
        "tiles_overlap": round(100 * (window - stride) / window),
        # 0: no threshold, every pixel gets its most probable class, as `lemevit predict` gives it.
        "seg_thresh": 0.0,
        "seg_small_segment": 0,
        "standardization_mean": mean,
        "standardization_std": std,
    }
    return DeepnessModel(network.eval(), int(hp["in_chans"]), tile, metadata, opset)


def write_deepness(model: DeepnessModel, path: str | Path) -> tuple[Path, Deviation]:
    """Write ``model`` to ``path`` (atomically) with its metadata, after checking the graph against PyTorch with
    onnxruntime; returns the path and the deviation."""
    require_onnxruntime()
    import onnx

    path = Path(path)
    graph = model.graph()
    with atomic_path(path) as tmp:
        export_onnx(graph, tmp, opset=model.opset)
        proto = onnx.load(str(tmp))
        # The plugin counts the classes from the output's declared shape, which the exporter leaves symbolic.
        dims = proto.graph.output[0].type.tensor_type.shape.dim
        for dim, value in zip(dims, ("batch", len(model.metadata["class_names"]), model.tile_size, model.tile_size),
                              strict=True):
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = value
        for key, value in model.metadata.items():
            proto.metadata_props.add(key=key, value=json.dumps(value))
        onnx.save(proto, str(tmp))
        deviation = check_onnx(graph, tmp)
    return path, deviation
