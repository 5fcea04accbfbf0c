"""Semantic segmentation runs: train into a run directory, evaluate a checkpoint on whole tiles, predict
whole scenes (see :mod:`lemevit.predict_scene`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import torch

from lemevit.data import band_normalisation
from lemevit.data.segmentation import (
    PRESETS,
    LabelScheme,
    SegmentationDataModule,
    SegmentationTiles,
    TilePair,
    check_pairs,
    dataset_subsets,
    load_tile_split,
    resolve_labels,
    save_tile_split,
    scan_pairs,
    split_tiles,
)
from lemevit.io import atomic_path
from lemevit.models.segmentation import HEADS
from lemevit.predict_scene import predict_scene
from lemevit.tasks.classification_run import expand_inputs, save_confusion_png
from lemevit.tasks.segmentation import SegmentationTask, segmentation_metrics, tile_confusion
from lemevit.tasks.trainer import RunConfig, check_run_dir, checkpoint_task

__all__ = ["SegTrainConfig", "evaluate", "load_task", "predict", "train"]


@dataclass(kw_only=True)
class SegTrainConfig(RunConfig):
    """Everything a segmentation run depends on; saved as ``RUN_DIR/config.yaml``.

    The labels come from ``preset``, else ``class_names`` (with ``ignore_value`` and ``first_class_value``),
    else ``DATA/classes.yaml``. ``split`` is the fraction of tiles used for training (1.0: validate on the
    training tiles) unless the data has ``train/`` and ``val/`` subfolders. ``window`` and ``stride`` of the
    sliding-window evaluation default to ``img_size`` and three quarters of it.
    """

    task: str = "segmentation"
    img_size: int = 512
    epochs: int = 50
    batch_size: int = 8
    lr: float = 4e-4
    weight_decay: float = 0.01
    drop_path_rate: float = 0.1
    gradient_clip: float | None = None
    head: str = "upernet"
    decoder_channels: int | None = None
    aux_weight: float = 0.4
    dice_weight: float = 0.0
    preset: str | None = None
    class_names: list[str] | None = None
    ignore_value: int | None = None
    first_class_value: int | None = None
    crops_per_tile: int | None = None
    class_balance: float = 0.0
    window: int | None = None
    stride: int | None = None
    flip: bool = True
    rotate90: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.task != "segmentation":
            raise ValueError(f"a segmentation config has task: segmentation, got {self.task!r}")
        if self.head not in HEADS:
            raise ValueError(f"--head must be one of {sorted(HEADS)}, got {self.head!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {self.preset!r}")


def train(cfg: SegTrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train a segmentation model; writes best.ckpt (best val/miou), last.ckpt, split.json, config.yaml and logs/
    into ``cfg.output``."""
    run = Path(cfg.output)
    last = check_run_dir(run, resume)
    root = Path(cfg.data)
    split_path = run / "split.json"
    if resume:
        _, labels, splits = load_tile_split(split_path)
    else:
        labels = resolve_labels(root, cfg.preset, cfg.class_names, cfg.ignore_value, cfg.first_class_value)
        splits = split_tiles(root, cfg.split, cfg.seed)
        check_pairs(root, sorted({p for pairs in splits.values() for p in pairs}, key=lambda p: p.image), labels)
        save_tile_split(split_path, root, labels, splits)
        cfg.save(run / "config.yaml")

    bands, mean, std = band_normalisation(root, [p.image for p in splits["train"]])
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = SegmentationDataModule(
        root, labels, splits, img_size=cfg.img_size, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
        mean=mean, std=std, seed=cfg.seed,
        augment={"flip": cfg.flip, "rotate90": cfg.rotate90, "crops_per_tile": cfg.crops_per_tile,
                 "class_balance": cfg.class_balance})
    task = SegmentationTask(
        cfg.model, labels.to_dict(), head=cfg.head, decoder_channels=cfg.decoder_channels, aux_weight=cfg.aux_weight,
        dice_weight=cfg.dice_weight, in_chans=bands, img_size=cfg.img_size, window=cfg.window, stride=cfg.stride,
        mean=mean, std=std, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_epochs=cfg.warmup_epochs,
        drop_path_rate=cfg.drop_path_rate, init_checkpoint=cfg.init_checkpoint, seed=cfg.seed)
    trainer = cfg.trainer(monitor="val/miou", progress=progress, find_unused_parameters=True)
    trainer.fit(task, datamodule=datamodule, ckpt_path=str(last) if resume else None)
    return run


