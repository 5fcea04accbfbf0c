"""Oriented object detection runs: train into a run directory, evaluate a checkpoint with DOTA's protocol on
full images, predict on images of any size (DOTA Task-1 files, drawn boxes, GeoJSON for GeoTIFFs)."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from matplotlib import colormaps

from lemevit.data.detection import (
    DetectionDataModule,
    ImageLabels,
    merge_patch_detections,
    patch_windows,
    scan_detection_folder,
)
from lemevit.data.images import read_image
from lemevit.data.transforms import IMAGENET_RGB_MEAN_STD
from lemevit.io import atomic_path
from lemevit.ops.rotated import box_to_quad
from lemevit.tasks.classification_run import expand_inputs
from lemevit.tasks.detection import DetectionTask, detection_map
from lemevit.tasks.trainer import RunConfig, check_run_dir, checkpoint_task

__all__ = ["DetectionConfig", "detect_image", "evaluate", "load_task", "predict", "train"]

_GEOTIFF_SUFFIXES = (".tif", ".tiff")
# 20 distinct colours for drawn classes (matplotlib's tab20).
_PALETTE = [tuple(int(255 * c) for c in rgb[:3]) for rgb in colormaps["tab20"](np.linspace(0, 1, 20))]


@dataclass(kw_only=True)
class DetectionConfig(RunConfig):
    """Everything a detection run depends on; saved as ``RUN_DIR/config.yaml``. ``img_size`` is the side of
    the square windows the images are cut into (``overlap`` pixels shared by neighbours)."""

    task: str = "detection"
    img_size: int = 1024
    epochs: int = 12
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.05
    drop_path_rate: float = 0.1
    gradient_clip: float | None = 35.0
    overlap: int = 200
    fpn_channels: int = 256
    rpn_proposals: int = 2000
    test_proposals: int = 2000
    augment: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.task != "detection":
            raise ValueError(f"a detection config has task: detection, got {self.task!r}")


def _select(images: list[ImageLabels], root: Path, names: list[str]) -> list[ImageLabels]:
    by_name = {str(i.image.relative_to(root)): i for i in images}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise FileNotFoundError(f"{root}: images of the run's split are missing: {missing[:5]}")
    return [by_name[n] for n in names]


def _split(cfg: DetectionConfig, root: Path, images: list[ImageLabels]) -> dict[str, list[str]]:
    """Image names (relative to ``root``) for training and validation; ``split`` 1.0 validates on the
    training images (for overfitting checks and tiny sets)."""
    names = [str(i.image.relative_to(root)) for i in images]
    if cfg.split >= 1:
        return {"train": names, "val": names}
    shuffled = names[:]
    random.Random(cfg.seed).shuffle(shuffled)
    cut = min(len(names) - 1, max(1, round(cfg.split * len(names))))
    if len(names) < 2:
        raise ValueError(f"{root}: {len(names)} labelled image; a held-out split needs two (or pass --split 1.0)")
    return {"train": sorted(shuffled[:cut]), "val": sorted(shuffled[cut:])}


def _normalisation(images: list[ImageLabels]) -> tuple[int, list[float], list[float]]:
    """Band count and per-band mean/std: ImageNet's for 8-bit RGB, else measured on (a sample of) the images."""
    first = read_image(images[0].image)
    if first.shape[-1] == 3 and first.dtype == np.uint8:
        mean, std = IMAGENET_RGB_MEAN_STD
        return 3, list(mean), list(std)
    pixels = np.concatenate([read_image(i.image)[::8, ::8].reshape(-1, first.shape[-1]) for i in images[:32]])
    return first.shape[-1], pixels.mean(0).tolist(), np.maximum(pixels.std(0), 1e-6).tolist()


