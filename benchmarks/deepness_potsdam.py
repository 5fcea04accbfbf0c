"""A Deepness export run through the QGIS plugin's own model classes, against ``lemevit predict``, on the shipped
Potsdam tile.

The plugin's model classes (``deepness.processing.models``: ``ModelBase``, ``Segmentor``, ``preprocessing_utils``,
and the two helpers they import) need only numpy and onnxruntime; this script imports them from a folder outside
the repository, which nothing here ships:

    R=a clone of PUTvision/qgis-plugin-deepness; D=/tmp/deepness
    for f in processing/models/model_base.py processing/models/segmentor.py processing/models/preprocessing_utils.py \
             common/lazy_package_loader.py common/processing_parameters/standardization_parameters.py; do
        mkdir -p $D/deepness/$(dirname $f); git -C $R show HEAD:src/deepness/$f > $D/deepness/$f; done
    for d in . processing processing/models common common/processing_parameters; do
        touch $D/deepness/$d/__init__.py; done
    python benchmarks/deepness_potsdam.py --deepness $D --plugin-commit $(git -C $R rev-parse HEAD) \
        --work runs/deepness --plugin-python /tmp/ort117/bin/python  # optional, see below

Trains a small segmentation run on the tile (``lemevit train``), exports it (``lemevit export --format deepness``),
predicts the tile (``lemevit predict``), then loads the export with the plugin's ``Segmentor`` and runs it on the
tile's raw pixels cut into tiles as the plugin's map processor cuts a layer (tile size and overlap from the model's
metadata, the grid extended right and down to whole tiles, each tile's centre kept, class = argmax as with
``seg_thresh`` 0). Writes results/deepness_potsdam.json: the agreement of the plugin's class map with predict's over
the whole tile, and on one window alone (the plugin's probabilities of its first tile against predict's of the same
crop, where both run the network once on the same pixels); with ``--plugin-python``, also the difference on the
first tile when the plugin's classes run on onnxruntime 1.17.0, the newest the plugin installs (its
requirements.txt: ``onnxruntime-gpu>=1.12.1,<=1.17.0``), e.g. a virtual environment made with
``python -m venv /tmp/ort117 && /tmp/ort117/bin/pip install "numpy<2" onnxruntime==1.17.0``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from importlib.resources import files
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from PIL import Image

from lemevit.bench import machine_description
from lemevit.cli import main as lemevit
from lemevit.io import atomic_path

HERE = Path(__file__).parent
POTSDAM = Path(str(files("lemevit") / "demo_data" / "potsdam_seg"))
TILE = POTSDAM / "img_dir" / "2_10_0_0_512_512.png"
TRAIN = ["--model", "lemevit_tiny", "--img-size", "128", "--window", "128", "--epochs", "4", "--batch-size", "4",
         "--crops-per-tile", "16", "--decoder-channels", "32", "--split", "1.0", "--num-workers", "0",
         "--accelerator", "cpu"]


def run(*args: str) -> None:
    if lemevit(list(args)) != 0:
        sys.exit(f"failed: lemevit {' '.join(args)}")


def tile_grid(size: int, tile: int, stride: int) -> list[int]:
    """The first row (or column) of each tile along a side of ``size`` pixels, the grid grown to whole tiles."""
    count = 1 if size <= tile else -(-(size - tile) // stride) + 1
    return [i * stride for i in range(count)]


def tile_coverage(shape: tuple[int, int], tile: int, overlap_percent: int) -> np.ndarray:
    """How many of the plugin's tiles hold each pixel (its tiles and predict's windows are the same here)."""
    stride = tile - int(tile * overlap_percent / 100 * 2) // 2
    count = np.zeros(shape, np.int64)
    for y in tile_grid(shape[0], tile, stride):
        for x in tile_grid(shape[1], tile, stride):
            count[y:y + tile, x:x + tile] += 1
    return count


def plugin_class_map(model, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The class map the plugin's segmentation map processor makes of ``image`` (H, W, C) with ``model`` (a loaded
    ``Segmentor``), and the probabilities of its first tile. Tiles of the model's size overlap by its
    ``tiles_overlap`` percent; the grid starts at the top left and grows right and down to whole tiles (padding
    with zeros, where QGIS reads no data); of each tile its centre is kept (the half overlap at each inner edge is
    left to the neighbour), the layer's outer edges from the tiles touching them."""
    tile = model.get_metadata_tile_size()
    overlap = int(tile * model.get_metadata_tiles_overlap() / 100 * 2) // 2
    stride = tile - overlap
    height, width = image.shape[:2]
    rows, cols = len(tile_grid(height, tile, stride)), len(tile_grid(width, tile, stride))
    padded = np.zeros(((rows - 1) * stride + tile, (cols - 1) * stride + tile, image.shape[2]), image.dtype)
    padded[:height, :width] = image
    classes = np.zeros(padded.shape[:2], np.int64)
    half = overlap // 2
    first = None
    for r in range(rows):
        for c in range(cols):
            y, x = r * stride, c * stride
            (probabilities,) = model.process(padded[None, y:y + tile, x:x + tile])
            if first is None:
                first = probabilities[0]
            labels = probabilities[0].argmax(axis=0)
            top, left = (0 if r == 0 else half), (0 if c == 0 else half)
            bottom, right = (tile if r == rows - 1 else tile - half), (tile if c == cols - 1 else tile - half)
            classes[y + top:y + bottom, x + left:x + right] = labels[top:bottom, left:right]
    return classes[:height, :width], first


