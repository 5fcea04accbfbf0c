"""Panoptic segmentation: Panoptic FPN over any backbone, trained on random crops of a COCO panoptic data set (as
``lemevit prepare panoptic`` derives one from a semantic-segmentation set), evaluated with PQ, SQ and RQ on whole
images and predicting panoptic PNGs (COCO's id encoding) with their segments, window by window over images of any
size (:mod:`lemevit.inference.panoptic`)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from torch.utils.data import Dataset

from lemevit.config.options import EvalOptions, InferenceOptions, Options, PredictOptions, option
from lemevit.data.datamodule import SeededDataModule
from lemevit.data.files import BadFile, PredictionFiles
from lemevit.data.panoptic import (
    ANNOTATIONS_FILE,
    IMAGES_DIR,
    PANOPTIC_LAYOUT,
    PanopticCrops,
    PanopticImage,
    PanopticSet,
    PanopticTiles,
    check_panoptic,
    is_panoptic_data,
    read_panoptic,
    segment_extents,
    write_segment_ids,
)
from lemevit.data.splits import SUBSETS, Split, split_items
from lemevit.data.statistics import Normalisation
from lemevit.data.transforms import fill_no_data, normalised_tensor
from lemevit.errors import ConfigError, DataError
from lemevit.inference.onnx import Probabilities
from lemevit.inference.panoptic import Fusion, predict_panoptic
from lemevit.io import atomic_path
from lemevit.io.images import TIFF_EXTENSIONS, optional_rasterio, read_image
from lemevit.io.paths import check_distinct_names, check_outputs_spare_inputs, check_writable_folder, list_images
from lemevit.io.raster import CogWriter, RasterScene
from lemevit.io.regions import read_region
from lemevit.io.vector import check_vector_output, check_vector_scenes, write_map_vectors
from lemevit.metrics.panoptic import PanopticStats, panoptic_metrics
from lemevit.models.panoptic_fpn import PanopticFPN, PanopticHeads, default_heads
from lemevit.tasks.base import initial_weights
from lemevit.tasks.dense import CropTrainingConfig, SlidingWindowTask, check_window, first_item
from lemevit.tasks.registry import register_task
from lemevit.viz import class_colours, save_panoptic_preview

__all__ = ["PanopticConfig", "PanopticEvalOptions", "PanopticItem", "PanopticPredictOptions", "PanopticTask"]


@dataclass(frozen=True)
class PanopticItem:
    """An item of a panoptic split: an image, by its ``file_name`` in the data set's JSON (below ``img_dir/``)."""

    image: str


#: The options of the heads' widths (:class:`~lemevit.models.panoptic_fpn.PanopticHeads`).
_HEAD_WIDTHS = tuple(field.name for field in fields(PanopticHeads))


def _check_fusion(options: Options) -> None:
    for name in ("score_threshold", "overlap_threshold", "merge_iou"):
        if getattr(options, name) is not None:
            options.check_fraction(name, low_open=False)
    options.check_non_negative("stuff_area")
    check_window(options)