def train(cfg: DetectionConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train Oriented R-CNN; writes best.ckpt (best val/map50), last.ckpt, split.json, config.yaml, logs/."""
    run = Path(cfg.output)
    last = check_run_dir(run, resume)
    root = Path(cfg.data)
    class_names, images = scan_detection_folder(root)
    split_path = run / "split.json"
    if resume:
        splits = json.loads(split_path.read_text())["images"]
    else:
        splits = _split(cfg, root, images)
        with atomic_path(split_path) as tmp:
            tmp.write_text(json.dumps({"root": str(root), "class_names": class_names, "images": splits}, indent=1))
        cfg.save(run / "config.yaml")
    train_images, val_images = _select(images, root, splits["train"]), _select(images, root, splits["val"])
    bands, mean, std = _normalisation(train_images)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = DetectionDataModule(train_images, val_images, size=cfg.img_size, overlap=cfg.overlap,
                                     batch_size=cfg.batch_size, num_workers=cfg.num_workers, augment=cfg.augment,
                                     mean=mean, std=std)
    task = DetectionTask(cfg.model, num_classes=len(class_names), class_names=class_names, in_chans=bands,
                         img_size=cfg.img_size, overlap=cfg.overlap, mean=mean, std=std, lr=cfg.lr,
                         weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs,
                         drop_path_rate=cfg.drop_path_rate, fpn_channels=cfg.fpn_channels,
                         rpn_proposals=cfg.rpn_proposals, test_proposals=cfg.test_proposals,
                         init_checkpoint=cfg.init_checkpoint, seed=cfg.seed)
    trainer = cfg.trainer(monitor="val/map50", progress=progress)
    trainer.fit(task, datamodule=datamodule, ckpt_path=str(last) if resume else None)
    return run


def load_task(checkpoint: str | Path) -> DetectionTask:
    if checkpoint_task(checkpoint) != "detection":
        raise ValueError(f"{checkpoint} is not a detection checkpoint")
    # The weights come from the checkpoint itself, not from the file the run was initialised from.
    return DetectionTask.load_from_checkpoint(checkpoint, map_location="cpu", init_checkpoint=None).eval()


@torch.inference_mode()
def detect_image(task: DetectionTask, image: np.ndarray, batch_size: int = 4,
                 merge_iou: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Oriented boxes, scores and labels over a whole ``(H, W, C)`` image: detected window by window
    (``img_size`` with ``overlap``, as in training) and merged by class-wise rotated NMS."""
    hp = task.hparams
    if image.shape[-1] != hp.in_chans:
        raise ValueError(f"image has {image.shape[-1]} bands, the model expects {hp.in_chans}")
    height, width = image.shape[:2]
    size = hp.img_size
    windows = patch_windows(width, height, size, hp.overlap)
    mean = torch.tensor(hp.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(hp.std, dtype=torch.float32)[:, None, None]
    device = next(task.parameters()).device
    boxes, scores, labels = [], [], []
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        batch = torch.zeros(len(chunk), image.shape[-1], size, size)
        for k, (x0, y0) in enumerate(chunk):
            piece = image[y0:y0 + size, x0:x0 + size]
            batch[k, :, :piece.shape[0], :piece.shape[1]] = torch.from_numpy(
                np.ascontiguousarray(piece, dtype=np.float32)).permute(2, 0, 1)
        batch = (batch - mean) / std  # padding normalised too, as in training
        for det in task.detector(batch.to(device)):
            boxes.append(det["boxes"].cpu())
            scores.append(det["scores"].cpu())
            labels.append(det["labels"].cpu())
    return merge_patch_detections(boxes, scores, labels, windows, merge_iou)


def evaluate(checkpoint: str | Path, output: str | Path, data: str | Path | None = None,
             batch_size: int = 4) -> dict:
    """DOTA Task-1 mAP50 (polygon IoU 0.5, difficult objects ignored, VOC07 11-point AP) of a checkpoint on
    full images: the run's own validation images (``data`` None) or every labelled image of ``data``.
    Writes ``metrics.json`` into ``output``."""
    task = load_task(checkpoint)
    class_names = list(task.hparams.class_names)
    if data is None:
        split = json.loads((Path(checkpoint).parent / "split.json").read_text())
        root = Path(split["root"])
        _, images = scan_detection_folder(root)
        images = _select(images, root, split["images"]["val"])
    else:
        root = Path(data)
        names, images = scan_detection_folder(root)
        if names != class_names:
            raise ValueError(f"{root}: its classes {names} are not the model's {class_names}")
    detections, truths = [], []
    for labels in images:
        boxes, scores, classes = detect_image(task, read_image(labels.image), batch_size)
        detections.append({"quads": box_to_quad(boxes).numpy(), "scores": scores.numpy(), "labels": classes.numpy()})
        truths.append({"quads": labels.quads, "labels": labels.labels, "difficult": labels.difficult})
    metrics = detection_map(detections, truths, class_names)
    metrics.update({"num_images": len(images), "checkpoint": str(checkpoint), "data": str(root),
                    "window": task.hparams.img_size, "overlap": task.hparams.overlap})
    with atomic_path(Path(output) / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    return metrics


def _display(image: np.ndarray) -> np.ndarray:
    """8-bit RGB for drawing: the first three bands (or the one band repeated), stretched to 2..98 %."""
    bands = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    if bands.dtype == np.uint8:
        return np.ascontiguousarray(bands)
    low, high = np.percentile(bands, (2, 98), axis=(0, 1))
    return (np.clip((bands - low) / np.maximum(high - low, 1e-9), 0, 1) * 255).astype(np.uint8)


def _draw(image: np.ndarray, quads: np.ndarray, labels: np.ndarray, scores: np.ndarray, class_names: list[str],
          path: Path) -> None:
    from PIL import Image, ImageDraw

    picture = Image.fromarray(_display(image))
    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 600))
    for quad, label, score in zip(quads, labels, scores, strict=True):
        colour = _PALETTE[int(label) % len(_PALETTE)]
        draw.polygon([tuple(p) for p in quad.tolist()], outline=colour, width=width)
        draw.text(tuple(quad[0].tolist()), f"{class_names[label]} {score:.2f}", fill=colour)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


def _geojson(path: Path, quads: np.ndarray, labels: np.ndarray, scores: np.ndarray, class_names: list[str],
             output: Path) -> bool:
    """GeoJSON polygons in the scene's coordinate system when ``path`` is a georeferenced GeoTIFF."""
    try:
        import rasterio
    except ImportError:
        return False
    with rasterio.open(path) as src:
        if src.crs is None or src.transform.is_identity:
            return False
        transform, crs = src.transform, src.crs.to_string()
    a, b, c, d, e, f = transform[:6]  # pixel (column, row) -> scene coordinates
    x, y = quads[..., 0].astype(np.float64), quads[..., 1].astype(np.float64)
    rings = np.stack([a * x + b * y + c, d * x + e * y + f], axis=-1)
    rings = np.concatenate([rings, rings[:, :1]], axis=1).tolist()  # GeoJSON rings are closed
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                 "properties": {"class": class_names[label], "score": float(score)}}
                for ring, label, score in zip(rings, labels.tolist(), scores, strict=True)]
    collection = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": crs}},
                  "features": features}
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(collection))
    return True


