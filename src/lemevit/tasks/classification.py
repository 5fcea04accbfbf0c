"""Scene recognition: any model of our registry or timm as a classifier of class-per-folder image sets."""
from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch.utils.data import Dataset

from lemevit.config.options import PredictOptions, RunConfig, option
from lemevit.data.classification import (
    RSP_LISTS,
    SCENE_LAYOUT,
    Sample,
    SceneDataset,
    check_images,
    is_label_list,
    is_scene_data,
    read_label_lists,
    read_split_file,
    scan_class_folders,
)
from lemevit.data.datamodule import SeededDataModule
from lemevit.data.files import PredictionFiles, collate_readable
from lemevit.data.splits import Split, missing_files, split_items
from lemevit.data.statistics import Normalisation
from lemevit.data.transforms import INTERPOLATIONS, eval_transform, fill_no_data, pixel_tensor, train_transform
from lemevit.errors import ConfigError, DataError
from lemevit.inference.onnx import OnnxGraph
from lemevit.io import atomic_path
from lemevit.io.images import read_image
from lemevit.io.paths import check_outputs_spare_inputs, check_writable_folder, list_images
from lemevit.metrics.classification import classification_metrics
from lemevit.models import create_model, input_size_kwargs
from lemevit.tasks.base import BaseTask, NamedClasses, initial_weights
from lemevit.tasks.registry import register_task

__all__ = ["ClassificationConfig", "ClassificationPredictOptions", "ClassificationTask"]


@dataclass(kw_only=True)
class ClassificationConfig(RunConfig):
    """A scene-recognition run. The images are split by ``split_files`` (``{"train": LIST, "val": LIST}``, paths
    ``<class>/<image>`` or RSP's ``<image> <class> <index>`` one per line) when given or found (an RSP release),
    else per class with ``split`` of them in training."""

    task: str = option("classification", "the task", cli=False)
    data: str = option(None, "class-per-folder image directory (UC Merced, AID, NWPU-RESISC45, your own), one with "
                             "train/ and val/ such directories (ImageNet's layout), which are the split, or an RSP "
                             "release (all_img/ with train_labels.txt and valid_labels.txt, as MillionAID)")
    split_files: dict[str, str] = option({}, "list files of each subset's images instead of a split by `split`: "
                                             "<class>/<image> one per line, or RSP's <image> <class> <index> lines "
                                             "naming images in all_img/", nargs="+", metavar="SUBSET=FILE")
    split: float = option(0.8, "fraction of each class in training, the rest validates (the papers' protocols: AID "
                               "0.2 or 0.5, NWPU-RESISC45 0.1 or 0.2, UC Merced 0.8; 1.0: validate on the training "
                               "images)")
    img_size: int = option(224, "side of the training crops and of the resized evaluation images, in pixels")
    epochs: int = option(30, "training epochs", resumable=True)
    batch_size: int = option(32, "images per batch and device")
    gradient_clip: float | None = option(1.0, "clip the gradient norm to this value")
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy")
    mixup: float = option(0.0, "mixup alpha (timm's Mixup; 0: off)")
    cutmix: float = option(0.0, "cutmix alpha (timm's Mixup; 0: off)")
    randaugment: str | None = option(None, "timm's RandAugment policy, e.g. rand-m9-mstd0.5-inc1 (8-bit RGB only)")
    color_jitter: float = option(0.0, "brightness, contrast and saturation jitter of this strength (8-bit RGB only; "
                                      "as in timm, not applied with `randaugment`)")
    random_erasing: float = option(0.0, "probability of erasing a random rectangle of a training image with noise "
                                        "(timm's pixel mode)")
    repeated_augmentation: int = option(1, "take each training image this many times in a row, each copy augmented "
                                           "anew, in epochs as long as the data (DeiT's repeated augmentation: 3); "
                                           "under DDP the copies go to different processes")
    interpolation: str = option("bilinear", "resampling of the training crops and of the evaluation resize",
                                choices=tuple(INTERPOLATIONS))
    crop_scale: list[float] = option([0.5, 1.0], "area range of the random resized crop, as fractions of the image",
                                     nargs=2, metavar=("MIN", "MAX"))
    vflip: float = option(0.5, "probability of a vertical flip (scenes without a canonical orientation; the "
                               "horizontal one is 0.5)")
    rotate90: bool = option(True, "random 90-degree rotations (scenes without a canonical orientation)")
    skip_bad: bool = option(False, "skip unreadable images and list them in RUN_DIR/bad_images.json instead of "
                                   "stopping at the first")

    def __post_init__(self):
        super().__post_init__()
        self.check_non_negative("label_smoothing", "mixup", "cutmix", "color_jitter")
        self.check_fraction("random_erasing", low_open=False)
        self.check_fraction("vflip", low_open=False)
        self.check_positive("repeated_augmentation")
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError("crop_scale", f"must be MIN MAX area fractions with 0 < MIN <= MAX <= 1, got "
                                            f"{self.crop_scale}")


