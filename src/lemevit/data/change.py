"""Change-detection data: bitemporal pairs with a binary change mask (LEVIR-CD / CDD layout).

A dataset is a folder with ``A/`` (first date), ``B/`` (second date) and ``label/`` (change masks, 0 = no
change, 255 = change; 0/1 masks are read too), or ``OUT/`` for the masks as the CDD release names them.
The three files of a pair share their name up to the extension. Splits come, in this order of preference,
from list files given explicitly, from ``list/train.txt``, ``list/val.txt`` (and ``list/test.txt``) as BIT
ships LEVIR-CD and CDD, from ``train/``, ``val/`` (and ``test/``) subfolders that each have the A/B/label
layout (the LEVIR-CD release; A/B/OUT: the CDD release), or from a seeded random split. Pair paths are
stored relative to the root in POSIX form.

Each training crop's position, scale, flips and rotation are drawn once and applied to both dates and the
mask alike; without scale jitter crops are never resampled, so the mask stays exact.
"""
from __future__ import annotations

import bisect
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F
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
from lemevit.io.regions import RegionReader, raster_size
from lemevit.labels import IGNORE_INDEX

__all__ = [
    "CHANGE_LAYOUT",
    "IGNORE_INDEX",
    "is_change_data",
    "ChangeCrops",
    "ChangePair",
    "ChangePairs",
    "check_pairs",
    "decode_change_label",
    "find_change_splits",
    "read_change_label",
    "read_list_file",
    "read_pair_images",
    "scan_change_folder",
]

DATE_FOLDERS = ("A", "B")
#: The names the folder of the change masks may have: LEVIR-CD's, and the CDD release's.
LABEL_FOLDERS = ("label", "OUT")
_JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg"})


@dataclass(frozen=True)
class ChangePair:
    name: str  # the file name shared by the pair, without extension
    a: str  # paths relative to the dataset root, POSIX separators
    b: str
    label: str | None  # None for a pair to predict