def predict(checkpoint: str | Path, inputs: list[str], output: str | Path, batch_size: int = 4,
            draw_threshold: float = 0.3) -> list[dict]:
    """Detect objects in images of any size. Writes into ``output``: DOTA Task-1 files ``Task1_<class>.txt``
    (``image score x1 y1 ... x4 y4`` per line), ``<stem>.png`` with the boxes scoring at least
    ``draw_threshold`` drawn, and ``<stem>.geojson`` for georeferenced GeoTIFFs."""
    task = load_task(checkpoint)
    class_names = list(task.hparams.class_names)
    output = Path(output)
    lines: dict[str, list[str]] = {name: [] for name in class_names}
    results = []
    for path in expand_inputs(inputs):
        image = read_image(path)
        boxes, scores, labels = detect_image(task, image, batch_size)
        quads, scores, labels = box_to_quad(boxes).numpy(), scores.numpy(), labels.numpy()
        for quad, score, label in zip(quads, scores, labels, strict=True):
            lines[class_names[label]].append(f"{path.stem} {score:.4f} " + " ".join(f"{v:.1f}" for v in quad.ravel()))
        shown = scores >= draw_threshold
        _draw(image, quads[shown], labels[shown], scores[shown], class_names, output / f"{path.stem}.png")
        geo = path.suffix.lower() in _GEOTIFF_SUFFIXES and _geojson(path, quads, labels, scores, class_names,
                                                                     output / f"{path.stem}.geojson")
        results.append({"image": str(path), "detections": len(scores), "drawn": int(shown.sum()),
                        "png": str(output / f"{path.stem}.png"),
                        "geojson": str(output / f"{path.stem}.geojson") if geo else None})
    for name, rows in lines.items():
        with atomic_path(output / f"Task1_{name}.txt") as tmp:
            tmp.write_text("".join(row + "\n" for row in rows))
    return results
