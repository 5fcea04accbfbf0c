"""Semantic segmentation: UperNet or the SegFormer decoder over any backbone, trained on random crops of tiles
of any size, evaluated and predicted on whole tiles and scenes by the blended sliding window."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lemevit.config.options import option
from lemevit.data.datamodule import SeededDataModule
from lemevit.data.segmentation import (
    SEGMENTATION_LAYOUT,
    SegmentationCrops,
    SegmentationTiles,
    TilePair,
    check_pairs,
    dataset_subsets,
    is_segmentation_data,
    resolve_labels,
    scan_pairs,
    split_tiles,
)
from lemevit.data.splits import Split, missing_files
from lemevit.data.statistics import Normalisation
from lemevit.errors import ConfigError, DataError
from lemevit.inference.onnx import OnnxGraph, Probabilities
from lemevit.inference.scene import predict_scene, preview_path
from lemevit.inference.sliding_window import sliding_window_confusion
from lemevit.io.bands import list_scenes
from lemevit.io.regions import read_region
from lemevit.labels import IGNORE_INDEX, PRESETS, LabelScheme
from lemevit.losses import dice_loss
from lemevit.metrics.confusion import segmentation_metrics
from lemevit.models.segmentation import HEADS, SegmentationModel
from lemevit.tasks.base import initial_weights
from lemevit.tasks.dense import (
    CropTrainingConfig,
    SlidingWindowTask,
    WindowEvalOptions,
    WindowPredictOptions,
)
from lemevit.tasks.registry import register_task
from lemevit.viz import save_palette_png

__all__ = ["SegmentationConfig", "SegmentationPredictOptions", "SegmentationTask"]


@dataclass(kw_only=True)
class SegmentationConfig(CropTrainingConfig):
    """A segmentation run. The labels come from ``preset``, else ``class_names`` (with ``ignore_value`` and
    ``first_class_value``), else ``DATA/classes.yaml``. ``split`` is the fraction of tiles used for training
    (1.0: validate on the training tiles) unless the data has ``train/`` and ``val/`` subfolders. The
    sliding-window validation's ``window`` defaults to ``img_size``, its ``stride`` to three quarters of the
    window."""

    task: str = option("segmentation", "the task", cli=False)
    data: str = option(None, "a folder with img_dir/ and ann_dir/ (masks of the same names; train/ and val/ "
                             "subfolders, when present, are the split), or ADE20K's images/ and annotations/ "
                             "(training/ and validation/)")
    img_size: int = option(512, "side of the random training crops, in pixels")
    epochs: int = option(50, "training epochs", resumable=True)
    batch_size: int = option(8, "crops per batch and device; windows per batch at validation")
    split: float = option(0.8, "fraction of the tiles in training (1.0: validate on the training tiles)")
    lr: float = option(4e-4, "peak learning rate of AdamW")
    weight_decay: float = option(0.01, "AdamW weight decay (not on norms, biases, tokens and embeddings)")
    head: str = option("upernet", "the decoder", choices=tuple(HEADS))
    decoder_channels: int | None = option(None, "decoder width (default 512 UperNet, 256 SegFormer)")
    aux_weight: float = option(0.4, "loss weight of UperNet's auxiliary FCN head on the stride-16 map (0: none)")
    dice_weight: float = option(0.0, "weight of a Dice loss added to the cross-entropy")
    preset: str | None = option(None, "class names, palette and mask encoding of a published data set",
                                choices=tuple(PRESETS))
    class_names: list[str] | None = option(None, "class names, stored in masks as first-class-value, +1, ... (else "
                                                 "DATA/classes.yaml)", metavar="NAME")
    ignore_value: int | None = option(None, "mask value of unlabelled pixels (default 255)")
    first_class_value: int | None = option(None, "mask value of the first class (default 0)")
    crops_per_tile: int | None = option(None, "random crops per tile and epoch (default: enough to cover the tile "
                                              "once)")
    class_balance: float = option(0.0, "fraction of crops placed on a class drawn uniformly from the tile's "
                                       "classes, so that rare classes are learnt")
    cat_max_ratio: float | None = option(None, "try up to 10 positions per crop for one where no class covers this "
                                               "fraction of the labelled pixels (mmsegmentation's recipes: 0.75)")

    def __post_init__(self):
        super().__post_init__()
        self.check_positive("decoder_channels", "crops_per_tile", allow_none=True)
        self.check_non_negative("aux_weight", "dice_weight")
        self.check_fraction("class_balance", low_open=False)
        if self.cat_max_ratio is not None:
            self.check_fraction("cat_max_ratio")


@dataclass(kw_only=True)
class SegmentationPredictOptions(WindowPredictOptions):
    output: str = option(None, "OUT.tif or OUT.png for one scene (GeoTIFF in, Cloud-Optimized GeoTIFF out with its "
                               "CRS and transform, the palette, the class names and 255 as no data), a folder for "
                               "several (OUT_preview.png: the classes in colour)")


@register_task
class SegmentationTask(SlidingWindowTask):
    """Trains and evaluates a :class:`~lemevit.models.segmentation.SegmentationModel`.

    Cross-entropy ignoring unlabelled pixels, plus ``dice_weight`` times the Dice loss (which lifts classes of
    few pixels), plus ``aux_weight`` times the cross-entropy of the auxiliary head. Validation predicts each whole
    validation tile by the blended sliding window and logs ``val/miou``, ``val/oa`` and ``val/mf1`` over all of
    them.
    """

    name = "segmentation"
    description = "semantic segmentation: img_dir/ and ann_dir/ (or images/ and annotations/) tiles of any size"
    config = SegmentationConfig
    eval_options = WindowEvalOptions
    predict_options = SegmentationPredictOptions
    monitor = "val/miou"
    logged_metrics = ("miou", "oa", "mf1")
    backbone_prefix = "model.encoder."
    entry_type = TilePair
    data_layout = SEGMENTATION_LAYOUT
    holds_data = staticmethod(is_segmentation_data)
    find_unused_parameters = True

    # The settings of a run default to its config's (written once there); a checkpoint saved before a setting
    # existed (dice_weight) loads with that default too, which is what those runs did.
    def __init__(self, model: str, labels: dict, head: str = SegmentationConfig.head,
                 decoder_channels: int | None = None, aux_weight: float = SegmentationConfig.aux_weight,
                 dice_weight: float = SegmentationConfig.dice_weight, in_chans: int = 3,
                 img_size: int = SegmentationConfig.img_size, window: int | None = None, stride: int | None = None,
                 mean: Sequence[float] = (123.675, 116.28, 103.53), std: Sequence[float] = (58.395, 57.12, 57.375),
                 input_dtype: str | None = None, band_names: Sequence[str] | None = None, reflectance: bool = False,
                 optimization: dict | None = None, drop_path_rate: float = SegmentationConfig.drop_path_rate,
                 init_checkpoint: str | None = None, seed: int = SegmentationConfig.seed):
        super().__init__()
        self.save_hyperparameters()
        self.labels = LabelScheme.from_dict(labels)
        self.set_window(window, stride)
        self.model = SegmentationModel(model, head, self.labels.num_classes, in_chans=in_chans,
                                       decoder_channels=decoder_channels, aux_head=aux_weight > 0,
                                       drop_path_rate=drop_path_rate,
                                       backbone_checkpoint=initial_weights(init_checkpoint))

    # --- training ---------------------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, cfg: SegmentationConfig, progress: bool = True) -> tuple[Split, list[dict]]:
        root = Path(cfg.data)
        labels = resolve_labels(root, cfg.preset, cfg.class_names, cfg.ignore_value, cfg.first_class_value)
        subsets = split_tiles(root, cfg.split, cfg.seed)
        train = check_pairs(root, subsets["train"], labels)
        if sum(train["pixels_per_class"].values()) == 0:
            raise DataError(f"{root}: every pixel of the training masks is unlabelled (value "
                            f"{labels.ignore_value}); check the label scheme (`ignore_value`, `first_class_value`)")
        others = sorted({p for pairs in subsets.values() for p in pairs} - set(subsets["train"]), key=lambda p: p.image)
        if others:
            held_out = check_pairs(root, others, labels)
            if (held_out["bands"], held_out["dtype"]) != (train["bands"], train["dtype"]):
                raise DataError(f"{root}: the held-out images have {held_out['bands']} band(s) of {held_out['dtype']}, "
                                f"the training images {train['bands']} of {train['dtype']}; all must be alike")
        return Split(root, subsets, {"labels": labels.to_dict()}), []

    @classmethod
    def load_meta(cls, meta: dict, source: str) -> dict:
        LabelScheme.from_dict(meta.get("labels"), source)
        return meta

    @classmethod
    def training_images(cls, split: Split) -> list[Path]:
        return [split.root / p.image for p in split.subsets["train"]]

    @classmethod
    def from_config(cls, cfg: SegmentationConfig, split: Split, normalisation: Normalisation) -> SegmentationTask:
        return cls(cfg.model, split.meta["labels"], head=cfg.head, decoder_channels=cfg.decoder_channels,
                   aux_weight=cfg.aux_weight, dice_weight=cfg.dice_weight, in_chans=normalisation.bands,
                   img_size=cfg.img_size, window=cfg.window, stride=cfg.stride, mean=normalisation.mean,
                   std=normalisation.std, input_dtype=normalisation.dtype,
                   band_names=normalisation.band_names, reflectance=normalisation.reflectance,
                   optimization=cfg.optimization().to_dict(),
                   drop_path_rate=cfg.drop_path_rate, init_checkpoint=cfg.starting_weights, seed=cfg.seed)

    def datamodule(self, cfg: SegmentationConfig, split: Split) -> SeededDataModule:
        hp = self.hparams
        crops = SegmentationCrops(split.root, split.subsets["train"], self.labels, hp.img_size, hp.mean, hp.std,
                                  crops_per_tile=cfg.crops_per_tile, flip=cfg.flip, rotate90=cfg.rotate90,
                                  class_balance=cfg.class_balance, scale_range=cfg.scale_range,
                                  cat_max_ratio=cfg.cat_max_ratio, photometric=cfg.photometric)
        evaluation = {name: self.evaluation_dataset(split.root, split.subsets[name])
                      for name in ("val", "test") if split.subsets.get(name)}
        self.inference_batch_size = cfg.batch_size
        return SeededDataModule(crops, evaluation, cfg.batch_size, cfg.num_workers, cfg.seed, eval_batch_size=1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self.model(x)
        logits, aux = out if isinstance(out, tuple) else (out, None)
        parts = {"ce": F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX)}
        if self.hparams.dice_weight:
            parts["dice"] = self.hparams.dice_weight * dice_loss(logits, y)
        if aux is not None:
            parts["aux"] = self.hparams.aux_weight * F.cross_entropy(aux, y, ignore_index=IGNORE_INDEX)
        loss = sum(parts.values())
        self.log_loss(loss, x.shape[0])
        return loss

    # --- evaluation -------------------------------------------------------------------------------------------
    def evaluation_dataset(self, root: Path, items: Sequence[TilePair]) -> Dataset:
        hp = self.hparams
        return SegmentationTiles(root, items, self.labels, hp.mean, hp.std)

    def run_meta(self) -> dict:
        return {"labels": dict(self.hparams.labels)}

    def evaluation_items(self, data: Path | None, split: Split | None) -> tuple[Path, list[TilePair]]:
        if data is None:
            missing = missing_files(split.root, [p.image for p in split.evaluation])
            if missing:
                raise DataError(f"{len(missing)} held-out tile(s) of the run are gone, e.g. {missing[0]}")
            return split.root, list(split.evaluation)
        subsets = dataset_subsets(data)
        if subsets and "val" not in subsets:
            raise DataError(f"{data} has the subsets {subsets} but no val/ (ADE20K: validation/) to evaluate on")
        pairs = scan_pairs(data, "val" if subsets else None)
        first = read_region(Path(data) / pairs[0].image, 0, 0, 1, 1)
        self.check_input(Path(data) / pairs[0].image, first.shape[-1], first.dtype.name)
        return Path(data), pairs

    def evaluation_records(self, batch) -> list[tuple[int, torch.Tensor]]:
        index, image, target = batch
        confusion = sliding_window_confusion(self.window_predictor(self.model), image[0], target[0],
                                             self.labels.num_classes, self.window, self.stride,
                                             self.inference_batch_size)
        return [(int(index[0]), confusion)]

    def summarize(self, records: list[torch.Tensor]) -> dict:
        metrics = segmentation_metrics(torch.stack(records).sum(dim=0), self.labels.class_names)
        metrics.update({"num_tiles": len(records), "window": self.window, "stride": self.stride})
        return metrics

    def confusion_title(self, metrics: dict) -> str:
        return f"OA {metrics['oa']:.1%}, mIoU {metrics['miou']:.1%} on {metrics['num_pixels']:,} pixels"

    def describe(self, metrics: dict) -> str:
        return (f"OA {metrics['oa']:.2%}  mIoU {metrics['miou']:.2%}  mF1 {metrics['mf1']:.2%}  on "
                f"{metrics['num_tiles']} tiles ({metrics['num_pixels']:,} labelled pixels)")

    def label_names(self) -> list[str]:
        return list(self.labels.class_names)

    def onnx_graph(self) -> OnnxGraph:
        # UPerNet pools its deepest map into 1, 2, 3 and 6 bins: adaptive pooling has no ONNX form for a size
        # unknown at export, so its graph keeps the window's size.
        fixed = "UPerNet's pyramid pooling" if self.hparams.head == "upernet" else None
        return OnnxGraph(Probabilities(self.model), ("image",), ("probabilities",), self.hparams.in_chans,
                         self.window, fixed_size=fixed)

    def label_colours(self) -> list[tuple[int, int, int]]:
        return list(self.labels.palette)

    def class_probabilities(self) -> tuple[torch.nn.Module, list[str]]:
        return Probabilities(self.model), self.label_names()

    # --- prediction -------------------------------------------------------------------------------------------
    def check_prediction(self, options: SegmentationPredictOptions) -> None:
        if not options.inputs:
            raise ConfigError("inputs", "give the scenes to predict (files, folders or glob patterns)")
        self._scenes = [self.scene_bands(scene) for scene in list_scenes(options.inputs)]
        self._outputs = self.map_outputs(self._scenes, Path(options.output))

    def prediction_dataset(self, options: SegmentationPredictOptions) -> Dataset:
        return self.pending_jobs(list(zip(self._scenes, self._outputs, strict=True)), options)

    def predict_step(self, batch, batch_idx: int) -> None:
        index, scene, output = batch
        self.predict_claimed(index, output, lambda: self._predict_or_skip(scene, output))

    def _predict_or_skip(self, scene: Path, output: Path) -> dict:
        try:
            return self.predict_map([scene], output)
        except DataError as e:
            if not self.skip_bad:
                raise
            return {"scene": str(scene), "error": str(e)}

    def predict_map(self, scenes: Sequence[Path | str], output: Path) -> dict:
        model_seconds = self.model_seconds
        names = dict(enumerate(self.labels.class_names))
        probabilities = self.probability_output(output, self.labels.class_names)
        # No class takes the ignore index (at most IGNORE_INDEX - 1 classes): it is the map's no-data value.
        result = predict_scene(self.window_predictor(self.model), scenes, output, self.hparams.mean, self.hparams.std,
                               self.labels.palette, window=self.window, stride=self.stride,
                               batch_size=self.inference_batch_size, progress=self.show_progress,
                               expected_dtype=self.hparams.get("input_dtype"), value_names=names, nodata=IGNORE_INDEX,
                               probabilities=probabilities)
        preview = None
        if self.write_preview:
            preview = preview_path(output)
            save_palette_png(result.small_map, self.labels.palette, preview)
        return {"output": str(output), "preview": str(preview) if preview else None,
                "probabilities": str(probabilities.path) if probabilities else None,
                "vector": self.write_vectors(output, names), "height": result.height, "width": result.width,
                "html": self.write_page(output, result, "classes", dict(enumerate(self.labels.palette[:len(names)])),
                                        names, ["scene"]),
                "class_pixels": result.value_pixels[:self.labels.num_classes].tolist(),
                "no_data_pixels": result.no_data_pixels,
                "model_seconds": self.model_seconds - model_seconds}

    def finish_prediction(self, records: list[dict], options: SegmentationPredictOptions) -> list[str]:
        return [f"skipped {r['scene']}: {r['error']}" if "error" in r else
                f"wrote {r['output']}: {r['width']}x{r['height']} class map" + self.no_data_left_out(r)
                + self.companions_written(r)
                for r in records if "error" in r or "height" in r] + [self.prediction_summary(records)]
