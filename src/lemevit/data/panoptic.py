"""Panoptic segmentation data in COCO's panoptic format, and its derivation from a semantic-segmentation data set.

COCO's format is a JSON file and a PNG per image. The JSON lists the ``categories`` (``id``, ``name``, ``isthing``
and ``color``), the ``images`` (``id``, ``file_name``, ``height``, ``width``) and one annotation per image
(``image_id``, ``file_name`` of its PNG, ``segments_info``: ``id``, ``category_id``, ``area``, ``bbox``,
``iscrowd``). The PNG stores each pixel's segment id as ``R + 256 G + 256² B``; id 0 is unlabelled (void).

A data set this module writes is a folder with ``panoptic.json``, the images in ``img_dir/`` and the PNGs in
``panoptic/``, below them the same relative paths (and so the same ``train/``, ``val/`` and ``test/`` subfolders)
as the semantic data set it was derived from. Classes are indexed by their categories in the order of the ids.
"""
from __future__ import annotations

import bisect
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lemevit.data.segmentation import check_pairs, resolve_labels, scan_pairs
from lemevit.data.transforms import (
    PhotometricDistortion,
    check_scale_range,
    draw_flips_and_turns,
    flipped_and_turned,
    normalised_tensor,
    pixel_tensor,
    region_side,
    rescaled,
)
from lemevit.errors import ConfigError, DataError
from lemevit.io.atomic import atomic_path
from lemevit.io.images import read_image
from lemevit.io.paths import check_writable_folder
from lemevit.io.regions import RegionReader, raster_size
from lemevit.labels import IGNORE_INDEX, VOID, LabelScheme

__all__ = ["ANNOTATIONS_FILE", "IMAGES_DIR", "PANOPTIC_LAYOUT", "PNG_DIR", "Category", "PanopticCrops", "PanopticImage",
           "PanopticSet", "PanopticTiles", "check_panoptic", "connected_components", "decode_ids", "encode_ids",
           "is_panoptic_data", "prepare_panoptic",
           "read_panoptic", "read_segment_ids", "segment_extents", "segment_labels", "semantic_to_panoptic",
           "write_segment_ids"]

#: The JSON, image folder and PNG folder of a panoptic data set, below its root.
ANNOTATIONS_FILE, IMAGES_DIR, PNG_DIR = "panoptic.json", "img_dir", "panoptic"
#: The layout of a panoptic data set, as messages name it.
PANOPTIC_LAYOUT = f"a COCO panoptic data set ({ANNOTATIONS_FILE}, {IMAGES_DIR}/ and {PNG_DIR}/)"


def is_panoptic_data(root: str | Path) -> bool:
    """Whether ``root`` is laid out as a panoptic data set (its JSON is there)."""
    return (Path(root) / ANNOTATIONS_FILE).is_file()



@dataclass(frozen=True)
class Category:
    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int]


@dataclass(frozen=True)
class PanopticImage:
    """One image: its file and its PNG (relative to the image and PNG folders), and for each segment id its class
    index and whether it is a crowd."""

    file_name: str
    png_name: str
    segments: dict[int, int]
    crowd: frozenset[int]


@dataclass(frozen=True)
class PanopticSet:
    """A panoptic data set read from its JSON: the classes (categories by id) and the images."""

    categories: tuple[Category, ...]
    images: tuple[PanopticImage, ...]
    image_dir: Path
    png_dir: Path

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.categories]

    @property
    def thing_classes(self) -> list[str]:
        return [c.name for c in self.categories if c.isthing]

    def segment_ids(self, image: PanopticImage) -> np.ndarray:
        """The image's ``(H, W)`` segment ids, every one of them a segment of the JSON."""
        return read_segment_ids(self.png_dir / image.png_name, image.segments)