@dataclass(kw_only=True)
class PanopticConfig(CropTrainingConfig):
    """A panoptic run: Panoptic FPN trained on random crops of ``img_size``, validated on whole images window by
    window (``window`` defaults to ``img_size``, ``stride`` to three quarters of it)."""

    task: str = option("panoptic", "the task", cli=False)
    data: str = option(None, "a COCO panoptic data set: panoptic.json, img_dir/ and panoptic/, as `lemevit prepare "
                             "panoptic` writes it (train/ and val/ subfolders of the images, when present, are the "
                             "split)")
    img_size: int = option(256, "side of the random training crops, in pixels")
    epochs: int = option(50, "training epochs", resumable=True)
    batch_size: int = option(4, "crops per batch and device; windows per batch at validation")
    split: float = option(0.8, "fraction of the images in training (1.0: validate on the training images); unused "
                               "when the images are in train/ and val/ folders, which are the split")
    lr: float = option(1e-4, "peak learning rate of AdamW")
    gradient_clip: float | None = option(35.0, "clip the gradient norm to this value")
    crops_per_image: int | None = option(None, "random crops per image and epoch (default: enough to cover the "
                                               "image once)")
    fpn_channels: int | None = option(None, "pyramid width (default 96 for LVT, as its Panoptic FPN, else 256)")
    box_channels: int | None = option(None, "units of the box head's fully connected layers (default 160 for LVT, "
                                            "as its Panoptic FPN, else 1024)")
    box_layers: int | None = option(None, "fully connected layers of the box head (default 2)")
    mask_channels: int | None = option(None, "width of the mask head's convs (default 96 for LVT, else 256)")
    mask_layers: int | None = option(None, "3x3 convs of the mask head (default 4)")
    semantic_channels: int | None = option(None, "width of the semantic branch, a multiple of its GroupNorm groups "
                                                 "(default 48 for LVT, else 128)")
    semantic_groups: int | None = option(None, "GroupNorm groups of the semantic branch (default 12 for LVT, "
                                               "else 32)")
    semantic_weight: float = option(0.5, "weight of the semantic branch's cross-entropy in the loss")
    rpn_proposals: int = option(1000, "proposals per image kept after the RPN's NMS in training")
    test_proposals: int = option(1000, "proposals per window at inference")
    detections: int = option(100, "objects per window at most")
    score_threshold: float = option(0.5, "objects scored lower are dropped from the panoptic map")
    overlap_threshold: float = option(0.5, "an object more than this fraction of which higher-scoring objects took "
                                           "is dropped")
    stuff_area: int = option(1024, "stuff regions of fewer pixels (on those the objects left) are dropped")
    merge_iou: float = option(0.5, "pieces of an object found by neighbouring windows are merged when their masks' "
                                   "IoU on the pixels both windows see exceeds this")

    def __post_init__(self):
        super().__post_init__()
        self.check_positive("rpn_proposals", "test_proposals", "detections")
        self.check_positive("fpn_channels", "crops_per_image", *_HEAD_WIDTHS, allow_none=True)
        self.check_non_negative("semantic_weight")
        self.heads()  # the widths given, with the model's defaults for the others, must make a network
        _check_fusion(self)

    def heads(self) -> PanopticHeads:
        """The widths of the heads: those given, the model's defaults (:func:`default_heads`) for the others."""
        return default_heads(self.model, **{name: getattr(self, name) for name in _HEAD_WIDTHS})


@dataclass(kw_only=True)
class _InferenceSettings(Options):
    """What eval and predict may change of the run's inference (None: the run's)."""

    window: int | None = option(None, "sliding window (default: the run's)")
    stride: int | None = option(None, "its stride (default: 3/4 of the window given, else the run's)")
    score_threshold: float | None = option(None, "objects scored lower are dropped (default: the run's)")
    overlap_threshold: float | None = option(None, "an object more than this fraction of which higher-scoring "
                                                   "objects took is dropped (default: the run's)")
    stuff_area: int | None = option(None, "stuff regions of fewer pixels are dropped (default: the run's)")
    merge_iou: float | None = option(None, "IoU on the pixels two windows share above which their pieces of an "
                                           "object are merged (default: the run's)")

    def __post_init__(self):
        super().__post_init__()
        _check_fusion(self)


@dataclass(kw_only=True)
class PanopticEvalOptions(_InferenceSettings, EvalOptions):
    pass


@dataclass(kw_only=True)
class PanopticPredictOptions(_InferenceSettings, PredictOptions):
    output: str = option(None, "a folder: <image>_panoptic.png (segment ids in COCO's encoding, R + 256 G + 256² B) "
                               "and <image>_segments.json (each segment's category, area, box and score); for a "
                               "georeferenced GeoTIFF also <image>_panoptic.tif, the segment ids (0: none) as a "
                               "Cloud-Optimized GeoTIFF with its CRS and transform")
    preview: bool = option(True, "write <image>_preview.png: the segments over the image, each in its category's "
                                 "colour and outlined")
    vector: str | None = option(None, "also polygonise the segments of georeferenced GeoTIFFs into "
                                      "<image>_segments.geojson (RFC 7946: WGS84) or .gpkg (the scene's CRS): a "
                                      "polygon per region of a segment, its category as class and its id as value",
                                choices=("geojson", "gpkg"))


