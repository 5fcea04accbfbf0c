"""Change-detection runs: train into a run directory, evaluate a checkpoint on whole pairs, predict the change
map of a pair of any size by sliding window (GeoTIFF in, GeoTIFF out with the georeference kept)."""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from lemevit.data import band_normalisation
from lemevit.data.change import (
    ChangeDataModule,
    ChangePair,
    ChangePairs,
    check_pairs,
    find_change_splits,
    load_change_split,
    read_list_file,
    save_change_split,
    scan_change_folder,
)
from lemevit.data.images import _rasterio
from lemevit.io import atomic_path
from lemevit.models.change import CHANGE_HEADS, StackedPair
from lemevit.predict_scene import _ClassMapWriter, _Scene, blended_strips, preview_path, window_starts
from lemevit.tasks.change import ChangeTask, change_metrics, pair_confusion
from lemevit.tasks.trainer import RunConfig, check_run_dir, checkpoint_task

__all__ = ["ChangeTrainConfig", "evaluate", "load_task", "predict_pair", "train"]

# Change maps hold 0 (no change) and 255 (change), as LEVIR-CD's labels: a map is itself a valid label.
CHANGE_VALUE = 255
# The GeoTIFF's colour table: black, and white for the change value.
_PALETTE = [(0, 0, 0)] * CHANGE_VALUE + [(255, 255, 255)]
_PREVIEW_MAX_SIDE = 1024
# GDAL's block cache otherwise grows to 5 % of the machine's memory with the blocks of the dates.
_GDAL_CACHE_MB = 64
_OVERLAY_RGB = np.array([1.0, 0.1, 0.1])


@dataclass(kw_only=True)
class ChangeTrainConfig(RunConfig):
    """Everything a change-detection run depends on; saved as ``RUN_DIR/config.yaml``.

    The pairs are split by ``split_files`` (``{"train": LIST, "val": LIST}``, names one per line), else as
    the data comes (``list/*.txt`` or ``train/``, ``val/`` subfolders), else at random with ``split`` of the
    pairs in training (1.0: validate on the training pairs). Training takes random ``img_size`` crops,
    ``crops_per_pair`` per pair and epoch (default: enough to cover each pair once); validation whole pairs
    by sliding window (``window``, default ``img_size``; ``stride``, default three quarters of it).
    """

    task: str = "change"
    img_size: int = 256
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    drop_path_rate: float = 0.0
    gradient_clip: float | None = None
    head: str = "bit"
    crops_per_pair: int | None = None
    window: int | None = None
    stride: int | None = None
    split_files: dict[str, str] = field(default_factory=dict)
    flip: bool = True
    rotate90: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.task != "change":
            raise ValueError(f"a change-detection config has task: change, got {self.task!r}")
        if self.head not in CHANGE_HEADS:
            raise ValueError(f"--head must be one of {', '.join(CHANGE_HEADS)} for --task change, got {self.head!r}")


def _splits(cfg: ChangeTrainConfig) -> dict[str, list[ChangePair]]:
    if cfg.split == 1.0 and not cfg.split_files:
        pairs = scan_change_folder(cfg.data)
        return {"train": pairs, "val": list(pairs)}
    return find_change_splits(cfg.data, cfg.split, cfg.seed, cfg.split_files)