def encode_ids(ids: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 colours of segment ids: ``R + 256 G + 256² B``."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2], axis=-1).astype(np.uint8)


def decode_ids(rgb: np.ndarray) -> np.ndarray:
    """``(H, W)`` int64 segment ids of a panoptic PNG's colours."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]


def write_segment_ids(path: str | Path, ids: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(encode_ids(ids)).save(tmp, format="PNG")


def read_segment_ids(path: str | Path, segments: dict[int, int]) -> np.ndarray:
    """The segment ids of a panoptic PNG; an id other than void that is not in ``segments`` is a DataError naming
    the file."""
    rgb = read_image(path)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise DataError(f"panoptic PNG {path}: expected 8-bit RGB segment ids, got {rgb.shape[2]} band(s) of "
                        f"{rgb.dtype}")
    ids = decode_ids(rgb)
    found = np.unique(ids)
    absent = [int(i) for i in found if i != VOID and int(i) not in segments]
    if absent:
        raise DataError(f"panoptic PNG {path}: segment id(s) {absent[:10]} are not among its segments_info in the "
                        f"JSON")
    return ids


def _field(entry, key: str, kind, where: str):
    if not isinstance(entry, dict) or key not in entry:
        raise DataError(f"{where}: no {key!r}")
    value, kinds = entry[key], kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise DataError(f"{where}: {key!r} is {value!r}, not {' or '.join(k.__name__ for k in kinds)}")
    return value


def read_panoptic(json_path: str | Path, image_dir: str | Path | None = None,
                  png_dir: str | Path | None = None) -> PanopticSet:
    """Read a COCO panoptic JSON (the images in ``image_dir``, the PNGs in ``png_dir``: by default ``img_dir/`` and
    ``panoptic/`` beside it). A category, image or segment that cannot be used is a DataError naming the file."""
    json_path = Path(json_path)
    root = json_path.parent
    try:
        doc = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read panoptic annotations {json_path}: {e}") from e
    for key in ("categories", "images", "annotations"):
        if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
            raise DataError(f"{json_path}: no list of {key!r}; a COCO panoptic JSON has categories, images and "
                            f"annotations")
    categories = []
    for entry in doc["categories"]:
        where = f"{json_path}: category {entry.get('id') if isinstance(entry, dict) else entry!r}"
        isthing = _field(entry, "isthing", (bool, int), where)
        color = entry.get("color", [0, 0, 0])
        if not (isinstance(color, list) and len(color) == 3 and all(isinstance(v, int) and 0 <= v < 256
                                                                    for v in color)):
            raise DataError(f"{where}: 'color' is {color!r}, not an RGB triple")
        categories.append(Category(_field(entry, "id", int, where), _field(entry, "name", str, where),
                                   bool(isthing), tuple(color)))
    categories.sort(key=lambda c: c.id)
    if not categories:
        raise DataError(f"{json_path}: no categories")
    for kind, values in (("id", [c.id for c in categories]), ("name", [c.name for c in categories])):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise DataError(f"{json_path}: category {kind}(s) {repeated} appear more than once")
    class_of = {c.id: i for i, c in enumerate(categories)}
    files = {}
    for entry in doc["images"]:
        where = f"{json_path}: image {entry.get('id') if isinstance(entry, dict) else entry!r}"
        files[_field(entry, "id", (int, str), where)] = _field(entry, "file_name", str, where)
    images = []
    for entry in doc["annotations"]:
        image_id = _field(entry, "image_id", (int, str), f"{json_path}: an annotation")
        where = f"{json_path}: annotation of image {image_id}"
        if image_id not in files:
            raise DataError(f"{where}: no such image in 'images'")
        segments, crowd = {}, set()
        for segment in _field(entry, "segments_info", list, where):
            segment_id = _field(segment, "id", int, where)
            category = _field(segment, "category_id", int, f"{where}, segment {segment_id}")
            if category not in class_of:
                raise DataError(f"{where}: segment {segment_id} has category {category}, which is not among the "
                                f"categories {sorted(class_of)}")
            if segment_id in segments or segment_id == VOID:
                raise DataError(f"{where}: segment id {segment_id} is "
                                f"{'void' if segment_id == VOID else 'given twice'}")
            segments[segment_id] = class_of[category]
            if segment.get("iscrowd", 0):
                crowd.add(segment_id)
        images.append(PanopticImage(files[image_id], _field(entry, "file_name", str, where), segments,
                                    frozenset(crowd)))
    return PanopticSet(tuple(categories), tuple(images), Path(image_dir) if image_dir else root / IMAGES_DIR,
                       Path(png_dir) if png_dir else root / PNG_DIR)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The 4-connected components of a boolean ``(H, W)`` mask: int32 labels (0 outside, 1..n in the order of their
    first pixel, row by row) and n.

    Each row's runs of set pixels are the nodes; a run is joined to the runs of the next row it touches. Components
    are the roots of a union-find whose hooking and path halving are done for all joins at once, so the work is in
    numpy whatever the size of the tile.
    """
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    edges = np.diff(np.pad(mask, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    run_rows, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1]
    if len(starts) == 0:
        return np.zeros((height, width), np.int32), 0
    # Runs are in row-major order; as one key, a run's start and end sort like positions along the raster.
    stride = width + 1
    start_key, end_key = run_rows * stride + starts, run_rows * stride + ends
    # Runs of the row above that overlap run b: those ending after b starts and starting before b ends.
    above = (run_rows - 1) * stride
    first = np.searchsorted(end_key, above + starts, side="right")
    last = np.searchsorted(start_key, above + ends, side="left")
    count = np.maximum(last - first, 0)
    b = np.repeat(np.arange(len(starts)), count)
    a = np.repeat(first, count) + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
    parent = np.arange(len(starts))
    while True:
        root_a, root_b = parent[a], parent[b]
        joined = root_a != root_b
        if not joined.any():
            break
        low, high = np.minimum(root_a, root_b)[joined], np.maximum(root_a, root_b)[joined]
        # Hooking a root to a smaller index never makes a cycle.
        np.minimum.at(parent, high, low)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    roots, component = np.unique(parent, return_inverse=True)
    labels = np.zeros((height, width), np.int32)
    labels[mask] = np.repeat(component.astype(np.int32) + 1, ends - starts)
    return labels, len(roots)


def semantic_to_panoptic(classes: np.ndarray, thing_classes: Sequence[int], min_area: int = 0
                         ) -> tuple[np.ndarray, list[dict]]:
    """Segment ids ``(H, W)`` int32 and their ``segments_info`` from a map of class indices (``IGNORE_INDEX``
    unlabelled): each 4-connected component of a thing class is a segment (void when smaller than ``min_area``
    pixels), each stuff class present one segment. Ids are 1, 2, ... in the order of the classes; ``category_id`` is
    the class index + 1."""
    ids = np.zeros(classes.shape, np.int32)
    segments, next_id = [], 1
    for c in np.unique(classes):
        c = int(c)
        if c == IGNORE_INDEX:
            continue
        region = classes == c
        if c in thing_classes:
            labels, n = connected_components(region)
            areas = np.bincount(labels.ravel(), minlength=n + 1)
            kept = np.nonzero(areas[1:] >= max(min_area, 1))[0] + 1
            lookup = np.zeros(n + 1, np.int32)
            lookup[kept] = np.arange(next_id, next_id + len(kept))
            ids[region] = lookup[labels[region]]
            next_id += len(kept)
        else:
            ids[region] = next_id
            next_id += 1
    for segment_id, (area, bbox, (row, col)) in segment_extents(ids).items():
        segments.append({"id": segment_id, "category_id": int(classes[row, col]) + 1, "area": area, "bbox": bbox,
                         "iscrowd": 0})
    return ids, segments


def segment_extents(ids: np.ndarray) -> dict[int, tuple[int, list[int], tuple[int, int]]]:
    """For each segment id of an ``(H, W)`` map but void, in increasing order: its area, its COCO ``bbox``
    (``[x, y, width, height]``) and the ``(row, column)`` of one of its pixels; in one pass over the map."""
    ids = np.asarray(ids)
    found = np.unique(ids)
    found = found[found != VOID]
    if len(found) == 0:
        return {}
    rows, cols = np.nonzero(ids)
    values = ids[rows, cols].astype(np.int64)
    # Ids may be large (COCO's colour encoding): they are counted by their rank among those found.
    ranks = np.searchsorted(found, values)
    n = len(found)
    areas = np.bincount(ranks, minlength=n)
    top, left = np.full(n, ids.shape[0]), np.full(n, ids.shape[1])
    bottom, right = np.zeros(n, np.int64), np.zeros(n, np.int64)
    np.minimum.at(top, ranks, rows)
    np.minimum.at(left, ranks, cols)
    np.maximum.at(bottom, ranks, rows)
    np.maximum.at(right, ranks, cols)
    pixel = np.zeros(n, np.int64)
    pixel[ranks] = np.arange(len(ranks))
    return {int(i): (int(areas[k]), [int(left[k]), int(top[k]), int(right[k] - left[k] + 1),
                                     int(bottom[k] - top[k] + 1)], (int(rows[pixel[k]]), int(cols[pixel[k]])))
            for k, i in enumerate(found)}


def _place(source: Path, target: Path, link: bool) -> bool:
    """The image at ``target``: a copy of ``source``, or with ``link`` a hard link to it where the file system allows
    (else a copy); returns whether it is a link."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(source, target)
            return True
        except OSError:
            pass
    shutil.copy2(source, target)
    return False


def prepare_panoptic(data: str | Path, output: str | Path, things: Sequence[str], preset: str | None = None,
                     class_names: Sequence[str] | None = None, min_area: int = 0, link: bool = False) -> dict:
    """Derive a COCO panoptic data set in ``output`` from the semantic-segmentation data set ``data`` (its
    ``img_dir/`` and ``ann_dir/``, the label scheme of ``preset``, ``class_names`` or its ``classes.yaml``): each
    connected component of a class in ``things`` becomes an instance, every other class a stuff region.

    The images are copied into ``output/img_dir``; with ``link`` they are hard links to the originals where the file
    system allows (no extra space, but an image edited in place is then edited in both data sets).

    Returns a summary: the number of images, how many are links, and per class the number of segments.
    """
    data, output = Path(data), Path(output)
    labels: LabelScheme = resolve_labels(data, preset, class_names)
    unknown = [t for t in things if t not in labels.class_names]
    if not things or unknown:
        raise ConfigError("things", f"{'unknown classes ' + str(unknown) if unknown else 'none given'}; give the "
                                    f"thing classes among {list(labels.class_names)}")
    if isinstance(min_area, bool) or not isinstance(min_area, int) or min_area < 0:
        raise ConfigError("min_area", f"must be a non-negative number of pixels, got {min_area!r}")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise ConfigError("output", f"{output} exists and is not an empty folder; give a new one")
    if output.resolve() == data.resolve() or data.resolve() in output.resolve().parents:
        raise ConfigError("output", f"{output} is inside the data set {data}; give a folder outside it")
    pairs = scan_pairs(data)
    check_pairs(data, pairs, labels)
    check_writable_folder(output)
    thing_index = [labels.class_names.index(t) for t in things]
    categories = [{"id": i + 1, "name": name, "isthing": int(i in thing_index), "color": list(labels.palette[i]),
                   "supercategory": "thing" if i in thing_index else "stuff"}
                  for i, name in enumerate(labels.class_names)]
    images, annotations, links = [], [], 0
    counts = dict.fromkeys(labels.class_names, 0)
    for image_id, pair in enumerate(pairs, start=1):
        # The images' paths below img_dir/ (and so their subsets) are kept; the PNG takes the image's stem.
        relative = PurePosixPath(pair.image).relative_to(PurePosixPath(pair.image).parts[0])
        png_name = relative.with_suffix(".png").as_posix()
        mask_path = data / pair.mask
        classes = labels.decode(read_image(mask_path), mask_path)
        ids, segments = semantic_to_panoptic(classes, thing_index, min_area)
        write_segment_ids(output / PNG_DIR / png_name, ids)
        links += _place(data / pair.image, output / IMAGES_DIR / relative, link)
        images.append({"id": image_id, "file_name": relative.as_posix(), "height": int(classes.shape[0]),
                       "width": int(classes.shape[1])})
        annotations.append({"image_id": image_id, "file_name": png_name, "segments_info": segments})
        for segment in segments:
            counts[labels.class_names[segment["category_id"] - 1]] += 1
    with atomic_path(output / ANNOTATIONS_FILE) as tmp:
        tmp.write_text(json.dumps({"info": {"description": f"derived by lemevit from {data}",
                                            "things": list(things), "min_area": min_area},
                                   "images": images, "annotations": annotations, "categories": categories}))
    return {"images": len(images), "links": links, "segments": counts}


def check_panoptic(dataset: PanopticSet, images: Sequence[PanopticImage] | None = None) -> dict[str, int]:
    """Read every PNG of ``images`` (default all): each must hold only ids of its segments and be the size of its
    image. Returns the number of segments per class."""
    counts = dict.fromkeys(dataset.class_names, 0)
    for image in dataset.images if images is None else images:
        ids = dataset.segment_ids(image)
        image_path = dataset.image_dir / image.file_name
        if raster_size(image_path) != ids.shape:
            height, width = raster_size(image_path)
            raise DataError(f"panoptic PNG {dataset.png_dir / image.png_name} is {ids.shape[1]}x{ids.shape[0]} (WxH), "
                            f"its image {image_path} is {width}x{height}")
        for segment_id in np.unique(ids):
            if segment_id != VOID:
                counts[dataset.class_names[image.segments[int(segment_id)]]] += 1
    return counts


def segment_labels(ids: np.ndarray, image: PanopticImage) -> tuple[torch.Tensor, torch.Tensor]:
    """The labels a model trains on, from an image's segment ids: ``(H, W)`` int64 segment ids, negated on crowds,
    and the class index of each pixel (``IGNORE_INDEX`` on void)."""
    found, inverse = np.unique(ids, return_inverse=True)
    classes = np.array([IGNORE_INDEX if i == VOID else image.segments[int(i)] for i in found], np.int64)
    signs = np.array([-1 if int(i) in image.crowd else 1 for i in found], np.int64)
    inverse = inverse.reshape(ids.shape)
    return torch.from_numpy(ids.astype(np.int64) * signs[inverse]), torch.from_numpy(classes[inverse])


class PanopticCrops(Dataset):
    """Random square crops of ``img_size`` from the training images, with random flips and 90° rotations:
    ``(image, ids, classes)``, the image normalised float32 ``(C, S, S)`` and :func:`segment_labels` of the crop.
    ``scale_range`` and ``photometric`` jitter the crops' scale and colours as the segmentation crops do
    (:class:`~lemevit.data.segmentation.SegmentationCrops`): the labels are resized by their nearest pixel.

    Item ``i`` is a crop of the image that ``crops_per_image`` items are given to in turn (by default enough to
    cover it once); its position and augmentation come from a generator seeded by ``(augment_seed, i)``, so that an
    item is the same crop in whichever worker. Images smaller than the crop are padded (void labels).
    """

    def __init__(self, dataset: PanopticSet, images: Sequence[PanopticImage], img_size: int, mean: Sequence[float],
                 std: Sequence[float], crops_per_image: int | None = None, flip: bool = True, rotate90: bool = True,
                 augment_seed: int | None = None, cache_bytes: int = 512 * 2**20,
                 scale_range: Sequence[float] | None = None, photometric: bool = False):
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise ConfigError("img_size", f"must be a positive integer, got {img_size!r}")
        if not images:
            raise DataError("no training images")
        self.dataset, self.images, self.img_size = dataset, list(images), img_size
        self.flip, self.rotate90, self.augment_seed = flip, rotate90, augment_seed
        self.scale_range = check_scale_range(scale_range)
        self.photometric = PhotometricDistortion(len(mean)) if photometric else None
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.read_region = RegionReader(cache_bytes)
        self.sizes = [raster_size(dataset.image_dir / i.file_name) for i in self.images]
        counts = [crops_per_image or math.ceil(h / img_size) * math.ceil(w / img_size) for h, w in self.sizes]
        self.ends = np.cumsum(counts).tolist()

    def __len__(self) -> int:
        return self.ends[-1]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        which = bisect.bisect_right(self.ends, index)
        image, (height, width), size = self.images[which], self.sizes[which], self.img_size
        rng = np.random.default_rng(None if self.augment_seed is None else (self.augment_seed, index))
        side = region_side(size, self.scale_range, rng)
        top, left = int(rng.integers(0, max(height - side, 0) + 1)), int(rng.integers(0, max(width - side, 0) + 1))
        h, w = min(side, height), min(side, width)
        pixels = self.read_region(self.dataset.image_dir / image.file_name, top, left, h, w)
        png = self.dataset.png_dir / image.png_name
        ids, classes = segment_labels(decode_ids(self.read_region(png, top, left, h, w)), image)
        x = rescaled(pixel_tensor(pixels), side, size)
        ids, classes = rescaled(ids, side, size, labels=True), rescaled(classes, side, size, labels=True)
        if self.photometric is not None:
            x = self.photometric(x, int(rng.integers(2**63)))
        x = (x - self.mean) / self.std
        pad_h, pad_w = size - ids.shape[0], size - ids.shape[1]
        if pad_h or pad_w:
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h))
            ids = torch.nn.functional.pad(ids, (0, pad_w, 0, pad_h), value=VOID)
            classes = torch.nn.functional.pad(classes, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        flips, turns = draw_flips_and_turns(rng, self.flip, self.rotate90)
        return flipped_and_turned((x, ids, classes), flips, turns)


class PanopticTiles(Dataset):
    """Whole images for evaluation: ``(image, ids, classes)`` as :class:`PanopticCrops` gives them."""

    def __init__(self, dataset: PanopticSet, images: Sequence[PanopticImage], mean: Sequence[float],
                 std: Sequence[float]):
        self.dataset, self.images = dataset, list(images)
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = self.images[index]
        pixels = read_image(self.dataset.image_dir / image.file_name)
        ids, classes = segment_labels(self.dataset.segment_ids(image), image)
        if pixels.shape[:2] != tuple(ids.shape):
            raise DataError(f"panoptic PNG {self.dataset.png_dir / image.png_name} is {ids.shape[1]}x{ids.shape[0]} "
                            f"(WxH), its image {self.dataset.image_dir / image.file_name} is "
                            f"{pixels.shape[1]}x{pixels.shape[0]}")
        return normalised_tensor(pixels, self.mean, self.std), ids, classes
