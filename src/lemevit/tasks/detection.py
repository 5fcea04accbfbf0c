"""Oriented object detection: Oriented R-CNN over any backbone, trained on windows of large images, evaluated
with DOTA's protocol on whole images (window by window, merged), predicting DOTA Task-1 files (and their zip for
DOTA's evaluation server), drawn boxes and, for georeferenced scenes, GeoJSON or GeoPackage polygons."""
from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lemevit.config.options import EvalOptions, InferenceOptions, Options, PredictOptions, RunConfig, option
from lemevit.data.datamodule import SeededDataModule
from lemevit.data.detection import (
    DETECTION_LAYOUT,
    UNSPLIT,
    DetectionImages,
    ImageLabels,
    PatchDataset,
    collate_detection,
    is_detection_data,
    scan_detection_data,
    scan_detection_folder,
)
from lemevit.data.files import BadFile, PredictionFiles
from lemevit.data.splits import Split, split_items
from lemevit.data.statistics import Normalisation
from lemevit.errors import ConfigError, DataError
from lemevit.inference.detection import default_overlap, detect_scene
from lemevit.inference.onnx import NETWORK, GraphOf, OnnxGraph
from lemevit.io import atomic_path
from lemevit.io.images import IMAGE_EXTENSIONS, TIFF_EXTENSIONS, ImageReadError
from lemevit.io.paths import check_distinct_names, check_outputs_spare_inputs, check_writable_folder, list_images
from lemevit.io.raster import SceneStack
from lemevit.io.vector import check_vector_output, check_vector_scenes, write_detection_vectors
from lemevit.metrics.detection import detection_map
from lemevit.models.oriented_rcnn import OrientedRCNN, StagesOnRuntime
from lemevit.tasks.base import BaseTask, NamedClasses, initial_weights
from lemevit.tasks.dense import first_item
from lemevit.tasks.registry import register_task
from lemevit.timing import StageTimer

__all__ = ["TASK1_ZIP", "DetectionConfig", "DetectionPredictOptions", "DetectionTask", "LabelledImage",
           "default_proposals"]

#: The zip of the Task-1 files that DOTA's evaluation server takes.
TASK1_ZIP = "Task1.zip"
#: The longest side of the drawn boxes' picture; larger scenes are drawn on every n-th pixel.
DRAWN_SIDE = 4096
#: The RPN's proposals per 1024-pixel window in the published DOTA setting (mmrotate's ``nms_pre`` and
#: ``max_per_img``, in training and at test); other window sides get them in proportion to their area.
_PROPOSALS_OF_1024 = 2000


def default_proposals(window: int) -> int:
    """The RPN's proposals per window of side ``window`` when none are given, in training and at inference: 2000
    for 1024 px windows (the published DOTA setting), in proportion to the window's area for other sides (500 for
    512, 125 for 256). A window holds objects in proportion to its area, and every proposal costs a rotated RoI
    Align and a pass of the box head: a small window with the 1024 px budget spends its time on thousands of
    proposals for a handful of objects."""
    return max(1, round(_PROPOSALS_OF_1024 * (window / 1024) ** 2))


@dataclass(frozen=True)
class LabelledImage:
    """An item of a detection split: an image (relative to the data root); its objects come from its label file."""

    image: str