def train(cfg: ChangeTrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train a change network; writes best.ckpt (best val/f1), last.ckpt, split.json, config.yaml and logs/
    into ``cfg.output``."""
    run = Path(cfg.output)
    last = check_run_dir(run, resume)
    root = Path(cfg.data)
    split_path = run / "split.json"
    if resume:
        _, splits = load_change_split(split_path)
    else:
        splits = _splits(cfg)
        check_pairs(root, sorted({p for pairs in splits.values() for p in pairs}, key=lambda p: p.a))
        save_change_split(split_path, splits, root)
        cfg.save(run / "config.yaml")

    bands, mean, std = band_normalisation(root, [path for p in splits["train"] for path in (p.a, p.b)])
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = ChangeDataModule(root, splits, img_size=cfg.img_size, batch_size=cfg.batch_size,
                                  num_workers=cfg.num_workers, mean=mean, std=std, crops_per_pair=cfg.crops_per_pair,
                                  flip=cfg.flip, rotate90=cfg.rotate90, seed=cfg.seed)
    task = ChangeTask(cfg.model, cfg.head, in_chans=bands, img_size=cfg.img_size, window=cfg.window,
                      stride=cfg.stride, mean=mean, std=std, lr=cfg.lr, weight_decay=cfg.weight_decay,
                      warmup_epochs=cfg.warmup_epochs, drop_path_rate=cfg.drop_path_rate,
                      init_checkpoint=cfg.init_checkpoint, seed=cfg.seed)
    trainer = cfg.trainer(monitor="val/f1", progress=progress)
    trainer.fit(task, datamodule=datamodule, ckpt_path=str(last) if resume else None)
    return run


def load_task(checkpoint: str | Path) -> ChangeTask:
    if checkpoint_task(checkpoint) != "change":
        raise ValueError(f"{checkpoint} is not a change-detection checkpoint")
    # The weights come from the checkpoint itself, not from the file the run was initialised from.
    return ChangeTask.load_from_checkpoint(checkpoint, map_location="cpu", init_checkpoint=None).eval()


def _evaluation_pairs(checkpoint: Path, data: str | Path | None) -> tuple[Path, list[ChangePair]]:
    """The run's own test (else validation) pairs; or those of ``data``: its ``list/test.txt``, its ``test/``
    (else ``val/``) subfolder, or every pair of its A/, B/ and label/."""
    if data is None:
        root, splits = load_change_split(checkpoint.parent / "split.json")
        return Path(root), splits.get("test") or splits["val"]
    root = Path(data)
    if not (root / "A").is_dir():
        for subset in ("test", "val"):
            if (root / subset / "A").is_dir():
                return root, scan_change_folder(root / subset, prefix=f"{subset}/")
    pairs = scan_change_folder(root)
    listed = root / "list" / "test.txt"
    return root, read_list_file(listed, pairs) if listed.is_file() else pairs


@torch.inference_mode()
def evaluate(checkpoint: str | Path, output: str | Path, data: str | Path | None = None, window: int | None = None,
             stride: int | None = None, batch_size: int = 8, progress: bool = True) -> dict:
    """Evaluate a run's checkpoint on whole pairs by sliding window (default: the run's window and stride).

    Writes ``metrics.json`` into ``output``: precision, recall, f1 and iou of the change class, oa, the
    confusion matrix, and the same scores per pair.
    """
    checkpoint = Path(checkpoint)
    task = load_task(checkpoint)
    window, stride = window or task.window, stride or task.stride
    root, pairs = _evaluation_pairs(checkpoint, data)
    dataset = ChangePairs(root, pairs, task.hparams.mean, task.hparams.std)
    confusion = torch.zeros(2, 2, dtype=torch.long)
    per_pair = []
    from tqdm.auto import tqdm

    for index in tqdm(range(len(dataset)), desc="evaluating", unit="pair", disable=not progress):
        a, b, target = dataset[index]
        if a.shape[0] != task.hparams.in_chans:
            raise ValueError(f"{root / pairs[index].a} has {a.shape[0]} band(s), the model expects "
                             f"{task.hparams.in_chans}")
        pair = pair_confusion(task.net, a, b, target, window, stride, batch_size)
        confusion += pair
        scores = change_metrics(pair)
        per_pair.append({"name": pairs[index].name} | {k: scores[k] for k in ("f1", "iou", "precision", "recall",
                                                                               "changed_pixels")})
    metrics = change_metrics(confusion)
    metrics.update({"num_pairs": len(pairs), "window": window, "stride": stride, "checkpoint": str(checkpoint),
                    "data": str(root), "per_pair": per_pair})
    with atomic_path(Path(output) / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=1))
    return metrics


def _georeference(first: _Scene, second: _Scene) -> _Scene:
    """The date whose CRS and transform the change map gets; dates georeferenced differently are refused."""
    if first.georeferenced and second.georeferenced and (
            first.crs != second.crs or not first.transform.almost_equals(second.transform)):
        raise ValueError(f"{first.path} and {second.path} are not co-registered: their CRS or geotransforms "
                         f"differ ({first.crs}, {tuple(first.transform)[:6]} vs {second.crs}, "
                         f"{tuple(second.transform)[:6]})")
    return first if first.georeferenced or not second.georeferenced else second


def _display(image: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` data → ``(H, W, 3)`` floats in 0..1: 8-bit as is, else each band stretched between its
    2nd and 98th percentile; the first three bands, or the one band in grey."""
    shown = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    shown = shown.astype(np.float64)
    if image.dtype == np.uint8:
        return shown / 255.0
    low, high = np.percentile(shown, [2, 98], axis=(0, 1))
    return np.clip((shown - low) / np.where(high > low, high - low, 1.0), 0.0, 1.0)