def _subset_folder(image: PanopticImage) -> str | None:
    parts = PurePosixPath(image.file_name).parts
    return parts[0] if len(parts) > 1 and parts[0] in SUBSETS else None


@register_task
class PanopticTask(SlidingWindowTask):
    """Trains a :class:`~lemevit.models.panoptic_fpn.PanopticFPN` on random crops; validation predicts each whole
    image window by window (:func:`~lemevit.inference.panoptic.predict_panoptic`) and logs ``val/pq``, ``val/sq``
    and ``val/rq`` over all of them (COCO's panopticapi's way).

    The heads' widths default to the paper's (Detectron2's), with which runs saved before they were settings were
    built, so that their checkpoints still load; :meth:`from_config` gives the model's own
    (:meth:`PanopticConfig.heads`: LVT's narrower ones for LVT), which the run's hyper-parameters then hold."""

    name = "panoptic"
    description = "panoptic segmentation: a COCO panoptic data set (lemevit prepare panoptic derives one)"
    config = PanopticConfig
    eval_options = PanopticEvalOptions
    predict_options = PanopticPredictOptions
    monitor = "val/pq"
    logged_metrics = ("pq", "sq", "rq")
    backbone_prefix = "model.encoder."
    entry_type = PanopticItem
    data_layout = PANOPTIC_LAYOUT
    holds_data = staticmethod(is_panoptic_data)
    find_unused_parameters = True
    evaluation_collate = staticmethod(first_item)

    # The settings of a run default to its config's (written once there). The heads' widths default to
    # PanopticHeads' (Detectron2's), not to the config's None (the model's own widths, which from_config resolves
    # and the run saves): a checkpoint saved before the widths were settings was built with those.
    def __init__(self, model: str, categories: Sequence[dict], in_chans: int = 3,
                 img_size: int = PanopticConfig.img_size, window: int | None = None, stride: int | None = None,
                 mean: Sequence[float] = (123.675, 116.28, 103.53), std: Sequence[float] = (58.395, 57.12, 57.375),
                 input_dtype: str | None = None, optimization: dict | None = None,
                 drop_path_rate: float = PanopticConfig.drop_path_rate, fpn_channels: int | None = None,
                 box_channels: int = PanopticHeads.box_channels, box_layers: int = PanopticHeads.box_layers,
                 mask_channels: int = PanopticHeads.mask_channels, mask_layers: int = PanopticHeads.mask_layers,
                 semantic_channels: int = PanopticHeads.semantic_channels,
                 semantic_groups: int = PanopticHeads.semantic_groups,
                 semantic_weight: float = PanopticConfig.semantic_weight,
                 rpn_proposals: int = PanopticConfig.rpn_proposals, test_proposals: int = PanopticConfig.test_proposals,
                 detections: int = PanopticConfig.detections, score_threshold: float = PanopticConfig.score_threshold,
                 overlap_threshold: float = PanopticConfig.overlap_threshold,
                 stuff_area: int = PanopticConfig.stuff_area, merge_iou: float = PanopticConfig.merge_iou,
                 init_checkpoint: str | None = None, seed: int = PanopticConfig.seed):
        super().__init__()
        self.save_hyperparameters()
        self.categories = [dict(c) for c in categories]
        self.set_window(window, stride)
        self.fusion = Fusion(score_threshold=score_threshold, overlap_threshold=overlap_threshold,
                             stuff_area=stuff_area, merge_iou=merge_iou)
        things = [i for i, c in enumerate(self.categories) if c["isthing"]]
        self.model = PanopticFPN(model, len(self.categories), things, in_chans=in_chans, fpn_channels=fpn_channels,
                                 box_channels=box_channels, box_layers=box_layers, mask_channels=mask_channels,
                                 mask_layers=mask_layers, semantic_channels=semantic_channels,
                                 semantic_groups=semantic_groups, semantic_weight=semantic_weight,
                                 rpn_proposals=rpn_proposals, test_proposals=test_proposals, detections=detections,
                                 drop_path_rate=drop_path_rate, backbone_checkpoint=initial_weights(init_checkpoint))

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    @property
    def thing_names(self) -> list[str]:
        return [c["name"] for c in self.categories if c["isthing"]]

    # --- training ---------------------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, cfg: PanopticConfig, progress: bool = True) -> tuple[Split, list[dict]]:
        root = Path(cfg.data)
        dataset = read_panoptic(root / ANNOTATIONS_FILE)
        source = root / ANNOTATIONS_FILE
        if not dataset.images:
            raise DataError(f"{source}: no annotated images")
        if not dataset.thing_classes:
            raise DataError(f"{source}: no category is a thing (isthing 1); Panoptic FPN finds the objects of the "
                            "thing classes")
        folders = [_subset_folder(image) for image in dataset.images]
        if any(folders):
            if not all(folders):
                outside = next(i.file_name for i, f in zip(dataset.images, folders, strict=True) if f is None)
                raise DataError(f"{source}: some images are in {'/, '.join(SUBSETS)}/ subfolders, which are the "
                                f"split, but {outside} is in none")
            subsets = {name: [PanopticItem(i.file_name) for i, f in zip(dataset.images, folders, strict=True)
                              if f == name] for name in SUBSETS}
            subsets = {name: items for name, items in subsets.items() if items}
        else:
            subsets = split_items([PanopticItem(i.file_name) for i in dataset.images], cfg.split, cfg.seed,
                                  key=lambda item: item.image, what=f"annotated images in {source}")
        split = Split(root, subsets, {"categories": [{"id": c.id, "name": c.name, "isthing": c.isthing,
                                                      "color": list(c.color)} for c in dataset.categories]})
        train = _select(dataset, split.subsets["train"])
        if not any(check_panoptic(dataset, train).values()):
            raise DataError(f"{source}: the training images have no segment")
        check_panoptic(dataset, _select(dataset, [i for i in split.all_items() if i not in set(subsets["train"])]))
        return split, []

    @classmethod
    def load_meta(cls, meta: dict, source: str) -> dict:
        categories = meta.get("categories")
        if not isinstance(categories, list) or not categories or not all(
                isinstance(c, dict) and {"id", "name", "isthing"} <= set(c) for c in categories):
            raise DataError(f"{source}: \"meta\" must hold the categories (id, name, isthing)")
        return meta

    def run_meta(self) -> dict:
        return {"categories": self.categories}

    @classmethod
    def training_images(cls, split: Split) -> list[Path]:
        return [split.root / IMAGES_DIR / item.image for item in split.subsets["train"]]

    @classmethod
    def from_config(cls, cfg: PanopticConfig, split: Split, normalisation: Normalisation) -> PanopticTask:
        return cls(cfg.model, split.meta["categories"], in_chans=normalisation.bands, img_size=cfg.img_size,
                   window=cfg.window, stride=cfg.stride, mean=normalisation.mean, std=normalisation.std,
                   input_dtype=normalisation.dtype, optimization=cfg.optimization().to_dict(),
                   drop_path_rate=cfg.drop_path_rate, fpn_channels=cfg.fpn_channels, **asdict(cfg.heads()),
                   semantic_weight=cfg.semantic_weight,
                   rpn_proposals=cfg.rpn_proposals, test_proposals=cfg.test_proposals, detections=cfg.detections,
                   score_threshold=cfg.score_threshold, overlap_threshold=cfg.overlap_threshold,
                   stuff_area=cfg.stuff_area, merge_iou=cfg.merge_iou, init_checkpoint=cfg.starting_weights,
                   seed=cfg.seed)

    def _dataset(self, root: Path) -> PanopticSet:
        """The panoptic data set at ``root``, whose categories must be the model's."""
        dataset = read_panoptic(Path(root) / ANNOTATIONS_FILE)
        found = [(c.name, c.isthing) for c in dataset.categories]
        if found != [(c["name"], bool(c["isthing"])) for c in self.categories]:
            raise DataError(f"{Path(root) / ANNOTATIONS_FILE}: its categories {found} (name, isthing) are not the "
                            f"model's {[(c['name'], bool(c['isthing'])) for c in self.categories]}")
        return dataset

    def datamodule(self, cfg: PanopticConfig, split: Split) -> SeededDataModule:
        hp = self.hparams
        dataset = self._dataset(split.root)
        crops = PanopticCrops(dataset, _select(dataset, split.subsets["train"]), hp.img_size, hp.mean, hp.std,
                              crops_per_image=cfg.crops_per_image, flip=cfg.flip, rotate90=cfg.rotate90,
                              scale_range=cfg.scale_range, photometric=cfg.photometric)
        evaluation = {name: self.evaluation_dataset(split.root, split.subsets[name])
                      for name in ("val", "test") if split.subsets.get(name)}
        self.inference_batch_size = cfg.batch_size
        return SeededDataModule(crops, evaluation, cfg.batch_size, cfg.num_workers, cfg.seed, eval_batch_size=1,
                                eval_collate_fn=first_item)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, ids, classes = batch
        targets = [self.model.targets(i, c) for i, c in zip(ids, classes, strict=True)]
        losses = self.model(images, targets)
        loss = sum(losses.values())
        self.log_loss(loss, images.shape[0], losses)
        return loss

    # --- inference --------------------------------------------------------------------------------------------
    def configure_inference(self, options: InferenceOptions) -> None:
        super().configure_inference(options)
        given = {name: getattr(options, name) for name in ("score_threshold", "overlap_threshold", "stuff_area",
                                                            "merge_iou") if getattr(options, name) is not None}
        self.fusion = Fusion(**{**vars(self.fusion), **given})

    def panoptic(self, image: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        """Segment ids and segments of one normalised image ``(C, H, W)`` (see
        :func:`~lemevit.inference.panoptic.predict_panoptic`)."""
        return predict_panoptic(self.model, image, self.window, self.stride, self.fusion, self.inference_batch_size)

    # --- evaluation -------------------------------------------------------------------------------------------
    def evaluation_dataset(self, root: Path, items: Sequence[PanopticItem]) -> Dataset:
        dataset = self._dataset(root)
        return PanopticTiles(dataset, _select(dataset, items), self.hparams.mean, self.hparams.std)

    def evaluation_items(self, data: Path | None, split: Split | None) -> tuple[Path, list[PanopticItem]]:
        if data is None:
            return split.root, list(split.evaluation)
        dataset = self._dataset(data)
        folders = {_subset_folder(image) for image in dataset.images}
        # A data set with its split in folders is scored on its held-out folder, as a run on it is.
        held_out = "test" if "test" in folders else "val" if "val" in folders else None
        items = [PanopticItem(i.file_name) for i in dataset.images
                 if held_out is None or _subset_folder(i) == held_out]
        if not items:
            raise DataError(f"{Path(data) / ANNOTATIONS_FILE}: no annotated images")
        first = Path(data) / IMAGES_DIR / items[0].image
        pixel = read_region(first, 0, 0, 1, 1)
        self.check_input(first, pixel.shape[-1], pixel.dtype.name)
        return Path(data), items

    def evaluation_records(self, batch) -> list[tuple[int, PanopticStats]]:
        index, image, ids, classes = (t.cpu() if isinstance(t, torch.Tensor) else t for t in batch)
        predicted, segments = self.panoptic(image)
        found, where = np.unique(ids.numpy(), return_index=True)
        class_of = classes.numpy().ravel()[where]
        truth = {abs(int(i)): int(c) for i, c in zip(found, class_of, strict=True) if i != 0}
        stats = PanopticStats(len(self.categories))
        stats.update(predicted, {s["id"]: s["class"] for s in segments}, ids.abs(), truth,
                     crowd={-int(i) for i in found if i < 0})
        return [(int(index), stats)]

    def summarize(self, records: list[PanopticStats]) -> dict:
        total = PanopticStats(len(self.categories))
        for stats in records:
            total += stats
        metrics = panoptic_metrics(total, self.class_names, self.thing_names)
        metrics.update({"num_images": len(records), "window": self.window, "stride": self.stride,
                        "fusion": vars(self.fusion)})
        return metrics

    def describe(self, metrics: dict) -> str:
        def score(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.1%}"

        return (f"PQ {score(metrics['pq'])}  SQ {score(metrics['sq'])}  RQ {score(metrics['rq'])}  (things PQ "
                f"{score(metrics['things']['pq'])}, stuff PQ {score(metrics['stuff']['pq'])}) on "
                f"{metrics['num_images']} images")

    def label_names(self) -> list[str]:
        return self.class_names

    def label_colours(self) -> list[tuple[int, int, int]]:
        return [tuple(c["color"]) for c in self.categories]

    def class_probabilities(self) -> tuple[torch.nn.Module, list[str]]:
        # The semantic branch: one class for all objects, then the stuff classes.
        names = [f"things ({', '.join(self.thing_names)})"] + [self.class_names[c] for c in self.model.stuff_classes]
        return Probabilities(self.model, "semantic_logits"), names

    # --- prediction -------------------------------------------------------------------------------------------
    def check_prediction(self, options: PanopticPredictOptions) -> None:
        if not options.inputs:
            raise ConfigError("inputs", "give the images to predict (files, folders or glob patterns)")
        self._inputs = list_images(options.inputs)
        check_distinct_names(self._inputs)
        self._output = check_writable_folder(options.output)
        self._preview = options.preview
        check_outputs_spare_inputs(self._inputs, [p for path in self._inputs
                                                  for p in self._outputs_of(path, self._output, self._preview) if p])
        self._vector = options.vector
        if options.vector:
            check_vector_output(self._output / f"segments.{options.vector}", "vector")
            check_vector_scenes(self._inputs, "vector")

    @classmethod
    def interrupted_prediction(cls, output: Path) -> str:
        return (f"{output} holds the complete outputs of the images done; run the same command again (it predicts "
                "every image again)")

    @staticmethod
    def _outputs_of(path: Path, output: Path, preview: bool) -> tuple[Path, Path, Path | None]:
        """The segment ids' PNG, the segments' JSON and, with ``preview``, the preview of the image ``path``."""
        stem = Path(path).stem
        return (output / f"{stem}_panoptic.png", output / f"{stem}_segments.json",
                output / f"{stem}_preview.png" if preview else None)

    def _write_geo(self, path: Path, ids: np.ndarray, segments: dict[int, str], output: Path,
                   vector: str | None) -> tuple[Path | None, Path | None]:
        """For a georeferenced GeoTIFF scene: ``<stem>_panoptic.tif``, the segment ids with the scene's CRS and
        transform, and with ``vector`` the polygons of the segments (``{id: category}``); else nothing."""
        if Path(path).suffix.lower() not in TIFF_EXTENSIONS or optional_rasterio() is None:
            return None, None
        scene = RasterScene(path)
        try:
            if not scene.georeferenced:
                return None, None
            target = output / f"{Path(path).stem}_panoptic.tif"
            with atomic_path(target) as tmp, CogWriter(target, tmp, scene, 1, "int32", "nearest", ["segment id"],
                                                       nodata=0) as writer:
                writer.write(0, ids[None].astype(np.int32))
        finally:
            scene.close()
        if not vector:
            return target, None
        vectors = output / f"{Path(path).stem}_segments.{vector}"
        write_map_vectors(target, vectors, segments)
        return target, vectors

    def load_image(self, path: Path) -> tuple[torch.Tensor, np.ndarray | None]:
        """An image file as the model's input: its bands and data type checked, its pixels of no data (NaN or
        infinite values) given the band means, normalised; and the mask of the pixels with data (None: all)."""
        pixels = read_image(path)
        self.check_input(path, pixels.shape[-1], pixels.dtype.name)
        pixels, valid = fill_no_data(pixels, self.hparams.mean)
        mean = torch.tensor(self.hparams.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.hparams.std, dtype=torch.float32)[:, None, None]
        return normalised_tensor(pixels, mean, std), valid

    def prediction_dataset(self, options: PanopticPredictOptions) -> Dataset:
        return PredictionFiles(self._inputs, self.load_image, options.skip_bad)

    def predict_step(self, batch, batch_idx: int) -> None:
        index, read = batch
        path = self._inputs[index]
        if isinstance(read, BadFile):
            self._records.append((index, {"image": str(path), "error": read.reason}))
            return
        self._records.append((index, self.predict_image(path, *read, self._output, self._vector, self._preview)))

    def predict_image(self, path: Path, image: torch.Tensor, valid: np.ndarray | None, output: Path,
                      vector: str | None, preview: bool = False) -> dict:
        """Write the panoptic PNG and the segments (JSON) of ``image`` and its mask of pixels with data ``valid``
        (as :meth:`load_image` gives them) into ``output``, and for a georeferenced GeoTIFF at ``path`` its segment
        ids as a GeoTIFF, with ``vector`` also their polygons, with ``preview`` a picture of both; returns what
        ``predict`` reports of it, the segments among it. ``predict`` and ``serve`` both predict an image through it."""
        ids, segments = self.panoptic(image.cpu())
        ids = ids.numpy()
        if valid is not None:  # no data belongs to no segment
            ids[~valid] = 0
        png, segments_json, preview = self._outputs_of(path, output, preview)
        write_segment_ids(png, ids)
        extents = segment_extents(ids)
        info = []
        for segment in segments:
            if segment["id"] not in extents:  # every pixel of it was taken by others
                continue
            category = self.categories[segment["class"]]
            area, bbox, _ = extents[segment["id"]]
            info.append({"id": segment["id"], "category_id": category["id"], "category": category["name"],
                         "isthing": bool(category["isthing"]), "iscrowd": 0, "area": area, "bbox": bbox,
                         "score": segment["score"]})
        segments_file = {"file_name": Path(path).name, "height": int(ids.shape[0]), "width": int(ids.shape[1]),
                         "segments_info": info}
        with atomic_path(segments_json) as tmp:
            tmp.write_text(json.dumps(segments_file, indent=1))
        geotiff, vectors = self._write_geo(path, ids, {s["id"]: s["category"] for s in info}, output, vector)
        if preview is not None:
            hp = self.hparams
            pixels = image.cpu().numpy().transpose(1, 2, 0) * np.asarray(hp.std) + np.asarray(hp.mean)
            colours = class_colours(len(self.categories))
            save_panoptic_preview(pixels, ids, {s["id"]: self.categories[s["class"]].get("color") or
                                                colours[s["class"]] for s in segments if s["id"] in extents},
                                  preview)
        things = sum(s["isthing"] for s in info)
        written = [str(p) for p in (png, segments_json, preview, geotiff, vectors) if p is not None]
        no_data = 0 if valid is None else int(valid.size - np.count_nonzero(valid))
        return {"image": str(path), "written": written, "things": things, "stuff": len(info) - things,
                "no_data_pixels": no_data, "segments": segments_file, "vectors": str(vectors) if vectors else None}

    def finish_prediction(self, records: list[dict], options: PanopticPredictOptions) -> list[str]:
        return [f"skipped {r['image']}: {r['error']}" if "error" in r else
                f"{r['image']}: {r['things']} objects and {r['stuff']} stuff regions in {', '.join(r['written'])}"
                + (f"; {r['no_data_pixels']:,} pixels of no data (NaN or infinite values) in no segment"
                   if r["no_data_pixels"] else "")
                for r in records]


def _select(dataset: PanopticSet, items: Sequence[PanopticItem]) -> list[PanopticImage]:
    by_name = {image.file_name: image for image in dataset.images}
    missing = [item.image for item in items if item.image not in by_name]
    if missing:
        raise DataError(f"{dataset.image_dir.parent / ANNOTATIONS_FILE}: images of the run's split are not "
                        f"annotated: {missing[:5]}")
    return [by_name[item.image] for item in items]