#: Run by ``--plugin-python``: the plugin's Segmentor on one tile, in another Python (with the onnxruntime the plugin
#: installs), its probabilities saved for this script to compare.
_OTHER_RUNTIME = """
import sys, warnings
import numpy as np
import onnxruntime
sys.path.insert(0, sys.argv[1])
warnings.simplefilter("ignore")
from deepness.processing.models.segmentor import Segmentor
(probabilities,) = Segmentor(sys.argv[2]).process(np.load(sys.argv[3]))
np.save(sys.argv[4], probabilities)
print(onnxruntime.__version__)
"""


def read_probabilities(path: Path) -> np.ndarray:
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            return ds.read().astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--deepness", type=Path, required=True, help="folder holding the plugin's `deepness` package")
    p.add_argument("--plugin-commit", required=True, help="the plugin's commit those files come from")
    p.add_argument("--work", type=Path, required=True, help="folder for the run, the export and the predictions")
    p.add_argument("--plugin-python", help="also run the plugin's Segmentor on the first tile with this Python "
                                           "(e.g. of a virtual environment with the onnxruntime the plugin installs)")
    args = p.parse_args()
    sys.path.insert(0, str(args.deepness))
    from deepness.processing.models.model_base import ModelBase
    from deepness.processing.models.segmentor import Segmentor

    work = args.work
    train_seconds = None  # the run of an earlier invocation is reused
    if not (work / "run" / "best.ckpt").is_file():
        started = time.perf_counter()
        run("train", "--task", "segmentation", "--data", str(POTSDAM), "--preset", "potsdam", "--output",
            str(work / "run"), *TRAIN)
        train_seconds = round(time.perf_counter() - started, 1)
    run("export", "--checkpoint", str(work / "run" / "best.ckpt"), "--format", "deepness", "--resolution-cm", "5",
        "--output", str(work / "qgis"))
    onnx_file = work / "qgis" / "model.deepness.onnx"
    run("predict", "--checkpoint", str(work / "run" / "best.ckpt"), str(TILE), "--output",
        str(work / "predict" / "tile.png"), "--probabilities", "--probabilities-dtype", "float16", "--no-preview",
        "--overwrite")
    predicted = np.asarray(Image.open(work / "predict" / "tile.png")).astype(np.int64)

    model_type = ModelBase.get_model_type_from_metadata(str(onnx_file))
    with warnings.catch_warnings():  # the plugin asks for CUDA first; this machine has none
        warnings.simplefilter("ignore", UserWarning)
        model = Segmentor(str(onnx_file))
    image = np.asarray(Image.open(TILE).convert("RGB"))
    plugin_started = time.perf_counter()
    classes, first_tile = plugin_class_map(model, image)
    plugin_seconds = time.perf_counter() - plugin_started

    size = model.get_metadata_tile_size()
    alone = tile_coverage(image.shape[:2], size, model.get_metadata_tiles_overlap()) == 1
    Image.fromarray(image[:size, :size]).save(work / "first_tile.png")
    run("predict", "--checkpoint", str(work / "run" / "best.ckpt"), str(work / "first_tile.png"), "--output",
        str(work / "predict" / "first_tile.png"), "--probabilities", "--probabilities-dtype", "float16",
        "--no-preview", "--overwrite")
    window = read_probabilities(work / "predict" / "first_tile_probabilities.tif")

    other = None
    if args.plugin_python:
        np.save(work / "first_tile.npy", image[None, :size, :size])
        done = subprocess.run([args.plugin_python, "-c", _OTHER_RUNTIME, str(args.deepness), str(onnx_file),
                               str(work / "first_tile.npy"), str(work / "first_tile_other.npy")],
                              capture_output=True, text=True, check=True)
        theirs = np.load(work / "first_tile_other.npy")[0]
        other = {"onnxruntime": done.stdout.strip().splitlines()[-1],
                 "largest_probability_difference": float(np.abs(theirs - first_tile).max())}
    record = {
        "what": "lemevit export --format deepness run by the Deepness plugin's own Segmentor on the shipped Potsdam "
                "tile (512x512, 8-bit RGB), against lemevit predict of the same run",
        "plugin": {"repository": "PUTvision/qgis-plugin-deepness", "commit": args.plugin_commit,
                   "model_type_from_metadata": model_type, "input_shape": list(model.get_input_shape()),
                   "output_channels": model.get_number_of_output_channels(), "class_names": model.outputs_names[0],
                   "resolution_cm": model.get_metadata_resolution(), "tile_size": size,
                   "tiles_overlap_percent": model.get_metadata_tiles_overlap(),
                   "seg_thresh": model.get_metadata_segmentation_threshold()},
        "training": " ".join(TRAIN),
        "whole_tile": {"pixels": int(classes.size),
                       "class_map_agreement": float((classes == predicted).mean()),
                       "agreement_where_one_tile_covers": float((classes == predicted)[alone].mean()),
                       "agreement_in_the_overlaps": float((classes == predicted)[~alone].mean()),
                       "share_in_the_overlaps": float((~alone).mean()),
                       "note": "the plugin keeps each tile's centre; predict blends overlapping windows"},
        "one_window": {"pixels": int(first_tile[0].size),
                       "class_map_agreement": float((first_tile.argmax(axis=0) == window.argmax(axis=0)).mean()),
                       "largest_probability_difference": float(np.abs(first_tile - window).max()),
                       "note": "predict stores float16 probabilities (steps of about 5e-4 near 1)"},
        "first_tile_on_another_onnxruntime": other,
        "seconds": {"train": train_seconds, "plugin_whole_tile": round(plugin_seconds, 2)},
        "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "machine": machine_description(),
        "under_load": "a shared 2-core machine, other jobs running: times are indicative only",
    }
    output = HERE / "results" / "deepness_potsdam.json"
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: record[k] for k in ("whole_tile", "one_window")}, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
