"""Change detection: BIT or a siamese difference UNet over any backbone, trained on random crops of co-registered
pairs, evaluated and predicted on whole pairs by the blended sliding window of the dense tasks."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lemevit.config.options import option
from lemevit.data.change import (
    CHANGE_LAYOUT,
    IGNORE_INDEX,
    ChangeCrops,
    ChangePair,
    ChangePairs,
    check_pairs,
    find_change_splits,
    is_change_data,
    read_list_file,
    scan_change_folder,
)
from lemevit.data.datamodule import SeededDataModule
from lemevit.data.oscd import OSCD_SCALE, is_oscd_release, stack_oscd
from lemevit.data.splits import Split, missing_files
from lemevit.data.statistics import Normalisation
from lemevit.errors import ConfigError, DataError
from lemevit.inference.onnx import OnnxGraph, Probabilities
from lemevit.inference.scene import predict_scene, preview_path
from lemevit.inference.sliding_window import blended_strips
from lemevit.io.bands import SENTINEL2_BANDS, BandScene, find_band_scenes
from lemevit.io.paths import is_remote, scene_source
from lemevit.io.regions import read_region
from lemevit.losses import dice_loss
from lemevit.metrics.confusion import (
    CHANGE_BINS,
    best_change_threshold,
    change_histogram,
    change_metrics,
    confusion_matrix,
)
from lemevit.models.change import CHANGE_HEADS, StackedPair, create_change_model
from lemevit.tasks.base import initial_weights
from lemevit.tasks.dense import (
    CropTrainingConfig,
    SlidingWindowTask,
    WindowEvalOptions,
    WindowPredictOptions,
)
from lemevit.tasks.registry import register_task
from lemevit.viz import CHANGE_RGB, save_pair_preview

__all__ = ["CHANGE_NODATA", "CHANGE_VALUE", "ChangeConfig", "ChangeEvalOptions", "ChangePredictOptions", "ChangeTask"]

#: Change maps hold 0 (no change) and 255 (change), as LEVIR-CD's labels: a map is itself a valid label.
CHANGE_VALUE = 255
#: The no-data value the GeoTIFF change maps declare: neither 0 nor the change value.
CHANGE_NODATA = 128
# The GeoTIFF's colour table: black, and white for the change value.
_PALETTE = [(0, 0, 0)] * CHANGE_VALUE + [(255, 255, 255)]
_VALUE_NAMES = {0: "no change", CHANGE_VALUE: "change"}
_PREVIEW_SIDE = 1024
#: The folder of a run (or of an evaluation's output) that the OSCD release is stacked into.
OSCD_STACK = "oscd"


def _check_thresholds(options) -> None:
    if options.threshold is not None:
        options.check_fraction("threshold", high_open=True)
    value = getattr(options, "mask_threshold", None)  # predict reads no masks
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255):
        raise ConfigError("mask_threshold", f"is the mask value from which a pixel is change, 1..255; got {value!r}")


_THRESHOLD_HELP = "change probability from which a pixel is change"
_MASK_THRESHOLD_HELP = ("read change masks with values between 0 and 255 (anti-aliased outlines) as change from this "
                        "value up, instead of refusing them")


@dataclass(kw_only=True)
class ChangeConfig(CropTrainingConfig):
    """A change-detection run. The pairs are split by ``split_files`` (``{"train": LIST, "val": LIST}``, names
    one per line), else as the data comes (``list/*.txt`` or ``train/``, ``val/`` subfolders), else at random
    with ``split`` of the pairs in training (1.0: validate on the training pairs). ``data`` may be the OSCD
    release, whose labelled cities (those of ``split_files``, else of its ``train.txt``) are stacked once into
    ``<output>/oscd/`` (``bands``, as reflectance ``DN * reflectance_scale + reflectance_offset``; see
    :func:`~lemevit.data.oscd.stack_oscd`) and trained on as a prepared folder. Training takes random
    ``img_size`` crops, ``crops_per_pair`` per pair and epoch (default: enough to cover each pair once);
    validation whole pairs by sliding window (``window``, default ``img_size``; ``stride``, default three
    quarters of it)."""

    task: str = option("change", "the task", cli=False)
    data: str = option(None, "a folder with A/, B/ and label/ (LEVIR-CD, CDD; list/*.txt or train/, val/ "
                             "subfolders, when present, are the split), or A/, B/ and OUT/ (the CDD release), or the "
                             "OSCD release (stacked into `output`/oscd/)")
    split_files: dict[str, str] = option({}, "list files of each subset's pairs (names one per line; of the OSCD "
                                             "release, cities) instead of a split by `split`", nargs="+",
                                         metavar="SUBSET=FILE")
    bands: list[str] = option([], "with the OSCD release as `data`, the Sentinel-2 bands to stack, in order (default "
                                  "all 13; B04 B03 B02 for RGB)", nargs="+", metavar="NAME")
    reflectance_scale: float | None = option(None, "with the OSCD release as `data`, reflectance = DN * scale + "
                                                   f"offset (default {OSCD_SCALE:g}, that of OSCD's L1C products)")
    reflectance_offset: float | None = option(None, "with the OSCD release as `data`, that offset (default 0)")
    model: str = option("lemevit_tiny.aid150", "any model name of lemevit (`lemevit models`) or timm; one with "
                                               "pretrained weights (`lemevit models --pretrained`) starts from them, "
                                               "an untagged one such as lemevit_tiny from scratch")
    pretrained: bool | None = option(None, "start from the pretrained weights --model names (default: whenever it "
                                           "names some and no --init-checkpoint is given: on pairs never trained on, "
                                           "they are what makes a model find change)")
    img_size: int = option(256, "side of the random training crops, in pixels")
    epochs: int = option(100, "training epochs", resumable=True)
    batch_size: int = option(8, "crops per batch and device; windows per batch at validation")
    weight_decay: float = option(0.01, "AdamW weight decay (not on norms, biases, tokens and embeddings)")
    drop_path_rate: float = option(0.0, "stochastic depth of the backbone")
    head: str = option("bit", "the change head: BIT, or a siamese difference UNet", choices=CHANGE_HEADS)
    crops_per_pair: int | None = option(None, "random crops per pair and epoch (default: enough to cover the pair "
                                              "once)")
    dice_weight: float = option(1.0, "weight of a Dice loss added to the cross-entropy (0: cross-entropy alone, which "
                                     "on pairs of little change learns to predict none)")
    change_balance: float = option(0.5, "fraction of crops placed on changed pixels, the rest uniform (0: all uniform)")
    threshold: float = option(0.5, _THRESHOLD_HELP + " (validation, and eval and predict unless they are given one)")
    mask_threshold: int | None = option(None, _MASK_THRESHOLD_HELP)

    def __post_init__(self):
        super().__post_init__()
        self.check_positive("crops_per_pair", allow_none=True)
        self.check_non_negative("dice_weight")
        self.check_fraction("change_balance", low_open=False)
        unknown = [b for b in self.bands if b not in SENTINEL2_BANDS]
        if unknown or len(set(self.bands)) < len(self.bands):
            raise ConfigError("bands", f"takes Sentinel-2 bands, each once, of {' '.join(SENTINEL2_BANDS)}; got "
                                       f"{' '.join(unknown or self.bands)}")
        if self.threshold is None:
            raise ConfigError("threshold", "must be a number in (0, 1)")
        _check_thresholds(self)


@dataclass(kw_only=True)
class ChangeEvalOptions(WindowEvalOptions):
    split_files: dict[str, str] = option({}, "test=FILE: score only the pairs it names (of the OSCD release as "
                                             "`data`: the cities, stacked into `output`/oscd/ with the bands of the "
                                             "model, as reflectance DN / 10000)", nargs="+", metavar="test=FILE")
    threshold: float | None = option(None, _THRESHOLD_HELP + " (default: the run's); the F1 of the best threshold "
                                           "is reported too")
    mask_threshold: int | None = option(None, _MASK_THRESHOLD_HELP + " (default: the run's)")

    def __post_init__(self):
        super().__post_init__()
        if self.split_files and set(self.split_files) != {"test"}:
            raise ConfigError("split_files", f"takes test=FILE, the pairs to score; got {sorted(self.split_files)}")
        _check_thresholds(self)


@dataclass(kw_only=True)
class ChangePredictOptions(WindowPredictOptions):
    pair: list[str] = option([], "the two dates (any size, the same size; GeoTIFF pairs give a GeoTIFF), each an image "
                                 "or a scene of band files (a folder of *_B02.tif, a Sentinel-2 SAFE, a STAC Item), "
                                 "read on the grid of its finest chosen band", nargs=2,
                             metavar=("A_IMAGE", "B_IMAGE"))
    pairs: str | None = option(None, "instead of --pair, a folder of pairs: A/ and B/ holding each pair's dates under "
                                     "one name (the training layout; label/ is not needed)")
    threshold: float | None = option(None, _THRESHOLD_HELP + " (default: the run's)")
    output: str = option(None, "with --pair, OUT.tif or OUT.png: the change map (0 no change, 255 change; a "
                               "Cloud-Optimized GeoTIFF declaring 128 as no data; OUT_preview.png: A | B | change in "
                               "red); with --pairs, a folder of NAME.tif|png maps")

    def __post_init__(self):
        super().__post_init__()
        if self.inputs or (len(self.pair) == 2) == (self.pairs is not None):
            raise ConfigError("pair", "a change checkpoint predicts pairs: give the two dates to `pair`, or a folder "
                                      "of pairs (A/, B/) to `pairs`, and no other images")
        _check_thresholds(self)


@register_task
class ChangeTask(SlidingWindowTask):
    """Trains and evaluates a change network (:func:`~lemevit.models.change.create_change_model`).

    Cross-entropy over no change / change, ignoring padding, plus ``dice_weight`` times the Dice loss, which
    weighs the few changed pixels as much as the many unchanged ones. A pixel is change where its change
    probability reaches ``threshold``. Validation predicts each whole validation pair by sliding window and logs
    ``val/f1``, ``val/iou``, ``val/precision``, ``val/recall`` (change class), ``val/oa`` and ``val/best_f1``
    (the F1 of the best threshold) over all of them.
    """

    name = "change"
    description = "change detection: co-registered pairs in A/, B/ and label/ (or OUT/), or the OSCD release"
    config = ChangeConfig
    eval_options = ChangeEvalOptions
    predict_options = ChangePredictOptions
    monitor = "val/f1"
    logged_metrics = ("f1", "iou", "precision", "recall", "oa", "best_f1")
    backbone_prefix = "model.encoder."
    entry_type = ChangePair
    data_layout = CHANGE_LAYOUT + ", or the OSCD release"
    item_noun = "pair"
    holds_data = staticmethod(lambda root: is_change_data(root) or is_oscd_release(root))
    find_unused_parameters = True

    # The settings of a run default to its config's (written once there). A checkpoint saved before the Dice loss
    # and the thresholds were settings loads with these defaults: the thresholds are what those runs used (0.5,
    # masks read exactly); dice_weight only weighs training, so it changes nothing of such a checkpoint's eval or
    # predict.
    def __init__(self, model: str, head: str = ChangeConfig.head, in_chans: int = 3,
                 img_size: int = ChangeConfig.img_size, window: int | None = None, stride: int | None = None,
                 mean: Sequence[float] = (123.675, 116.28, 103.53), std: Sequence[float] = (58.395, 57.12, 57.375),
                 input_dtype: str | None = None, band_names: Sequence[str] | None = None, reflectance: bool = False,
                 optimization: dict | None = None, drop_path_rate: float = ChangeConfig.drop_path_rate,
                 init_checkpoint: str | None = None, seed: int = ChangeConfig.seed,
                 dice_weight: float = ChangeConfig.dice_weight, threshold: float = ChangeConfig.threshold,
                 mask_threshold: int | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.set_window(window, stride)
        self.threshold, self.mask_threshold = threshold, mask_threshold
        self.evaluation_request: dict = {}
        self.model = create_change_model(head, model, in_chans=in_chans, checkpoint=initial_weights(init_checkpoint),
                                         drop_path_rate=drop_path_rate)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.model(a, b)

    # --- training ---------------------------------------------------------------------------------------------
    @classmethod
    def data_root(cls, cfg: ChangeConfig, progress: bool = True) -> Path:
        root = Path(cfg.data)
        if not is_oscd_release(root):
            for name in ("bands", "reflectance_scale", "reflectance_offset"):
                if getattr(cfg, name) not in (None, []):
                    raise ConfigError(name, f"picks the bands of the OSCD release, and {root} is not it: a folder "
                                            "of pairs is trained on with the bands its images have")
            return root
        return stack_oscd(root, Path(cfg.output) / OSCD_STACK, cfg.bands, cfg.split_files or None,
                          scale=OSCD_SCALE if cfg.reflectance_scale is None else cfg.reflectance_scale,
                          offset=cfg.reflectance_offset or 0.0, progress=progress)

    @classmethod
    def prepare(cls, cfg: ChangeConfig, progress: bool = True) -> tuple[Split, list[dict]]:
        root = cls.data_root(cfg, progress)
        # The stack of the OSCD release lists the cities of `split_files` in its list/ folder.
        subsets = find_change_splits(root, cfg.split, cfg.seed, None if root != Path(cfg.data) else cfg.split_files)
        check_pairs(root, sorted({p for pairs in subsets.values() for p in pairs}, key=lambda p: p.a),
                    cfg.mask_threshold)
        return Split(root, subsets), []

    @classmethod
    def training_images(cls, split: Split) -> list[Path]:
        return [split.root / path for p in split.subsets["train"] for path in (p.a, p.b)]

    @classmethod
    def from_config(cls, cfg: ChangeConfig, split: Split, normalisation: Normalisation) -> ChangeTask:
        return cls(cfg.model, cfg.head, in_chans=normalisation.bands, img_size=cfg.img_size, window=cfg.window,
                   stride=cfg.stride, mean=normalisation.mean, std=normalisation.std,
                   input_dtype=normalisation.dtype,
                   band_names=normalisation.band_names, reflectance=normalisation.reflectance,
                   optimization=cfg.optimization().to_dict(),
                   drop_path_rate=cfg.drop_path_rate, init_checkpoint=cfg.starting_weights, seed=cfg.seed,
                   dice_weight=cfg.dice_weight, threshold=cfg.threshold, mask_threshold=cfg.mask_threshold)

    def datamodule(self, cfg: ChangeConfig, split: Split) -> SeededDataModule:
        hp = self.hparams
        crops = ChangeCrops(split.root, split.subsets["train"], hp.img_size, hp.mean, hp.std,
                            crops_per_pair=cfg.crops_per_pair, flip=cfg.flip, rotate90=cfg.rotate90,
                            scale_range=cfg.scale_range, photometric=cfg.photometric,
                            change_balance=cfg.change_balance, mask_threshold=hp.mask_threshold)
        evaluation = {name: self.evaluation_dataset(split.root, split.subsets[name])
                      for name in ("val", "test") if split.subsets.get(name)}
        self.inference_batch_size = cfg.batch_size
        return SeededDataModule(crops, evaluation, cfg.batch_size, cfg.num_workers, cfg.seed, eval_batch_size=1)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        a, b, target = batch
        logits = self.model(a, b)
        parts = {"ce": F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)}
        if self.hparams.dice_weight:
            parts["dice"] = self.hparams.dice_weight * dice_loss(logits, target)
        loss = sum(parts.values())
        self.log_loss(loss, a.shape[0])
        return loss

    # --- evaluation -------------------------------------------------------------------------------------------
    def evaluation_dataset(self, root: Path, items: Sequence[ChangePair]) -> Dataset:
        return _NamedPairs(ChangePairs(root, items, self.hparams.mean, self.hparams.std, self.mask_threshold))

    def evaluation_items(self, data: Path | None, split: Split | None) -> tuple[Path, list[ChangePair]]:
        if data is None:
            missing = missing_files(split.root, [path for p in split.evaluation for path in (p.a, p.b, p.label)])
            if missing:
                raise DataError(f"{len(missing)} file(s) of the run's held-out pairs are gone, e.g. {missing[0]}")
            return split.root, list(split.evaluation)
        root = Path(data)
        named = self.evaluation_request.get("test")
        if is_oscd_release(root):
            trained = self.hparams.get("band_names")
            if not trained or not set(trained) <= set(SENTINEL2_BANDS):
                raise ConfigError("data", f"{root} is the OSCD release, Sentinel-2 band files; this model was trained "
                                          f"on the bands {list(trained or [])}, not on Sentinel-2 bands")
            if not named:
                raise ConfigError("split_files", f"is required with the OSCD release {root}: test=FILE naming the "
                                                 "labelled cities to score")
            root = stack_oscd(root, self.evaluation_request["stack"], trained, {"test": named},
                              progress=self.show_progress)
        pairs = None
        if not (root / "A").is_dir():
            for subset in ("test", "val"):
                if (root / subset / "A").is_dir():
                    pairs = scan_change_folder(root / subset, prefix=f"{subset}/")
                    break
        if pairs is None:
            pairs = scan_change_folder(root)
            listed = root / "list" / "test.txt"
            pairs = read_list_file(listed, pairs) if listed.is_file() else pairs
        if named and not is_oscd_release(data):
            pairs = read_list_file(named, scan_change_folder(root))
        first = read_region(root / pairs[0].a, 0, 0, 1, 1)
        self.check_input(root / pairs[0].a, first.shape[-1], first.dtype.name)
        return root, pairs

    def configure_inference(self, options) -> None:
        super().configure_inference(options)
        if isinstance(options, ChangeEvalOptions):
            # What evaluation_items reads beyond the data: the named pairs, and where the OSCD release is stacked.
            self.evaluation_request = {"test": options.split_files.get("test"),
                                       "stack": Path(options.output) / OSCD_STACK}
        if getattr(options, "threshold", None) is not None:
            self.threshold = options.threshold
        if getattr(options, "mask_threshold", None) is not None:
            self.mask_threshold = options.mask_threshold

    def evaluation_records(self, batch) -> list[tuple[int, tuple]]:
        """Per pair, the confusion matrix at the threshold and the binned change probabilities of each true class,
        from which the F1 of any other threshold follows."""
        index, a, b, target, name = batch
        image, target = torch.cat([a[0], b[0]]), target[0]
        confusion = torch.zeros(2, 2, dtype=torch.long)
        histogram = torch.zeros(2, CHANGE_BINS, dtype=torch.long)
        for top, probs in blended_strips(lambda start, end: image[:, start:end].cpu(), image.shape[1], image.shape[2],
                                         self.window_predictor(StackedPair(self.model)), self.window, self.stride,
                                         self.inference_batch_size):
            rows = target[top:top + probs.shape[1]].cpu()
            confusion += confusion_matrix((probs[1] >= self.threshold).long(), rows, 2)
            histogram += change_histogram(probs[1], rows)
        return [(int(index[0]), (name[0], confusion, histogram))]

    def summarize(self, records: list[tuple]) -> dict:
        per_pair = []
        for name, confusion, _ in records:
            scores = change_metrics(confusion)
            per_pair.append({"name": name} | {k: scores[k] for k in ("f1", "iou", "precision", "recall",
                                                                      "changed_pixels")})
        metrics = change_metrics(torch.stack([c for _, c, _ in records]).sum(dim=0))
        best_threshold, best_f1 = best_change_threshold(torch.stack([h for _, _, h in records]).sum(dim=0))
        metrics.update({"threshold": self.threshold, "best_threshold": best_threshold, "best_f1": best_f1,
                        "num_pairs": len(records), "window": self.window, "stride": self.stride,
                        "per_pair": per_pair})
        return metrics

    def describe(self, metrics: dict) -> str:
        scores = "  ".join(f"{k} {'n/a' if metrics[k] is None else format(metrics[k], '.2%')}"
                           for k in ("f1", "iou", "precision", "recall", "oa"))
        best = "" if metrics["best_f1"] is None else \
            f"  (best threshold {metrics['best_threshold']:g}: f1 {metrics['best_f1']:.2%})"
        return (f"change class at threshold {metrics['threshold']:g}: {scores}  on {metrics['num_pairs']} pairs"
                f"{best}")

    def label_names(self) -> list[str]:
        return ["no change", "change"]

    def onnx_graph(self) -> OnnxGraph:
        return OnnxGraph(Probabilities(self.model), ("image_a", "image_b"), ("probabilities",),
                         self.hparams.in_chans, self.window)

    # --- prediction -------------------------------------------------------------------------------------------
    def check_prediction(self, options: ChangePredictOptions) -> None:
        if options.pairs is not None:
            root = Path(options.pairs)
            pairs = [(self.scene_bands(root / p.a), self.scene_bands(root / p.b))
                     for p in scan_change_folder(root, labels=False)]
        else:
            pairs = [tuple(self._date(date) for date in options.pair)]
        # A pair's map is named after its first date.
        self._outputs = self.map_outputs([a for a, _ in pairs], Path(options.output),
                                         inputs=[date for pair in pairs for date in pair])
        self._pairs = pairs

    def _date(self, date: str) -> Path | str | BandScene:
        """A date of ``pair``: an image file or URL, or a scene of band files (a band folder, a SAFE, a STAC
        Item) reduced to the model's bands."""
        scenes = find_band_scenes(date)
        if scenes is not None:
            if len(scenes) != 1:
                raise ConfigError("pair", f"{date} holds {len(scenes)} scenes; give one date (one STAC Item)")
            return self.scene_bands(scenes[0])
        date = scene_source(date)
        if not is_remote(date):  # GDAL tells when it opens a URL
            if date.is_dir():
                raise ConfigError("pair", f"{date} is a folder; give the two image files of the pair (or scenes of "
                                          "band files: band folders, SAFEs, STAC Items), or the folder of pairs to "
                                          "`pairs`")
            if not date.is_file():
                raise ConfigError("pair", f"{date} does not exist")
        return self.scene_bands(date)

    def prediction_dataset(self, options: ChangePredictOptions) -> Dataset:
        return self.pending_jobs(list(zip(self._pairs, self._outputs, strict=True)), options)

    def predict_step(self, batch, batch_idx: int) -> None:
        index, dates, output = batch
        self.predict_claimed(index, output, lambda: self.predict_map(dates, output))

    def predict_map(self, scenes: Sequence[Path | str], output: Path) -> dict:
        hp = self.hparams
        model_seconds = self.model_seconds
        probabilities = self.probability_output(output, ["change probability"], bands=lambda probs: probs[1:])
        result = predict_scene(self.window_predictor(StackedPair(self.model)), scenes, output, [*hp.mean, *hp.mean],
                               [*hp.std, *hp.std], _PALETTE, window=self.window, stride=self.stride,
                               batch_size=self.inference_batch_size,
                               to_map=lambda probs: (probs[1] >= self.threshold).to(torch.uint8) * CHANGE_VALUE,
                               preview_side=_PREVIEW_SIDE, progress=self.show_progress,
                               expected_dtype=hp.get("input_dtype"), value_names=_VALUE_NAMES, nodata=CHANGE_NODATA,
                               probabilities=probabilities)
        preview = None
        if self.write_preview:
            preview = preview_path(output)
            save_pair_preview(*result.small_scenes, result.small_map == CHANGE_VALUE, preview)
        return {"output": str(output), "preview": str(preview) if preview else None,
                "probabilities": str(probabilities.path) if probabilities else None,
                "vector": self.write_vectors(output, {CHANGE_VALUE: "change"}),
                "html": self.write_page(output, result, "change", {CHANGE_VALUE: [round(255 * c) for c in CHANGE_RGB]},
                                        _VALUE_NAMES, ["date A", "date B"]),
                "height": result.height, "width": result.width,
                "changed_pixels": int(result.value_pixels[CHANGE_VALUE]),
                "no_data_pixels": result.no_data_pixels,
                "model_seconds": self.model_seconds - model_seconds}

    def finish_prediction(self, records: list[dict], options: ChangePredictOptions) -> list[str]:
        return [f"wrote {r['output']}: {r['width']}x{r['height']} change map, {r['changed_pixels']:,} changed pixels"
                + self.no_data_left_out(r) + self.companions_written(r)
                for r in records if "height" in r] + [self.prediction_summary(records)]


class _NamedPairs(Dataset):
    """``(a, b, mask, name)``: evaluation pairs with their name, for the per-pair scores."""

    def __init__(self, pairs: ChangePairs):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple:
        return (*self.pairs[index], self.pairs.pairs[index].name)