def load_task(checkpoint: str | Path) -> SegmentationTask:
    if checkpoint_task(checkpoint) != "segmentation":
        raise ValueError(f"{checkpoint} is not a segmentation checkpoint")
    # The weights come from the checkpoint itself, not from the file the run was initialised from.
    return SegmentationTask.load_from_checkpoint(checkpoint, map_location="cpu", init_checkpoint=None).eval()


def _evaluation_pairs(checkpoint: Path, data: str | Path | None) -> tuple[Path, list[TilePair]]:
    """The run's own validation (or test) tiles, or every pair of ``data`` (its ``val/`` subset if it has one)."""
    if data is None:
        root, _, splits = load_tile_split(checkpoint.parent / "split.json")
        return Path(root), splits.get("test") or splits["val"]
    subsets = dataset_subsets(data)
    if subsets and "val" not in subsets:
        raise ValueError(f"{Path(data) / 'img_dir'} has subfolders {subsets} but no val/ to evaluate on")
    return Path(data), scan_pairs(data, "val" if subsets else None)


@torch.inference_mode()
def evaluate(checkpoint: str | Path, output: str | Path, data: str | Path | None = None, window: int | None = None,
             stride: int | None = None, batch_size: int = 8, progress: bool = True) -> dict:
    """Evaluate a run's checkpoint on whole tiles by the blended sliding window (default: the run's window and
    stride): on its own validation split (``data`` None) or on every image/mask pair of ``data``, decoded
    with the run's label scheme. Writes metrics.json (oa, miou, mf1, per_class, confusion_matrix) and
    confusion_matrix.png into ``output``."""
    checkpoint = Path(checkpoint)
    task = load_task(checkpoint)
    labels = task.labels
    window, stride = window or task.window, stride or task.stride
    root, pairs = _evaluation_pairs(checkpoint, data)
    tiles = SegmentationTiles(root, pairs, labels, task.hparams.mean, task.hparams.std)
    confusion = torch.zeros(labels.num_classes, labels.num_classes, dtype=torch.long)
    from tqdm.auto import tqdm

    for index in tqdm(range(len(tiles)), desc="evaluating", unit="tile", disable=not progress):
        image, target = tiles[index]
        if image.shape[0] != task.hparams.in_chans:
            raise ValueError(f"{root / pairs[index].image} has {image.shape[0]} band(s), the model expects "
                             f"{task.hparams.in_chans}")
        confusion += tile_confusion(task.net, image, target, labels.num_classes, window, stride, batch_size)
    metrics = segmentation_metrics(confusion, labels.class_names)
    metrics.update({"num_tiles": len(pairs), "window": window, "stride": stride, "checkpoint": str(checkpoint),
                    "data": str(root)})
    output = Path(output)
    with atomic_path(output / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    save_confusion_png(metrics, output / "confusion_matrix.png",
                       f"OA {metrics['oa']:.1%}, mIoU {metrics['miou']:.1%} on {metrics['num_pixels']:,} pixels")
    return metrics


def _scene_outputs(scenes: list[Path], output: Path) -> list[Path]:
    """One scene to a named file; several (or a folder) to ``output/<stem>.tif|.png``, keeping the format."""
    if len(scenes) == 1 and output.suffix.lower() in (".tif", ".tiff", ".png"):
        return [output]
    if output.suffix:
        raise ValueError(f"{len(scenes)} scenes: --output must be a folder, got {output}")
    stems = [s.stem for s in scenes]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise ValueError(f"scenes named {repeated} appear more than once; predict them into separate folders")
    return [output / (s.stem + (".tif" if s.suffix.lower() in (".tif", ".tiff") else ".png")) for s in scenes]


def predict(checkpoint: str | Path, inputs: list[str], output: str | Path, window: int | None = None,
            stride: int | None = None, batch_size: int = 8, preview: bool = True, progress: bool = True
            ) -> list[dict]:
    """Class-index maps of whole scenes (see :func:`lemevit.predict_scene.predict_scene`): one scene into the
    file ``output`` (.tif or .png), several into the folder ``output``. Default window and stride: the run's."""
    task = load_task(checkpoint)
    scenes = expand_inputs(inputs)
    targets = _scene_outputs(scenes, Path(output))
    labels: LabelScheme = task.labels
    return [predict_scene(task.net, scene, target, task.hparams.mean, task.hparams.std, labels.palette,
                          window=window or task.window, stride=stride or task.stride, batch_size=batch_size,
                          preview=preview, progress=progress)
            for scene, target in zip(scenes, targets, strict=True)]