def _images_by_stem(folder: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        stem, ext = os.path.splitext(entry.name)
        if entry.name.startswith(".") or not entry.is_file() or ext.lower() not in IMAGE_EXTENSIONS:
            continue
        if stem in found:
            raise DataError(f"{folder}: {found[stem]} and {entry.name} have the same name; a pair's files are "
                             "matched by name, so each name may appear once per folder")
        found[stem] = entry.name
    return found


#: The layout of a change-detection data set, as messages name it.
CHANGE_LAYOUT = "A/, B/ and label/ (or OUT/) folders of the pairs' dates and change masks"


def is_change_data(root: str | Path) -> bool:
    """Whether ``root`` is laid out as a change-detection data set: A/ and B/ in it or in its subset folders."""
    root = Path(root)
    return any((folder / "A").is_dir() and (folder / "B").is_dir() for folder in (root, *(root / s for s in SUBSETS)))


def _label_folder(root: Path) -> str:
    """The one folder of :data:`LABEL_FOLDERS` that ``root`` has."""
    found = [f for f in LABEL_FOLDERS if (root / f).is_dir()]
    if len(found) > 1:
        raise DataError(f"{root} has both {' and '.join(f + '/' for f in found)}; the change masks are in one "
                        "of them: keep one")
    return found[0] if found else LABEL_FOLDERS[0]


def scan_change_folder(root: str | Path, prefix: str = "", labels: bool = True) -> list[ChangePair]:
    """Every pair of ``root/A``, ``root/B`` and ``root/label`` or ``root/OUT`` (without ``labels``, of ``A`` and
    ``B`` only: the pairs to predict), sorted by name.

    A file in one of the folders without its counterpart in the others is an error naming it.
    ``prefix`` is prepended to the stored paths (the subset folder of the LEVIR-CD release layout).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"change-detection dataset {root} is not a folder")
    folders = (*DATE_FOLDERS, _label_folder(root)) if labels else DATE_FOLDERS
    absent = [f for f in folders if not (root / f).is_dir()]
    if absent:
        holds = "A/ (first date), B/ (second date) and label/ or OUT/ (0/255 change masks)" if labels else \
            "A/ (first date) and B/ (second date), a pair's two images under the same name"
        raise DataError(f"{root} has no {', '.join(f + '/' for f in absent)} folder; a change-detection dataset "
                        f"holds {holds}")
    files = {f: _images_by_stem(root / f) for f in folders}
    names = sorted(set().union(*files.values()))
    if not names:
        raise DataError(f"{root}/A holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    pairs = []
    for name in names:
        have = [f for f in folders if name in files[f]]
        lacking = [f for f in folders if name not in files[f]]
        if lacking:
            raise DataError(f"pair {name!r} is incomplete: {root / have[0] / files[have[0]][name]} has no "
                             f"counterpart in {', '.join(str(root / f) + '/' for f in lacking)}")
        paths = [f"{prefix}{f}/{files[f][name]}" for f in folders]
        pairs.append(ChangePair(name, *paths) if labels else ChangePair(name, *paths, label=None))
    return pairs


def read_list_file(path: str | Path, pairs: Sequence[ChangePair]) -> list[ChangePair]:
    """The pairs named in a list file: one name per line (``test_2_0000_0000.png`` or without extension);
    blank lines and ``#`` comments are ignored. Errors name the file, the line and the name."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"list file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read list file {path}: {e}") from e
    by_name = {p.name: p for p in pairs}
    chosen, seen = [], {}
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        name = PurePosixPath(entry).name
        stem = os.path.splitext(name)[0] if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS else name
        if stem not in by_name:
            raise DataError(f"{path}, line {number}: no pair named {entry!r} in the dataset's A/, B/ and label/ "
                            "(or OUT/)")
        if stem in seen:
            raise DataError(f"{path}, line {number}: {entry!r} listed twice (first on line {seen[stem]})")
        seen[stem] = number
        chosen.append(by_name[stem])
    if not chosen:
        raise DataError(f"list file {path} names no pairs")
    return chosen


def find_change_splits(root: str | Path, train_fraction: float = 0.8, seed: int = 0,
                       split_files: dict[str, str] | None = None) -> dict[str, list[ChangePair]]:
    """``{"train": [...], "val": [...] (, "test": [...])}`` for a dataset (see the module docstring);
    ``train_fraction`` 1.0 validates on the training pairs."""
    root = Path(root)
    if split_files:
        pairs = scan_change_folder(root)
        return {subset: read_list_file(path, pairs) for subset, path in split_files.items()}
    if train_fraction == 1.0:  # asked for explicitly: it wins over the data's own split
        return split_items(scan_change_folder(root), 1.0, seed, key=lambda p: p.name)
    lists = {s: root / "list" / f"{s}.txt" for s in SUBSETS if (root / "list" / f"{s}.txt").is_file()}
    if "train" in lists and "val" in lists and (root / "A").is_dir():
        pairs = scan_change_folder(root)
        return {subset: read_list_file(path, pairs) for subset, path in lists.items()}
    subfolders = [s for s in SUBSETS if (root / s / "A").is_dir()]
    if "train" in subfolders and "val" in subfolders and not (root / "A").is_dir():
        return {s: scan_change_folder(root / s, prefix=f"{s}/") for s in subfolders}
    return split_items(scan_change_folder(root), train_fraction, seed, key=lambda p: p.name, what=f"pairs in {root}")


def decode_change_label(label: np.ndarray, path: str | Path, threshold: int | None = None) -> np.ndarray:
    """A change mask read from ``path`` (``(H, W, C)`` as :func:`read_image` gives it) as a ``(H, W)`` uint8
    array of 0 (no change) and 1 (change).

    Exact 0/255 and 0/1 masks are taken as they are; JPEG masks (CDD), whose compression blurs the two
    values, are thresholded at 128. Other masks, such as 0/255 masks whose outlines were anti-aliased when they
    were drawn or resampled, are change from ``threshold`` up when it is given. Multi-band masks must repeat one
    band (JPEG: the bands are averaged). Anything else is an error naming the file and the values found.
    """
    path = Path(path)
    jpeg = path.suffix.lower() in _JPEG_EXTENSIONS
    if label.shape[-1] > 1:
        if jpeg:
            label = label.mean(axis=-1, keepdims=True)
        elif (label != label[..., :1]).any():
            raise DataError(f"change mask {path} has {label.shape[-1]} bands that differ; expected a single-band "
                             "0/255 mask")
    label = label[..., 0]
    if jpeg:
        return (label >= 128).astype(np.uint8)
    values = np.unique(label)
    if set(values.tolist()) <= {0, 1}:
        return label.astype(np.uint8)
    if set(values.tolist()) <= {0, 255}:
        return (label == 255).astype(np.uint8)
    if threshold is not None:
        return (label >= threshold).astype(np.uint8)
    shown = ", ".join(f"{v:g}" for v in values[:8]) + (" ..." if len(values) > 8 else "")
    raise DataError(f"change mask {path} holds the values {shown}; expected a binary mask of 0 (no change) and "
                     "255 (change), or 0 and 1 (--mask-threshold T reads a mask with values between them as "
                     "change from T up)")


def read_change_label(path: str | Path, threshold: int | None = None) -> np.ndarray:
    """The change mask in ``path`` as a ``(H, W)`` uint8 array of 0 and 1 (see :func:`decode_change_label`)."""
    return decode_change_label(read_image(path), path, threshold)


def read_pair_images(a_path: str | Path, b_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Both dates as ``(H, W, C)`` arrays; an error names the files when they differ in size or bands."""
    a, b = read_image(a_path), read_image(b_path)
    if a.shape[:2] != b.shape[:2]:
        raise DataError(f"the dates of a pair must have the same size: {a_path} is {a.shape[1]}x{a.shape[0]}, "
                         f"{b_path} is {b.shape[1]}x{b.shape[0]} (width x height)")
    if a.shape[2] != b.shape[2]:
        raise DataError(f"the dates of a pair must have the same bands: {a_path} has {a.shape[2]}, "
                         f"{b_path} has {b.shape[2]}")
    return a, b


def _read_pair(root: Path, pair: ChangePair, mask_threshold: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a, b = read_pair_images(root / pair.a, root / pair.b)
    label = read_change_label(root / pair.label, mask_threshold)
    if label.shape != a.shape[:2]:
        raise DataError(f"change mask {root / pair.label} is {label.shape[1]}x{label.shape[0]}, its images "
                         f"{root / pair.a} and {root / pair.b} are {a.shape[1]}x{a.shape[0]} (width x height)")
    return a, b, label


def _pair_size(root: Path, pair: ChangePair) -> tuple[int, int]:
    """``(height, width)`` of a pair from the file headers; files of different sizes are an error naming them."""
    sizes = {path: raster_size(root / path) for path in (pair.a, pair.b, pair.label)}
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{root / path} is {w}x{h}" for path, (h, w) in sizes.items())
        raise DataError(f"the files of pair {pair.name!r} must have the same size: {shown} (width x height)")
    return sizes[pair.a]


def check_pairs(root: str | Path, pairs: Sequence[ChangePair], mask_threshold: int | None = None) -> tuple[int, str]:
    """Read every pair and check it (sizes, masks, read with ``mask_threshold``: see :func:`decode_change_label`)
    and that all have one band count and data type, which are returned. The first bad pair raises an error naming
    its files."""
    root = Path(root)
    kinds: Counter = Counter()
    first: dict[tuple[int, str], ChangePair] = {}
    for pair in pairs:
        a, b, _ = _read_pair(root, pair, mask_threshold)
        for image in (a, b):
            kind = (image.shape[2], image.dtype.name)
            kinds[kind] += 1
            first.setdefault(kind, pair)
    if not kinds:
        raise DataError("no pairs to check")
    if len(kinds) > 1:
        (bands, dtype), _ = kinds.most_common(1)[0]
        odd = next(k for k in kinds if k != (bands, dtype))
        raise DataError(f"pair {first[odd].name!r} ({root / first[odd].a}) has {odd[0]} band(s) of {odd[1]}, "
                         f"most images have {bands} band(s) of {dtype}")
    return next(iter(kinds))


class ChangeCrops(Dataset):
    """Random square crops of ``img_size`` from training pairs, with random flips and 90° rotations; one crop
    position and one augmentation per item, applied to both dates and the mask alike.

    Item ``i`` is a crop of pair ``t`` where ``crops_per_pair`` items are given to each pair in turn (by
    default enough to cover the pair's area about once); its draws come from a generator seeded by
    ``(augment_seed, i)``, so that the same item is the same crop whichever worker loads it. Pairs smaller
    than ``img_size`` are padded (images with the band means, the mask with :data:`IGNORE_INDEX`). Gives
    ``(a, b, mask)``: normalised float32 ``(C, S, S)`` dates and an int64 ``(S, S)`` mask of 0/1. Images
    that cannot be read by window (PNG, JPEG) are kept decoded up to ``cache_bytes`` per worker
    (:class:`~lemevit.data.segmentation.RegionReader`).

    ``scale_range`` cuts each crop from the pair resized by a factor drawn in that range, the same for both
    dates and the mask (:func:`~lemevit.data.transforms.rescaled`). ``photometric`` distorts each date's
    brightness, contrast, saturation and hue with draws of its own
    (:class:`~lemevit.data.transforms.PhotometricDistortion`; 3-band 8-bit images): two acquisitions differ in
    lighting and sensor, and a change is what differs beyond that.

    ``change_balance`` is the fraction of crops placed to hold changed pixels (a whole cell of ``img_size // 4``
    pixels with change: :func:`~lemevit.data.transforms.crop_origin`), the rest uniform over the pair. Change is
    rare and clustered, so uniform crops show little of it and a model can learn that nothing ever changes.
    ``mask_threshold`` reads masks with values between 0 and 255 (:func:`decode_change_label`).
    """

    def __init__(self, root: str | Path, pairs: Sequence[ChangePair], img_size: int, mean: Sequence[float],
                 std: Sequence[float], crops_per_pair: int | None = None, flip: bool = True, rotate90: bool = True,
                 augment_seed: int | None = None, cache_bytes: int = 512 * 2**20,
                 scale_range: Sequence[float] | None = None, photometric: bool = False, change_balance: float = 0.0,
                 mask_threshold: int | None = None):
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise ConfigError("img_size", f"must be a positive integer, got {img_size!r}")
        if crops_per_pair is not None and (isinstance(crops_per_pair, bool) or not isinstance(crops_per_pair, int)
                                           or crops_per_pair < 1):
            raise ConfigError("crops_per_pair", f"must be a positive integer, got {crops_per_pair!r}")
        if isinstance(change_balance, bool) or not isinstance(change_balance, int | float) or \
                not 0 <= change_balance <= 1:
            raise ConfigError("change_balance", f"is a fraction of the crops, in [0, 1]; got {change_balance!r}")
        if not pairs:
            raise DataError("no training pairs")
        self.root, self.pairs = Path(root), list(pairs)
        self.img_size, self.flip, self.rotate90 = img_size, flip, rotate90
        self.scale_range = check_scale_range(scale_range)
        self.photometric = PhotometricDistortion(len(mean)) if photometric else None
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.augment_seed = augment_seed
        self.read_region = RegionReader(cache_bytes)
        self.sizes = [_pair_size(self.root, p) for p in self.pairs]
        counts = [crops_per_pair or math.ceil(h / img_size) * math.ceil(w / img_size) for h, w in self.sizes]
        self.ends = np.cumsum(counts).tolist()
        self.change_balance, self.mask_threshold = float(change_balance), mask_threshold
        self.cell = max(1, img_size // 4)
        self.change_cells = [class_cells(read_change_label(self.root / p.label, mask_threshold), self.cell, (1,))
                             for p in self.pairs] if change_balance > 0 else None

    def __len__(self) -> int:
        return self.ends[-1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        number = bisect.bisect_right(self.ends, index)
        pair, (height, width) = self.pairs[number], self.sizes[number]
        rng = np.random.default_rng(None if self.augment_seed is None else (self.augment_seed, index))
        size = self.img_size
        side = region_side(size, self.scale_range, rng)
        top, left = crop_origin(height, width, side, rng, self.change_cells and self.change_cells[number], self.cell,
                                self.change_balance)
        flips, turns = draw_flips_and_turns(rng, self.flip, self.rotate90)
        seeds = rng.integers(2**63, size=2).tolist() if self.photometric is not None else [None, None]
        region = (top, left, min(side, height), min(side, width))
        dates = []
        for path, seed in zip((pair.a, pair.b), seeds, strict=True):
            x = rescaled(pixel_tensor(self.read_region(self.root / path, *region)), side, size)
            if self.photometric is not None:
                x = self.photometric(x, seed)
            dates.append((x - self.mean) / self.std)
        label_path = self.root / pair.label
        label = torch.from_numpy(decode_change_label(self.read_region(label_path, *region), label_path,
                                                     self.mask_threshold).astype(np.int64))
        label = rescaled(label, side, size, labels=True)
        pad_h, pad_w = size - label.shape[0], size - label.shape[1]
        if pad_h or pad_w:
            dates = [F.pad(x, (0, pad_w, 0, pad_h)) for x in dates]
            label = F.pad(label, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        return flipped_and_turned([*dates, label], flips, turns)


class ChangePairs(Dataset):
    """Whole pairs for evaluation: ``(a, b, mask)``, normalised float32 ``(C, H, W)`` dates and an int64
    ``(H, W)`` mask of 0/1 (read with ``mask_threshold``: see :func:`decode_change_label`)."""

    def __init__(self, root: str | Path, pairs: Sequence[ChangePair], mean: Sequence[float], std: Sequence[float],
                 mask_threshold: int | None = None):
        self.root, self.pairs, self.mask_threshold = Path(root), list(pairs), mask_threshold
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a, b, label = _read_pair(self.root, self.pairs[index], self.mask_threshold)
        return (normalised_tensor(a, self.mean, self.std), normalised_tensor(b, self.mean, self.std),
                torch.from_numpy(label.astype(np.int64)))