@dataclass(kw_only=True)
class DetectionConfig(RunConfig):
    """A detection run. ``img_size`` is the side of the square windows the images are cut into, ``overlap``
    the pixels neighbours share (default: in proportion to 200 for 1024). Data in DOTA's released layout
    (``train/``, ``val/``) comes split; ``trainval`` trains on both, as the DOTA papers do before scoring the
    unlabelled ``test/`` on DOTA's evaluation server."""

    task: str = option("detection", "the task", cli=False)
    data: str = option(None, "DOTA (images/, labelTxt/; or DOTA's released train/ and val/ such folders, which are "
                             "the split, and test/images to predict) or DIOR-R (JPEGImages*/, Annotations/Oriented "
                             "Bounding Boxes/)")
    img_size: int = option(1024, "side of the windows the images are cut into, in pixels")
    epochs: int = option(12, "training epochs", resumable=True)
    batch_size: int = option(2, "windows per batch and device")
    split: float = option(0.8, "fraction of the images in training (1.0: validate on the training images); unused "
                               "when the data has train/ and val/ folders, which are the split")
    trainval: bool = option(False, "train on train/ and val/ together (the DOTA papers' protocol), still validating "
                                   "on val/, which then is not held out: scores come from predicting test/")
    lr: float = option(1e-4, "peak learning rate of AdamW")
    gradient_clip: float | None = option(35.0, "clip the gradient norm to this value")
    overlap: int | None = option(None, "pixels shared by neighbouring windows (default img_size * 200 / 1024)")
    fpn_channels: int = option(256, "FPN width")
    rpn_proposals: int | None = option(None, "proposals per window in training (default 2000 for 1024 px windows, in "
                                             "proportion to the window's area for others: 125 for 256)")
    test_proposals: int | None = option(None, "proposals per window at inference (default as --rpn-proposals)")
    nms_iou: float = option(0.1, "IoU above which the class-wise rotated NMS at inference removes the lower-scoring "
                                 "box, within a window and in merging the windows (Oriented R-CNN's DOTA setting)")
    augment: bool = option(True, "random flips and quarter turns of the training windows")

    def __post_init__(self):
        super().__post_init__()
        self.check_positive("fpn_channels")
        self.check_positive("rpn_proposals", "test_proposals", allow_none=True)
        self.check_fraction("nms_iou")
        if self.overlap is not None:
            self.check_non_negative("overlap")
            if self.overlap >= self.img_size:
                raise ConfigError("overlap", f"{self.overlap} must be smaller than the windows ({self.img_size} px)")


@dataclass(kw_only=True)
class DetectorSettings(Options):
    """What ``eval`` and ``predict`` of a detector share: how much of the box head's output goes on to NMS (the
    published test settings by default)."""

    score_threshold: float = option(0.05, "(class, box) candidates scoring at most this are dropped before NMS")
    pre_nms_top_k: int = option(2000, "at most this many (class, box) candidates per window go to NMS, the best "
                                      "scoring: bounds the work of an untrained or noisy model")

    def __post_init__(self):
        super().__post_init__()
        self.check_fraction("score_threshold", low_open=False, high_open=True)
        self.check_positive("pre_nms_top_k")


@dataclass(kw_only=True)
class DetectionEvalOptions(DetectorSettings, EvalOptions):
    pass


@dataclass(kw_only=True)
class DetectionPredictOptions(DetectorSettings, PredictOptions):
    output: str = option(None, "a folder: DOTA Task-1 files Task1_<class>.txt and Task1.zip of them (what DOTA's "
                               "evaluation server takes), <image>.png with the boxes drawn, <image>.geojson (or "
                               ".gpkg, see --vector) for georeferenced GeoTIFFs")
    batch_size: int = option(4, "windows per batch and device")
    draw_threshold: float = option(0.3, "boxes scoring at least this are drawn")
    vector: str | None = option(None, "the boxes as <image>.geojson (RFC 7946: WGS84 longitude/latitude) or "
                                      "<image>.gpkg (GeoPackage in the scene's CRS); given, every image must be a "
                                      "georeferenced GeoTIFF (default: geojson for those that are)",
                                choices=("geojson", "gpkg"))
    html: bool = option(False, "also write <image>.html: one self-contained page (it needs no network) showing the "
                               "image with the drawn boxes as a layer to switch on and off")

    def __post_init__(self):
        super().__post_init__()
        self.check_fraction("draw_threshold", low_open=False)
        if Path(self.output).suffix.lower() in IMAGE_EXTENSIONS | {".txt", ".json", ".geojson", ".gpkg"}:
            raise ConfigError("output", f"is a folder for several files (Task-1 files, drawn images), got "
                                        f"{self.output}")


