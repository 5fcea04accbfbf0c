"""Semantic segmentation data: image/mask folder pairs, the label scheme of a data set (a preset of
:mod:`lemevit.labels`, given class names or the root's ``classes.yaml``), tile splits, random crops from large
tiles and whole-tile evaluation.

A dataset is a root folder with ``img_dir/`` and ``ann_dir/`` (mmsegmentation's layout): every image has
a mask of the same relative path and name stem (any image extension) in ``ann_dir``. Either folder may
hold ``train/``, ``val/`` and ``test/`` subfolders, which then are the split. ADE20K's release
(ADEChallengeData2016) is read as it comes: ``images/`` and ``annotations/``, whose ``training/`` and
``validation/`` subfolders are the split. Masks are stored either as class values (one band, 8 or 16 bit)
or colour-coded (RGB, as ISPRS distributes its labels); the :class:`LabelScheme` says how to turn either
into class indices, with ``IGNORE_INDEX`` for pixels without a label.
"""
from __future__ import annotations

import bisect
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from lemevit.data.splits import SUBSETS, split_items
from lemevit.data.transforms import (
    PhotometricDistortion,
    check_scale_range,
    class_cells,
    crop_origin,
    draw_flips_and_turns,
    flipped_and_turned,
    normalised_tensor,
    pixel_tensor,
    region_side,
    rescaled,
)
from lemevit.errors import ConfigError, DataError
from lemevit.io.images import IMAGE_EXTENSIONS, read_image
from lemevit.io.regions import RegionReader, raster_size, read_region
from lemevit.labels import IGNORE_INDEX, LABELS_FILE, PRESETS, LabelScheme

__all__ = [
    "SEGMENTATION_LAYOUT",
    "is_segmentation_data",
    "SegmentationCrops",
    "SegmentationTiles",
    "TilePair",
    "check_pairs",
    "dataset_subsets",
    "resolve_labels",
    "scan_pairs",
    "split_tiles",
]


_PROGRESS_MIN_TILES = 50
#: Crop positions :class:`SegmentationCrops` tries with ``cat_max_ratio`` (mmsegmentation's ``RandomCrop``).
_CAT_MAX_TRIES = 10