@dataclass(kw_only=True)
class ClassificationPredictOptions(PredictOptions):
    output: str = option(None, "FILE.csv or FILE.json: the top classes of every image with their probabilities")
    topk: int = option(5, "how many of the most probable classes to list per image")
    batch_size: int = option(32, "images per batch and device")

    def __post_init__(self):
        super().__post_init__()
        self.check_positive("topk")
        if Path(self.output).suffix.lower() not in (".csv", ".json"):
            raise ConfigError("output", f"must end in .csv or .json, got {self.output}")


@register_task
class ClassificationTask(NamedClasses, BaseTask):
    """Trains and evaluates an image classifier.

    Cross-entropy with label smoothing, optional mixup/cutmix (timm's), AdamW with warm-up and cosine decay;
    validation logs ``val/top1``, ``val/top5`` and ``val/loss`` over all validation images.
    """

    name = "classification"
    description = "scene recognition: a class-per-folder image directory"
    config = ClassificationConfig
    predict_options = ClassificationPredictOptions
    network_is_timm_model = True
    monitor = "val/top1"
    logged_metrics = ("top1", "top5", "loss")
    backbone_prefix = "model."
    entry_type = Sample
    data_layout = SCENE_LAYOUT
    holds_data = staticmethod(is_scene_data)
    loose_layout = True

    # The settings of a run default to its config's (written once there); a checkpoint saved before a setting
    # existed loads with that default too, which is what those runs did.
    def __init__(self, model: str, num_classes: int, class_names: Sequence[str] | None = None, in_chans: int = 3,
                 img_size: int = ClassificationConfig.img_size, mean: Sequence[float] = (123.675, 116.28, 103.53),
                 std: Sequence[float] = (58.395, 57.12, 57.375), input_dtype: str | None = None,
                 optimization: dict | None = None, label_smoothing: float = ClassificationConfig.label_smoothing,
                 mixup: float = ClassificationConfig.mixup, cutmix: float = ClassificationConfig.cutmix,
                 drop_path_rate: float = ClassificationConfig.drop_path_rate,
                 interpolation: str = ClassificationConfig.interpolation, init_checkpoint: str | None = None,
                 seed: int = ClassificationConfig.seed):
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(model, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path_rate,
                                  checkpoint=initial_weights(init_checkpoint), **input_size_kwargs(model, img_size))
        self.mixup = (Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                            num_classes=num_classes) if mixup > 0 or cutmix > 0 else None)
        self.soft_loss = SoftTargetCrossEntropy()

    # --- training ---------------------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, cfg: ClassificationConfig, progress: bool = True) -> tuple[Split, list[dict]]:
        root = Path(cfg.data)
        class_names, subsets = cls._subsets(cfg, root)
        if len(class_names) < 2:
            raise DataError(f"{root} has one class ({class_names[0]}): a classifier needs two classes or more")
        bad = []
        for name in subsets:
            subsets[name], bad_here = check_images(root, subsets[name], cfg.skip_bad)
            bad += bad_here
        return Split(root, subsets, {"class_names": class_names}), bad

    @staticmethod
    def _subsets(cfg: ClassificationConfig, root: Path) -> tuple[list[str], dict[str, list[Sample]]]:
        """Class names and subsets: from list files (ours or RSP's, named or RSP's found in ``root``), else from
        ImageNet's train/ and val/, else from class folders split by ``cfg.split``."""
        lists = cfg.split_files or ({name: str(root / f) for name, f in RSP_LISTS.items()}
                                    if all((root / f).is_file() for f in RSP_LISTS.values()) else {})
        if lists and all(is_label_list(path) for path in lists.values()):
            return read_label_lists(lists, root)
        presplit = not lists and all((root / name).is_dir() for name in ("train", "val"))
        class_names, samples = scan_class_folders(root / "train" if presplit else root)
        if lists:
            return class_names, {name: read_split_file(path, root, class_names) for name, path in lists.items()}
        if not presplit:
            return class_names, split_items(samples, cfg.split, cfg.seed, key=lambda s: s.path,
                                            group=lambda s: s.label, what=f"images in {root}")
        # ImageNet's layout: train/ and val/ of class folders are the split.
        val_names, val = scan_class_folders(root / "val")
        unknown = sorted(set(val_names) - set(class_names))
        if unknown:
            raise DataError(f"{root / 'val'} has classes that {root / 'train'} lacks: {unknown[:5]}")
        return class_names, {"train": [Sample(f"train/{s.path}", s.label) for s in samples],
                             "val": [Sample(f"val/{s.path}", class_names.index(val_names[s.label])) for s in val]}

    @classmethod
    def training_images(cls, split: Split) -> list[Path]:
        return [split.root / s.path for s in split.subsets["train"]]

    @classmethod
    def from_config(cls, cfg: ClassificationConfig, split: Split, normalisation: Normalisation) -> ClassificationTask:
        names = split.meta["class_names"]
        return cls(cfg.model, num_classes=len(names), class_names=names, in_chans=normalisation.bands,
                   img_size=cfg.img_size, mean=normalisation.mean, std=normalisation.std,
                   input_dtype=normalisation.dtype, optimization=cfg.optimization().to_dict(),
                   label_smoothing=cfg.label_smoothing, mixup=cfg.mixup, cutmix=cfg.cutmix,
                   drop_path_rate=cfg.drop_path_rate, interpolation=cfg.interpolation,
                   init_checkpoint=cfg.starting_weights, seed=cfg.seed)

    def datamodule(self, cfg: ClassificationConfig, split: Split) -> SeededDataModule:
        hp = self.hparams
        augment = train_transform(hp.img_size, hp.mean, hp.std, scale=tuple(cfg.crop_scale), rot90=cfg.rotate90,
                                  vflip=cfg.vflip, randaugment=cfg.randaugment, color_jitter=cfg.color_jitter,
                                  random_erasing=cfg.random_erasing, interpolation=hp.interpolation)
        evaluation = {name: self.evaluation_dataset(split.root, split.subsets[name])
                      for name in ("val", "test") if split.subsets.get(name)}
        return SeededDataModule(SceneDataset(split.root, split.subsets["train"], augment), evaluation,
                                cfg.batch_size, cfg.num_workers, cfg.seed, repeats=cfg.repeated_augmentation)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixup is not None and x.shape[0] % 2 == 0:  # timm's Mixup pairs images within the batch
            x, soft = self.mixup(x, y)
            loss = self.soft_loss(self.model(x), soft)
        else:
            loss = F.cross_entropy(self.model(x), y, label_smoothing=self.hparams.label_smoothing)
        self.log_loss(loss, x.shape[0])
        return loss

    # --- evaluation -------------------------------------------------------------------------------------------
    def evaluation_dataset(self, root: Path, items: Sequence[Sample]) -> Dataset:
        hp = self.hparams
        return SceneDataset(root, items, eval_transform(hp.img_size, hp.mean, hp.std, hp.interpolation))

    def evaluation_items(self, data: Path | None, split: Split | None) -> tuple[Path, list[Sample]]:
        if data is None:
            missing = missing_files(split.root, [s.path for s in split.evaluation])
            if missing:
                raise DataError(f"{len(missing)} held-out image(s) of the run are gone, e.g. {missing[0]}")
            return split.root, list(split.evaluation)
        names, samples = scan_class_folders(data)
        unknown = sorted(set(names) - set(self.class_names))
        if unknown:
            raise DataError(f"{data}: classes {unknown} are not among the model's classes {self.class_names}")
        return Path(data), [Sample(s.path, self.class_names.index(names[s.label])) for s in samples]

    def evaluation_records(self, batch) -> list[tuple[int, tuple]]:
        index, x, y = batch
        logits = self(x).float()
        losses = F.cross_entropy(logits, y, reduction="none")
        return [(int(i), (p, int(label), float(loss)))
                for i, p, label, loss in zip(index, logits.softmax(dim=1).cpu(), y, losses, strict=True)]

    def summarize(self, records: list[tuple]) -> dict:
        probs = torch.stack([r[0] for r in records])
        labels = torch.tensor([r[1] for r in records])
        metrics = classification_metrics(probs, labels, self.class_names)
        metrics["loss"] = float(np.mean([r[2] for r in records]))
        return metrics

    def confusion_title(self, metrics: dict) -> str:
        return f"top-1 {metrics['top1']:.1%} on {metrics['num_images']} images"

    def describe(self, metrics: dict) -> str:
        return (f"top-1 {metrics['top1']:.2%}  top-5 {metrics['top5']:.2%}  on {metrics['num_images']} images "
                f"(chance {1 / len(metrics['class_names']):.2%})")

    def onnx_graph(self) -> OnnxGraph:
        return OnnxGraph(self.model, ("image",), ("logits",), self.hparams.in_chans, self.hparams.img_size)

    # --- prediction -------------------------------------------------------------------------------------------
    def load_image(self, path: Path) -> torch.Tensor:
        """An image file as the model's input: its bands and data type checked against the training images',
        resized to the run's size and normalised."""
        return self.prediction_input(path)[0]

    def prediction_input(self, path: Path) -> tuple[torch.Tensor, int]:
        """:meth:`load_image`, and its pixels of no data (NaN or infinite values), which are given the band means
        before the resize (what the model is fed for no data, and so that they do not spread)."""
        image = read_image(path)
        self.check_input(path, image.shape[-1], image.dtype.name)
        hp = self.hparams
        image, valid = fill_no_data(image, hp.mean)
        no_data = 0 if valid is None else int(valid.size - np.count_nonzero(valid))
        return eval_transform(hp.img_size, hp.mean, hp.std)(pixel_tensor(image)), no_data

    def check_prediction(self, options: ClassificationPredictOptions) -> None:
        if not options.inputs:
            raise ConfigError("inputs", "give the images to predict (files, folders or glob patterns)")
        self._inputs = list_images(options.inputs)
        check_writable_folder(Path(options.output).parent)
        check_outputs_spare_inputs(self._inputs, [Path(options.output)])

    def prediction_dataset(self, options: ClassificationPredictOptions) -> Dataset:
        return PredictionFiles(self._inputs, self.prediction_input, options.skip_bad)

    prediction_collate = staticmethod(collate_readable)

    def predict_step(self, batch, batch_idx: int) -> None:
        indices, read, bad = batch
        self._records += [(i, {"path": str(b.path), "error": b.reason}) for i, b in bad]
        if read is None:
            return
        x, no_data = read
        probs = self.probabilities(x)
        self._records += [(i, {"path": str(self._inputs[i]), "probs": p, "no_data_pixels": int(n)})
                          for i, p, n in zip(indices, probs, no_data, strict=True)]

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """The class probabilities ``(B, K)``, on the CPU, of a batch of images as :meth:`load_image` gives them."""
        return self(x).float().softmax(dim=1).cpu()

    def top_classes(self, probs: torch.Tensor, k: int) -> list[dict]:
        """The ``k`` most probable classes of one image's probabilities, as ``{"class": name, "prob": p}``."""
        values, indices = probs.topk(min(k, len(self.class_names)))
        return [{"class": self.class_names[c], "prob": float(p)} for c, p in zip(indices.tolist(), values, strict=True)]

    def finish_prediction(self, records: list[dict], options: ClassificationPredictOptions) -> list[str]:
        k = min(options.topk, len(self.class_names))
        rows, bad = [], [r for r in records if "error" in r]
        for record in records:
            if "probs" in record:
                rows.append({"path": record["path"], "top": self.top_classes(record["probs"], k)})
        output = Path(options.output)
        with atomic_path(output) as tmp:
            if output.suffix.lower() == ".json":
                tmp.write_text(json.dumps(rows, indent=1))
            else:
                with tmp.open("w", newline="") as f:
                    writer = csv.writer(f)
                    writer.writerow(["path"] + [f"{key}_{r}" for r in range(1, k + 1) for key in ("class", "prob")])
                    for row in rows:
                        writer.writerow([row["path"]] + [x for t in row["top"] for x in (t["class"],
                                                                                         f"{t['prob']:.6f}")])
        lines = [f"predicted {len(rows)} images; wrote {output}"]
        lines += [f"skipped {r['path']}: {r['error']}" for r in bad]
        lines += [f"{r['path']}: {r['no_data_pixels']:,} pixels of no data (NaN or infinite values) read as the band "
                  "means" for r in records if r.get("no_data_pixels")]
        return lines