def _select(images: list[ImageLabels], root: Path, items: Sequence[LabelledImage]) -> list[ImageLabels]:
    by_name = {i.image.relative_to(root).as_posix(): i for i in images}
    missing = [item.image for item in items if item.image not in by_name]
    if missing:
        raise DataError(f"{root}: images of the run's split are missing or unlabelled: {missing[:5]}")
    return [by_name[item.image] for item in items]


@register_task
class DetectionTask(NamedClasses, BaseTask):
    """Trains Oriented R-CNN on image windows; validation scores whole images with DOTA's protocol (window by
    window, merged by class-wise rotated NMS) and logs ``val/map50``.
    """

    name = "detection"
    description = "oriented object detection: DOTA or DIOR-R"
    config = DetectionConfig
    eval_options = DetectionEvalOptions
    predict_options = DetectionPredictOptions
    monitor = "val/map50"
    logged_metrics = ("map50",)
    backbone_prefix = "model.backbone."
    entry_type = LabelledImage
    data_layout = DETECTION_LAYOUT
    holds_data = staticmethod(is_detection_data)
    find_unused_parameters = True
    batches_whole_images = True
    evaluation_collate = staticmethod(first_item)

    # The settings of a run default to its config's (written once there); a checkpoint saved before a setting
    # existed (nms_iou) loads with that default too, which is what those runs did.
    def __init__(self, model: str, num_classes: int, class_names: Sequence[str] | None = None, in_chans: int = 3,
                 img_size: int = DetectionConfig.img_size, overlap: int | None = None,
                 mean: Sequence[float] = (123.675, 116.28, 103.53), std: Sequence[float] = (58.395, 57.12, 57.375),
                 input_dtype: str | None = None, optimization: dict | None = None,
                 drop_path_rate: float = DetectionConfig.drop_path_rate,
                 fpn_channels: int = DetectionConfig.fpn_channels,
                 rpn_proposals: int | None = DetectionConfig.rpn_proposals,
                 test_proposals: int | None = DetectionConfig.test_proposals, nms_iou: float = DetectionConfig.nms_iou,
                 init_checkpoint: str | None = None, seed: int = DetectionConfig.seed):
        super().__init__()
        self.save_hyperparameters()
        self.overlap = default_overlap(img_size) if overlap is None else overlap
        # Checkpoints of runs before the budgets followed the window hold the numbers they ran with, and keep them.
        proposals = default_proposals(img_size)
        self.model = OrientedRCNN(model, num_classes, in_chans=in_chans, fpn_channels=fpn_channels,
                                  drop_path_rate=drop_path_rate, backbone_checkpoint=initial_weights(init_checkpoint),
                                  rpn_proposals=proposals if rpn_proposals is None else rpn_proposals,
                                  test_proposals=proposals if test_proposals is None else test_proposals,
                                  nms_threshold=nms_iou)

    # --- training ---------------------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, cfg: DetectionConfig, progress: bool = True) -> tuple[Split, list[dict]]:
        root = Path(cfg.data)
        class_names, found = scan_detection_data(root)
        items = {name: [LabelledImage(i.image.relative_to(root).as_posix()) for i in images]
                 for name, images in found.items()}
        if UNSPLIT in items:
            if cfg.trainval:
                raise ConfigError("trainval", f"trains on the train/ and val/ folders of DOTA's released layout, "
                                              f"which {root} lacks: it holds its images itself (use `split`)")
            subsets = split_items(items[UNSPLIT], cfg.split, cfg.seed, key=lambda item: item.image,
                                  what=f"labelled images in {root}")
        else:
            subsets = {**items, "train": items["train"] + items["val"]} if cfg.trainval else items
        return Split(root, subsets, {"class_names": class_names}), []

    @classmethod
    def training_images(cls, split: Split) -> list[Path]:
        return [split.root / item.image for item in split.subsets["train"]]

    @classmethod
    def from_config(cls, cfg: DetectionConfig, split: Split, normalisation: Normalisation) -> DetectionTask:
        names = split.meta["class_names"]
        return cls(cfg.model, num_classes=len(names), class_names=names, in_chans=normalisation.bands,
                   img_size=cfg.img_size, overlap=cfg.overlap, mean=normalisation.mean, std=normalisation.std,
                   input_dtype=normalisation.dtype, optimization=cfg.optimization().to_dict(),
                   drop_path_rate=cfg.drop_path_rate, fpn_channels=cfg.fpn_channels,
                   rpn_proposals=cfg.rpn_proposals, test_proposals=cfg.test_proposals, nms_iou=cfg.nms_iou,
                   init_checkpoint=cfg.starting_weights, seed=cfg.seed)

    def _labels(self, root: Path, items: Sequence[LabelledImage]) -> list[ImageLabels]:
        names, images = scan_detection_folder(root)
        if names != self.class_names:
            raise DataError(f"{root}: its classes {names} are not the model's {self.class_names}")
        return _select(images, root, items)

    def datamodule(self, cfg: DetectionConfig, split: Split) -> SeededDataModule:
        hp = self.hparams
        windows = PatchDataset(self._labels(split.root, split.subsets["train"]), size=hp.img_size,
                               overlap=self.overlap, augment=cfg.augment, mean=hp.mean, std=hp.std)
        evaluation = {name: self.evaluation_dataset(split.root, split.subsets[name])
                      for name in ("val", "test") if split.subsets.get(name)}
        self.inference_batch_size = cfg.batch_size
        return SeededDataModule(windows, evaluation, cfg.batch_size, cfg.num_workers, cfg.seed, eval_batch_size=1,
                                collate_fn=collate_detection, eval_collate_fn=first_item)

    def training_step(self, batch: tuple[torch.Tensor, list[dict]], batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(images, targets)
        loss = sum(losses.values())
        self.log_loss(loss, images.shape[0], losses)
        return loss

    def configure_inference(self, options: InferenceOptions) -> None:
        super().configure_inference(options)
        self.model.score_threshold, self.model.pre_nms_top_k = options.score_threshold, options.pre_nms_top_k

    # --- detection over whole images --------------------------------------------------------------------------
    @torch.inference_mode()
    def detect(self, scene: SceneStack, timer: StageTimer | None = None,
               max_windows: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Oriented boxes as corner quads ``(n, 4, 2)``, scores and labels over a whole scene, by
        :func:`~lemevit.inference.detection.detect_scene`: the run's window side and overlap, merged by class-wise
        rotated NMS at the run's ``nms_iou``, the detector's own (a higher one per window would be undone by a lower
        one in merging). ``timer`` adds the seconds of each stage to its own; ``max_windows`` detects only the first
        windows."""
        hp = self.hparams
        timer = timer if timer is not None else StageTimer()
        self.model.timer = timer
        try:
            return detect_scene(self, scene, hp.img_size, self.overlap, self.inference_batch_size, hp.mean, hp.std,
                                next(self.model.parameters()).device, self.model.nms_threshold, timer, max_windows)
        finally:
            self.model.timer = None

    def onnx_graphs(self) -> dict[str, OnnxGraph]:
        """The trunk (image -> pyramid P2..P6, then per level the RPN's objectness and deltas) and the box head (RoI
        features -> class logits and deltas): the proposals between them and the NMS after stay in Python."""
        hp, levels = self.hparams, range(len(self.model.strides))
        outputs = (*(f"pyramid.{i}" for i in levels), *(f"rpn_objectness.{i}" for i in levels),
                   *(f"rpn_deltas.{i}" for i in levels))
        return {NETWORK: OnnxGraph(GraphOf(self.model, "trunk"), ("image",), outputs, hp.in_chans, hp.img_size),
                "box_head": OnnxGraph(GraphOf(self.model, "box_head"), ("roi_features",),
                                      ("class_logits", "box_deltas"), hp.fpn_channels, 7,
                                      fixed_size="RoI features are 7x7; the number of RoIs varies")}

    def network_on_runtime(self, networks: dict[str, torch.nn.Module]) -> StagesOnRuntime:
        return StagesOnRuntime(self.model, networks[NETWORK], networks["box_head"])

    # --- evaluation -------------------------------------------------------------------------------------------
    def evaluation_dataset(self, root: Path, items: Sequence[LabelledImage]) -> Dataset:
        return DetectionImages(self._labels(root, items))

    def evaluation_items(self, data: Path | None, split: Split | None) -> tuple[Path, list[LabelledImage]]:
        if data is None:
            return split.root, list(split.evaluation)
        root = Path(data)
        names, found = scan_detection_data(root)
        if names != self.class_names:
            raise DataError(f"{root}: its classes {names} are not the model's {self.class_names}")
        # DOTA's released layout is scored on its held-out folder, as a run on it is.
        images = found.get(UNSPLIT) or found.get("test") or found["val"]
        return root, [LabelledImage(i.image.relative_to(root).as_posix()) for i in images]

    def evaluation_records(self, batch) -> list[tuple[int, dict]]:
        index, pixels, truth = batch
        # Lightning's check of the validation path before training needs one window, not a whole image.
        sanity_check = self._trainer is not None and self.trainer.sanity_checking
        quads, scores, labels = self.detect(SceneStack([f"image {index}"], arrays=[pixels]),
                                            max_windows=1 if sanity_check else None)
        return [(int(index), {"detections": {"quads": quads, "scores": scores, "labels": labels}, "truth": truth})]

    def summarize(self, records: list[dict]) -> dict:
        metrics = detection_map([r["detections"] for r in records], [r["truth"] for r in records], self.class_names)
        metrics.update({"num_images": len(records), "window": self.hparams.img_size, "overlap": self.overlap})
        return metrics

    def describe(self, metrics: dict) -> str:
        return (f"mAP50 {metrics['map50']:.2%} (DOTA: polygon IoU 0.5, difficult ignored) on {metrics['num_images']} "
                "images")

    # --- prediction -------------------------------------------------------------------------------------------
    def open_scene(self, path: Path) -> SceneStack:
        """The scene at ``path``, opened to be read by windows (see :meth:`detect`)."""
        try:
            scene = SceneStack([path], self.hparams.in_chans)
        except ImageReadError:
            raise
        except DataError as e:  # GDAL's reasons, for --skip-bad to report as it reports the others
            raise ImageReadError(path, str(e).removeprefix(f"cannot read scene {path}: ")) from None
        try:
            self.check_input(path, scene.bands, scene.dtypes[0])
        except DataError:
            scene.close()
            raise
        return scene

    def check_prediction(self, options: DetectionPredictOptions) -> None:
        if not options.inputs:
            raise ConfigError("inputs", "give the images to predict (files, folders or glob patterns)")
        self._inputs = list_images(options.inputs)
        check_distinct_names(self._inputs)
        output = check_writable_folder(options.output)
        planned = [output / f"Task1_{name}.txt" for name in self.class_names] + [output / TASK1_ZIP]
        vector = options.vector or "geojson"
        planned += [output / f"{p.stem}{suffix}" for p in self._inputs for suffix in (".png", f".{vector}")]
        check_outputs_spare_inputs(self._inputs, planned)
        if options.vector is not None:
            check_vector_output(planned[-1], "vector")
            check_vector_scenes(self._inputs, "vector")

    @classmethod
    def interrupted_prediction(cls, output: Path) -> str:
        return (f"{output} holds the drawn boxes of the images done but no Task-1 files; run the same command again "
                "(it predicts every image again)")

    def prediction_dataset(self, options: DetectionPredictOptions) -> Dataset:
        self._output, self._draw_threshold = Path(options.output), options.draw_threshold
        self._vector = options.vector or "geojson"
        self._html = options.html
        return PredictionFiles(self._inputs, self.open_scene, options.skip_bad)

    prediction_collate = staticmethod(first_item)

    def predict_step(self, batch, batch_idx: int) -> None:
        from lemevit.viz import draw_oriented_boxes
        from lemevit.viz.webmap import write_detection_page

        index, scene = batch
        path = self._inputs[index]
        if isinstance(scene, BadFile):
            self._records.append((index, {"image": str(path), "error": scene.reason}))
            return
        timer = StageTimer()
        try:
            with timer.stage("read"):
                no_data = scene.no_data_pixels()
            quads, scores, labels = self.detect(scene, timer)
            with timer.stage("write"):
                shown = scores >= self._draw_threshold
                png = self._output / f"{path.stem}.png"
                # Scenes too large to draw whole are drawn on every step-th pixel: memory stays bounded.
                step = max(1, math.ceil(max(scene.height, scene.width) / DRAWN_SIDE))
                picture = scene.read_decimated(step).transpose(1, 2, 0)
                draw_oriented_boxes(picture, quads[shown] / step, labels[shown], scores[shown], self.class_names, png)
                if self._html:
                    write_detection_page(self._output / f"{path.stem}.html", picture, quads[shown] / step,
                                         labels[shown], scores[shown], self.class_names)
                vector = self._output / f"{path.stem}.{self._vector}"
                located = write_detection_vectors(path, quads, labels, scores, self.class_names, vector)
        finally:
            scene.close()
        self._records.append((index, {"image": str(path), "quads": quads, "scores": scores, "labels": labels,
                                      "png": str(png), "drawn": int(shown.sum()), "pixels": scene.height * scene.width,
                                      "seconds": timer.seconds, "vector": str(vector) if located else None,
                                      "no_data_pixels": no_data}))

    def finish_prediction(self, records: list[dict], options: DetectionPredictOptions) -> list[str]:
        output = Path(options.output)
        lines: dict[str, list[str]] = {name: [] for name in self.class_names}
        printed, timer, pixels = [], StageTimer(), 0
        for record in records:
            if "error" in record:
                printed.append(f"skipped {record['image']}: {record['error']}")
                continue
            stem = Path(record["image"]).stem
            for quad, score, label in zip(record["quads"], record["scores"], record["labels"], strict=True):
                corners = " ".join(f"{v:.1f}" for v in quad.ravel())
                lines[self.class_names[label]].append(f"{stem} {score:.4f} {corners}")
            geo = f", {record['vector']}" if record["vector"] else ""
            if not geo and Path(record["image"]).suffix.lower() in TIFF_EXTENSIONS:
                geo = f"; no {options.vector or 'geojson'}: the GeoTIFF is not georeferenced"
            if record["no_data_pixels"]:
                geo += (f"; {record['no_data_pixels']:,} pixels of no data "
                        f"({record['no_data_pixels'] / record['pixels']:.1%}) left out")
            under = len(record["scores"]) - record["drawn"]
            printed.append(f"{record['image']}: {len(record['scores'])} objects ({record['drawn']} drawn in "
                           f"{record['png']}, {under} under --draw-threshold {options.draw_threshold:g}{geo})")
            timer.add(record["seconds"])
            pixels += record["pixels"]
        texts = {f"Task1_{name}.txt": "".join(row + "\n" for row in rows) for name, rows in lines.items()}
        for file_name, text in texts.items():
            with atomic_path(output / file_name) as tmp:
                tmp.write_text(text)
        # DOTA's evaluation server takes one zip with every class's file at its top level, empty ones included.
        with atomic_path(output / TASK1_ZIP) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for file_name, text in texts.items():
                archive.writestr(file_name, text)
        printed += [f"wrote DOTA Task-1 files Task1_<class>.txt into {output}",
                    f"wrote {output / TASK1_ZIP}: the {len(texts)} Task-1 files, for DOTA's evaluation server"]
        if timer.seconds:
            seconds = sum(timer.seconds.values())
            printed.append(f"{pixels / 1e6:.1f} Mpx in {seconds:.1f} s ({pixels / 1e6 / seconds:.2f} Mpx/s); by stage: "
                           f"{timer.describe()}")
        return printed