def resolve_labels(root: str | Path, preset: str | None = None, class_names: Sequence[str] | None = None,
                   ignore_value: int | None = None, first_class_value: int | None = None) -> LabelScheme:
    """The label scheme of a dataset: a preset, else the given class names, else ``root/classes.yaml``;
    ``ignore_value`` and ``first_class_value``, when given, override what those say."""
    root = Path(root)
    if preset is not None and class_names:
        raise ConfigError("class_names", "give either `preset` or `class_names`, not both")
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError("preset", f"unknown preset {preset!r}; the presets are {sorted(PRESETS)}")
        scheme = PRESETS[preset].to_dict()
    elif class_names:
        scheme = {"class_names": list(class_names)}
    elif (root / LABELS_FILE).is_file():
        try:
            scheme = yaml.safe_load((root / LABELS_FILE).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise DataError(f"cannot read {root / LABELS_FILE}: {e}") from e
    else:
        raise DataError(f"{root}: no class names: give `preset` ({', '.join(sorted(PRESETS))}) or `class_names`, "
                         f"or write {root / LABELS_FILE} with class_names (and ignore_value, first_class_value, "
                         f"palette)")
    if ignore_value is not None:
        scheme["ignore_value"] = ignore_value
    if first_class_value is not None:
        scheme["first_class_value"] = first_class_value
    source = f"preset {preset}" if preset else "--class-names" if class_names else str(root / LABELS_FILE)
    return LabelScheme.from_dict(scheme, source)


@dataclass(frozen=True)
class TilePair:
    image: str  # relative to the dataset root, POSIX separators
    mask: str


def _images_below(folder: Path) -> dict[str, str]:
    """Relative path without extension -> relative path, of every image below ``folder``."""
    found: dict[str, str] = {}
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(current).relative_to(folder)
        for name in files:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            path = (rel / name).as_posix()
            key = str(PurePosixPath(path).with_suffix(""))
            if key in found:
                raise DataError(f"{folder}: {found[key]} and {path} have the same name; keep one")
            found[key] = path
    return found


@dataclass(frozen=True)
class _Layout:
    images: str  # the folder of the images, below the dataset root
    masks: str  # the folder of the masks
    subsets: dict[str, str]  # subset -> its subfolder in both


#: The folder layouts a dataset may have: mmsegmentation's, and that of ADE20K's release (ADEChallengeData2016).
_LAYOUTS = (_Layout("img_dir", "ann_dir", {s: s for s in SUBSETS}),
            _Layout("images", "annotations", {"train": "training", "val": "validation"}))


def _described(layout: _Layout) -> str:
    return f"{layout.images}/ (images) and {layout.masks}/ (masks of the same names)"


#: The layout of a segmentation data set, as messages name it.
SEGMENTATION_LAYOUT = " or ".join(map(_described, _LAYOUTS))


def is_segmentation_data(root: str | Path) -> bool:
    """Whether ``root`` is laid out as a segmentation data set (its images' and masks' folders are there)."""
    return any((Path(root) / layout.images).is_dir() and (Path(root) / layout.masks).is_dir() for layout in _LAYOUTS)


def _layout(root: Path) -> _Layout:
    """The layout whose image folder ``root`` has; an error when it has none, or the folders of two."""
    found = [layout for layout in _LAYOUTS if (root / layout.images).is_dir()]
    if not found:
        raise DataError(f"{root} is not a segmentation dataset: expected {' or '.join(map(_described, _LAYOUTS))}")
    if len(found) > 1:
        raise DataError(f"{root} has both {' and '.join(f'{layout.images}/' for layout in found)}; a segmentation "
                        f"dataset holds {' or '.join(map(_described, found))}: keep one")
    layout = found[0]
    if not (root / layout.masks).is_dir():
        raise DataError(f"{root / layout.masks} not found: a segmentation dataset with {layout.images}/ holds "
                        f"{_described(layout)}")
    return layout


def scan_pairs(root: str | Path, subset: str | None = None) -> list[TilePair]:
    """Every image of ``root/img_dir[/subset]`` with its mask in ``root/ann_dir[/subset]`` (ADE20K's
    ``images/`` and ``annotations/``, whose subsets are ``training/`` and ``validation/``), sorted.

    Raises a DataError naming the missing folder, or the image whose mask is missing.
    """
    root = Path(root)
    layout = _layout(root)
    images_dir, masks_dir = root / layout.images, root / layout.masks
    if subset is not None:
        images_dir, masks_dir = images_dir / layout.subsets[subset], masks_dir / layout.subsets[subset]
    images, masks = _images_below(images_dir), _images_below(masks_dir)
    if not images:
        raise DataError(f"{images_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    prefix = PurePosixPath(images_dir.relative_to(root).as_posix())
    mask_prefix = PurePosixPath(masks_dir.relative_to(root).as_posix())
    pairs = []
    for key, image in sorted(images.items()):
        if key not in masks:
            raise DataError(f"no mask for image {images_dir / image}: expected {masks_dir / key}.<png|tif|...>")
        pairs.append(TilePair((prefix / image).as_posix(), (mask_prefix / masks[key]).as_posix()))
    return pairs


def dataset_subsets(root: str | Path) -> list[str]:
    """The subsets (``train``, ``val``, ``test``) of a dataset stored as ``img_dir/{train,val,test}/`` or
    ``images/{training,validation}/`` (empty for a flat one)."""
    root = Path(root)
    layout = _layout(root)
    return [s for s, folder in layout.subsets.items() if (root / layout.images / folder).is_dir()]


def split_tiles(root: str | Path, train_fraction: float, seed: int) -> dict[str, list[TilePair]]:
    """``{"train", "val"[, "test"]}`` tile pairs: the dataset's own subfolders when it has them, else a seeded
    split of the tiles with ``train_fraction`` of them in training. ``train_fraction`` 1.0 validates on the
    training tiles (for overfitting a few tiles)."""
    subsets = dataset_subsets(root)
    if subsets:
        if "train" not in subsets or "val" not in subsets:
            layout = _layout(Path(root))
            raise DataError(f"{Path(root) / layout.images} has subfolders "
                            f"{[layout.subsets[s] for s in subsets]}; a split needs "
                            f"{layout.subsets['train']}/ and {layout.subsets['val']}/")
        return {s: scan_pairs(root, s) for s in subsets}
    return split_items(scan_pairs(root), train_fraction, seed, key=lambda p: p.image, what=f"tiles in {root}")


def _progress(items: Sequence, desc: str) -> Iterable:
    if len(items) < _PROGRESS_MIN_TILES:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="tile")


def check_pairs(root: str | Path, pairs: Sequence[TilePair], labels: LabelScheme) -> dict:
    """Read every mask and every image header: masks must decode under ``labels`` and match their image's
    size; all images must have the same band count and data type. Raises ValueError naming the file.
    Returns ``{"pixels_per_class": {name: count}, "ignored_pixels": n, "bands": C, "dtype": str}``."""
    root = Path(root)
    counts = np.zeros(IGNORE_INDEX + 1, dtype=np.int64)
    reference = None
    for pair in _progress(pairs, "checking masks"):
        image_path, mask_path = root / pair.image, root / pair.mask
        image = read_region(image_path, 0, 0, 1, 1)
        kind = (image.shape[2], image.dtype.name)
        if reference is None:
            reference = (kind, image_path)
        elif kind != reference[0]:
            raise DataError(f"image {image_path} has {kind[0]} band(s) of {kind[1]}, but {reference[1]} has "
                             f"{reference[0][0]} of {reference[0][1]}; all images must be alike")
        size, mask_size = raster_size(image_path), raster_size(mask_path)
        if size != mask_size:
            raise DataError(f"mask {mask_path} is {mask_size[1]}x{mask_size[0]} (WxH), its image {image_path} is "
                             f"{size[1]}x{size[0]}")
        counts += np.bincount(labels.decode(read_image(mask_path), mask_path).ravel(), minlength=IGNORE_INDEX + 1)
    return {"pixels_per_class": {n: int(counts[i]) for i, n in enumerate(labels.class_names)},
            "ignored_pixels": int(counts[IGNORE_INDEX]), "bands": reference[0][0], "dtype": reference[0][1]}


class SegmentationCrops(Dataset):
    """Random square crops of ``img_size`` from training tiles, with random flips and 90° rotations.

    Item ``i`` is a crop of tile ``t`` where ``crops_per_tile`` items are given to each tile in turn; its
    position and augmentation are drawn from a generator seeded by ``(augment_seed, i)``, so that the same
    item is the same crop whichever worker loads it. Tiles smaller than ``img_size`` are padded (image with
    the band means, mask with ``IGNORE_INDEX``). Gives ``(image, mask)``: the image normalised, float32
    ``(C, S, S)``; the mask int64 ``(S, S)`` class indices.

    ``class_balance`` is the fraction of crops placed to contain a class drawn uniformly from those of the
    tile (the rest are uniform over the tile): a class covering 2 % of a tile is otherwise in few crops and
    rarely predicted. Such a crop contains a whole cell of ``img_size // 4`` pixels where the class occurs;
    the cells are found once, from each mask, when the dataset is built.

    The recipes of mmsegmentation add three augmentations. ``scale_range`` cuts each crop from the tile resized
    by a factor drawn in that range (a region of ``img_size / factor`` pixels resized to ``img_size``: see
    :func:`~lemevit.data.transforms.rescaled`), so that the model sees objects at more than the one ground
    resolution of the data. ``cat_max_ratio`` tries up to ten positions for a crop that holds several classes,
    the most frequent on less than that fraction of the labelled pixels, and takes the last when none does:
    crops of nothing but road or sea teach little. ``photometric`` distorts brightness, contrast, saturation and hue
    (:class:`~lemevit.data.transforms.PhotometricDistortion`; 3-band 8-bit images), for the lighting and sensors
    the training tiles do not cover.

    Tiles that cannot be read by window (PNG, JPEG) are kept decoded up to ``cache_bytes`` per worker
    (:class:`RegionReader`).
    """

    def __init__(self, root: str | Path, pairs: Sequence[TilePair], labels: LabelScheme, img_size: int,
                 mean: Sequence[float], std: Sequence[float], crops_per_tile: int | None = None, flip: bool = True,
                 rotate90: bool = True, class_balance: float = 0.0, augment_seed: int | None = None,
                 cache_bytes: int = 512 * 2**20, scale_range: Sequence[float] | None = None,
                 cat_max_ratio: float | None = None, photometric: bool = False):
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise ConfigError("img_size", f"must be a positive integer, got {img_size!r}")
        if crops_per_tile is not None and (isinstance(crops_per_tile, bool) or not isinstance(crops_per_tile, int)
                                           or crops_per_tile < 1):
            raise ConfigError("crops_per_tile", f"must be a positive integer, got {crops_per_tile!r}")
        if isinstance(class_balance, bool) or not isinstance(class_balance, int | float) or not 0 <= class_balance <= 1:
            raise ConfigError("class_balance", f"is a fraction of the crops, in [0, 1]; got {class_balance!r}")
        if cat_max_ratio is not None and (isinstance(cat_max_ratio, bool) or not isinstance(cat_max_ratio, int | float)
                                          or not 0 < cat_max_ratio <= 1):
            raise ConfigError("cat_max_ratio", f"is a fraction of a crop's labelled pixels, in (0, 1]; got "
                                               f"{cat_max_ratio!r}")
        if not pairs:
            raise DataError("no training tiles")
        self.root, self.pairs, self.labels = Path(root), list(pairs), labels
        self.img_size, self.flip, self.rotate90 = img_size, flip, rotate90
        self.class_balance = float(class_balance)
        self.scale_range, self.cat_max_ratio = check_scale_range(scale_range), cat_max_ratio
        self.photometric = PhotometricDistortion(len(mean)) if photometric else None
        self.cell = max(1, img_size // 4)
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.augment_seed = augment_seed
        self.read_region = RegionReader(cache_bytes)
        self.sizes = [raster_size(self.root / p.image) for p in self.pairs]
        # By default an epoch covers each tile's area about once.
        counts = [crops_per_tile or math.ceil(h / img_size) * math.ceil(w / img_size) for h, w in self.sizes]
        self.ends = np.cumsum(counts).tolist()
        self.class_cells = [self._class_cells(p) for p in self.pairs] if self.class_balance > 0 else None

    def _class_cells(self, pair: TilePair) -> list[np.ndarray]:
        path = self.root / pair.mask
        return class_cells(self.labels.decode(read_image(path), path), self.cell, range(self.labels.num_classes))

    def _crop(self, tile: int, side: int, rng: np.random.Generator) -> tuple[int, int, torch.Tensor]:
        """The origin of a crop's region and its mask at the crop's scale; with ``cat_max_ratio``, of the first of
        :data:`_CAT_MAX_TRIES` regions that holds several classes, none of them on that fraction of the labelled
        pixels or more, else of the last."""
        (height, width), path = self.sizes[tile], self.root / self.pairs[tile].mask
        for _ in range(1 if self.cat_max_ratio is None else _CAT_MAX_TRIES):
            top, left = crop_origin(height, width, side, rng, self.class_cells and self.class_cells[tile], self.cell,
                                    self.class_balance)
            mask = self.labels.decode(self.read_region(path, top, left, min(side, height), min(side, width)), path)
            y = rescaled(torch.from_numpy(mask.astype(np.int64)), side, self.img_size, labels=True)
            if self.cat_max_ratio is None:
                break
            counts = torch.bincount(y[y != IGNORE_INDEX])
            counts = counts[counts > 0]
            if len(counts) > 1 and int(counts.max()) < self.cat_max_ratio * int(counts.sum()):
                break
        return top, left, y

    def __len__(self) -> int:
        return self.ends[-1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        tile = bisect.bisect_right(self.ends, index)
        pair, (height, width) = self.pairs[tile], self.sizes[tile]
        seed = None if self.augment_seed is None else (self.augment_seed, index)
        rng = np.random.default_rng(seed)
        size = self.img_size
        side = region_side(size, self.scale_range, rng)
        top, left, y = self._crop(tile, side, rng)
        flips, turns = draw_flips_and_turns(rng, self.flip, self.rotate90)
        image = self.read_region(self.root / pair.image, top, left, min(side, height), min(side, width))
        x = rescaled(pixel_tensor(image), side, size)
        if self.photometric is not None:
            x = self.photometric(x, int(rng.integers(2**63)))
        x = (x - self.mean) / self.std
        pad_h, pad_w = size - y.shape[0], size - y.shape[1]
        if pad_h or pad_w:
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h))
            y = torch.nn.functional.pad(y, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        return flipped_and_turned((x, y), flips, turns)


class SegmentationTiles(Dataset):
    """Whole tiles for evaluation: ``(image, mask)`` with the image normalised, float32 ``(C, H, W)``, and
    the mask int64 ``(H, W)`` class indices (``IGNORE_INDEX`` where unlabelled)."""

    def __init__(self, root: str | Path, pairs: Sequence[TilePair], labels: LabelScheme, mean: Sequence[float],
                 std: Sequence[float]):
        self.root, self.pairs, self.labels = Path(root), list(pairs), labels
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.pairs[index]
        image_path, mask_path = self.root / pair.image, self.root / pair.mask
        image, mask = read_image(image_path), read_image(mask_path)
        if image.shape[:2] != mask.shape[:2]:
            raise DataError(f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH), its image {image_path} "
                             f"is {image.shape[1]}x{image.shape[0]}")
        y = torch.from_numpy(self.labels.decode(mask, mask_path).astype(np.int64))
        return normalised_tensor(image, self.mean, self.std), y