def save_pair_preview(a: np.ndarray, b: np.ndarray, change: np.ndarray, path: str | Path) -> None:
    """``A | B | B with the change in red`` side by side as a PNG; ``change`` is a boolean ``(H, W)`` map."""
    from PIL import Image

    shown_a, shown_b = _display(a), _display(b)
    overlay = shown_b.copy()
    overlay[change] = 0.4 * overlay[change] + 0.6 * _OVERLAY_RGB
    gap = np.ones((a.shape[0], max(2, a.shape[1] // 100), 3))
    strip = np.concatenate([shown_a, gap, shown_b, gap, overlay], axis=1)
    with atomic_path(path) as tmp:
        Image.fromarray((strip * 255).round().astype(np.uint8)).save(tmp, format="PNG")


@torch.inference_mode()
def predict_pair(checkpoint: str | Path, a_path: str | Path, b_path: str | Path, output: str | Path,
                 window: int | None = None, stride: int | None = None, batch_size: int = 8, preview: bool = True,
                 progress: bool = True) -> dict:
    """Write the change map of a pair of any size to ``output`` (.tif or .png, 8-bit, 0 = no change,
    255 = change), predicted by blended sliding windows (default: the run's window and stride).

    The dates are read and the map written strip by strip (GeoTIFF through rasterio windows), so memory
    does not grow with the height of the pair. The map gets the CRS and transform of the georeferenced date
    (dates georeferenced differently are refused); ``preview`` also writes ``<output stem>_preview.png``,
    ``A | B | change in red``, downsampled to at most 1024 pixels a side. Returns ``{"output", "preview",
    "height", "width", "windows", "changed_pixels"}``.
    """
    a_path, b_path, output = Path(a_path), Path(b_path), Path(output)
    if output.suffix.lower() not in (".tif", ".tiff", ".png"):
        raise ValueError(f"--output must end in .tif, .tiff or .png, got {output}")
    for path in (a_path, b_path):
        if not path.is_file():
            raise FileNotFoundError(f"image of the pair not found: {path}")
    task = load_task(checkpoint)
    window, stride = window or task.window, stride or task.stride
    mean = torch.tensor(task.hparams.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(task.hparams.std, dtype=torch.float32)[:, None, None]
    model = StackedPair(task.net)
    device = next(model.parameters()).device

    def predict(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(device)).softmax(dim=1).cpu()

    rasterio = _rasterio()
    with contextlib.ExitStack() as stack:
        if rasterio is not None:
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB))
        first = _Scene(a_path)
        stack.callback(first.close)
        second = _Scene(b_path)
        stack.callback(second.close)
        if (first.height, first.width) != (second.height, second.width):
            raise ValueError(f"the dates of a pair must have the same size: {a_path} is {first.width}x{first.height},"
                             f" {b_path} is {second.width}x{second.height} (width x height)")
        for scene in (first, second):
            if scene.bands != task.hparams.in_chans:
                raise ValueError(f"{scene.path} has {scene.bands} band(s), the model expects {task.hparams.in_chans}")
        georeferenced = _georeference(first, second)
        height, width = first.height, first.width
        step = max(1, math.ceil(max(height, width) / _PREVIEW_MAX_SIDE))
        small_shape = (math.ceil(height / step), math.ceil(width / step))
        small = {"a": None, "b": None, "change": np.zeros(small_shape, bool)}

        def read_rows(top: int, bottom: int) -> torch.Tensor:
            rows = []
            for key, scene in (("a", first), ("b", second)):
                data = scene.read(top, bottom)
                if small[key] is None:
                    small[key] = np.zeros((*small_shape, data.shape[0]), data.dtype)
                first_row = -top % step
                kept = data[:, first_row::step, ::step].transpose(1, 2, 0)
                small[key][(top + first_row) // step:(top + first_row) // step + len(kept)] = kept
                rows.append(torch.from_numpy(data))
            if rows[0].dtype != rows[1].dtype:
                rows = [r.float() for r in rows]
            return torch.cat(rows)

        # Both dates stacked along the bands, each normalised by the run's statistics.
        pair_mean, pair_std = mean.repeat(2, 1, 1), std.repeat(2, 1, 1)

        def normalise(batch: torch.Tensor) -> torch.Tensor:
            return batch.float().sub_(pair_mean).div_(pair_std)

        windows = len(window_starts(height, window, stride)) * len(window_starts(width, window, stride))
        changed = 0
        from tqdm.auto import tqdm

        with atomic_path(output) as tmp, tqdm(total=windows, desc=f"predicting {a_path.name}", unit="window",
                                              disable=not progress) as bar:
            writer = _ClassMapWriter(output, tmp, georeferenced, _PALETTE)
            for top, probs in blended_strips(read_rows, height, width, predict, window, stride, batch_size,
                                             bar.update, normalise):
                change = (probs.argmax(dim=0) == 1).numpy()
                writer.write(top, change.astype(np.uint8) * CHANGE_VALUE)
                changed += int(change.sum())
                first_row = -top % step
                kept = change[first_row::step, ::step]
                small["change"][(top + first_row) // step:(top + first_row) // step + len(kept)] = kept
            writer.close()
    written = None
    if preview:
        written = preview_path(output)
        save_pair_preview(small["a"], small["b"], small["change"], written)
    return {"output": str(output), "preview": str(written) if written else None, "height": height, "width": width,
            "windows": windows, "changed_pixels": changed}
