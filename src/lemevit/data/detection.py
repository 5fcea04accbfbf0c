"""Data for oriented object detection: DOTA and DIOR-R labels, patches of large images, box-aware flips.

Boxes are le90 oriented boxes ``(cx, cy, w, h, theta)`` in pixels (see :mod:`lemevit.ops.rotated`); image
coordinates are continuous, the image spanning ``[0, W] x [0, H]`` and pixel ``(i, j)`` centred at
``(j + 0.5, i + 0.5)``.

Dataset layouts recognised by :func:`scan_detection_folder`:

- DOTA: ``images/*.png`` with ``labelTxt/<stem>.txt`` (two optional header lines ``imagesource:`` and
  ``gsd:``, then ``x1 y1 x2 y2 x3 y3 x4 y4 category difficult`` per object);
- DIOR-R: ``JPEGImages*/`` (or ``JPEGImage/``) with ``Annotations/Oriented Bounding Boxes/<stem>.xml``.
"""
from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import shapely
import torch

from lemevit.data.images import IMAGE_EXTENSIONS, read_image
from lemevit.data.transforms import IMAGENET_RGB_MEAN_STD
from lemevit.ops.rotated import normalize_boxes, quad_to_box

__all__ = [
    "DIOR_R_CLASSES", "DOTA_V1_CLASSES", "DetectionDataModule", "ImageLabels", "LabelError", "PatchDataset",
    "collate_detection", "flip_boxes", "merge_patch_detections", "parse_dior_xml", "parse_dota_txt",
    "patch_objects", "patch_windows", "rot90_boxes", "scan_detection_folder",
]

DOTA_V1_CLASSES = (
    "plane", "baseball-diamond", "bridge", "ground-track-field", "small-vehicle", "large-vehicle", "ship",
    "tennis-court", "basketball-court", "storage-tank", "soccer-ball-field", "roundabout", "harbor",
    "swimming-pool", "helicopter",
)
DIOR_R_CLASSES = (
    "airplane", "airport", "baseballfield", "basketballcourt", "bridge", "chimney", "expressway-service-area",
    "expressway-toll-station", "dam", "golffield", "groundtrackfield", "harbor", "overpass", "ship", "stadium",
    "storagetank", "tenniscourt", "trainstation", "vehicle", "windmill",
)
_DIOR_CORNERS = ("left_top", "right_top", "right_bottom", "left_bottom")


class LabelError(ValueError):
    """A malformed label file; the message names the file and the line (or object)."""


@dataclass
class ImageLabels:
    """One image and its objects: ``quads`` ``(N, 4, 2)`` float32, ``labels`` ``(N,)`` class indices and
    ``difficult`` ``(N,)`` bool."""

    image: Path
    quads: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray

    @classmethod
    def empty(cls, image: Path) -> ImageLabels:
        return cls(image, np.zeros((0, 4, 2), np.float32), np.zeros(0, np.int64), np.zeros(0, bool))


def parse_dota_txt(path: str | Path, class_names: Sequence[str], image: Path | None = None) -> ImageLabels:
    """Read a DOTA ``labelTxt`` file; raises :class:`LabelError` naming ``path:line`` for a bad line."""
    path = Path(path)
    quads, labels, difficult = [], [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields or (len(fields) == 1 and ":" in fields[0]):  # blank, or a header such as gsd:0.13
            continue
        where = f"{path}:{number}"
        if len(fields) not in (9, 10):
            raise LabelError(f"{where}: expected 'x1 y1 ... x4 y4 category [difficult]', got {line.strip()!r}")
        try:
            coords = [float(v) for v in fields[:8]]
        except ValueError:
            raise LabelError(f"{where}: the 8 corner coordinates must be numbers, got {fields[:8]}") from None
        if fields[8] not in class_names:
            raise LabelError(f"{where}: unknown category {fields[8]!r}; known: {', '.join(class_names)}")
        flag = fields[9] if len(fields) == 10 else "0"
        if flag not in ("0", "1"):
            raise LabelError(f"{where}: the difficult flag must be 0 or 1, got {flag!r}")
        quads.append(np.array(coords, np.float32).reshape(4, 2))
        labels.append(class_names.index(fields[8]))
        difficult.append(flag == "1")
    image = image if image is not None else path
    if not quads:
        return ImageLabels.empty(image)
    return ImageLabels(image, np.stack(quads), np.array(labels, np.int64), np.array(difficult, bool))


def parse_dior_xml(path: str | Path, class_names: Sequence[str], image: Path | None = None) -> ImageLabels:
    """Read a DIOR-R ``robndbox`` XML file; raises :class:`LabelError` naming the file and object."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise LabelError(f"{path}:{e.position[0]}: not valid XML ({e})") from None
    quads, labels, difficult = [], [], []
    for number, obj in enumerate(root.iter("object"), start=1):
        where = f"{path}: object {number}"
        name = (obj.findtext("name") or "").strip()
        if name not in class_names:
            raise LabelError(f"{where}: unknown category {name!r}; known: {', '.join(class_names)}")
        box = obj.find("robndbox")
        if box is None:
            raise LabelError(f"{where}: no <robndbox>")
        try:
            corners = [[float(box.findtext(f"x_{c}")), float(box.findtext(f"y_{c}"))] for c in _DIOR_CORNERS]
        except (TypeError, ValueError):
            raise LabelError(f"{where}: <robndbox> needs numeric x_/y_ left_top, right_top, right_bottom, "
                             "left_bottom") from None
        quads.append(np.array(corners, np.float32))
        labels.append(class_names.index(name))
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    image = image if image is not None else path
    if not quads:
        return ImageLabels.empty(image)
    return ImageLabels(image, np.stack(quads), np.array(labels, np.int64), np.array(difficult, bool))


def _image_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}


def scan_detection_folder(root: str | Path) -> tuple[list[str], list[ImageLabels]]:
    """Class names and labelled images of a DOTA or DIOR-R folder (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"detection data folder not found: {root}")
    if (root / "labelTxt").is_dir() and (root / "images").is_dir():
        class_names, images = list(DOTA_V1_CLASSES), _image_files(root / "images")
        labels = [parse_dota_txt(root / "labelTxt" / f"{stem}.txt", class_names, image)
                  for stem, image in images.items() if (root / "labelTxt" / f"{stem}.txt").is_file()]
    elif (root / "Annotations" / "Oriented Bounding Boxes").is_dir():
        class_names = list(DIOR_R_CLASSES)
        folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("JPEGImage"))
        images = {stem: p for folder in folders for stem, p in _image_files(folder).items()}
        xml = root / "Annotations" / "Oriented Bounding Boxes"
        labels = [parse_dior_xml(xml / f"{stem}.xml", class_names, image)
                  for stem, image in images.items() if (xml / f"{stem}.xml").is_file()]
    else:
        raise FileNotFoundError(f"{root}: expected DOTA (images/ and labelTxt/) or DIOR-R "
                                "(JPEGImages*/ and 'Annotations/Oriented Bounding Boxes/') folders")
    if not labels:
        raise FileNotFoundError(f"{root}: no image has a label file")
    return class_names, labels


def patch_windows(width: int, height: int, size: int = 1024, overlap: int = 200) -> list[tuple[int, int]]:
    """Top-left corners of ``size`` windows stepping ``size - overlap``; the last row and column are moved
    back to end at the image border, so every pixel is covered and no window sticks out (unless the image is
    smaller than ``size``, which gives one window at 0 to be padded)."""
    if overlap >= size:
        raise ValueError(f"patch overlap {overlap} must be smaller than the patch size {size}")

    def starts(length: int) -> list[int]:
        if length <= size:
            return [0]
        positions = list(range(0, length - size, size - overlap))
        return positions + [length - size]

    return [(x, y) for y in starts(height) for x in starts(width)]


def patch_objects(labels: ImageLabels, window: tuple[int, int], size: int,
                  keep_ratio: float = 0.7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Objects of one window, as le90 boxes in window coordinates ``(n, 5)`` with labels and difficult flags.

    An object is kept when at least ``keep_ratio`` of its area lies in the window (DOTA devkit's rule); one
    cut by the border becomes the minimum rectangle around its part inside the window.
    """
    x0, y0 = window
    if len(labels.quads) == 0:
        return np.zeros((0, 5), np.float32), labels.labels, labels.difficult
    polygons = shapely.polygons(labels.quads.astype(np.float64))
    polygons = shapely.make_valid(polygons)
    inside = shapely.intersection(polygons, shapely.box(x0, y0, x0 + size, y0 + size))
    area = shapely.area(polygons)
    ratio = np.where(area > 0, shapely.area(inside) / np.maximum(area, 1e-9), 0.0)
    keep = ratio >= keep_ratio
    cut = keep & (ratio < 1 - 1e-6)
    quads = labels.quads[keep].astype(np.float64)
    if cut.any():
        rectangles = shapely.minimum_rotated_rectangle(inside[cut])
        corners = np.stack([shapely.get_coordinates(r)[:4] for r in rectangles])
        quads[cut[keep]] = corners
    quads -= np.array([x0, y0], np.float64)
    boxes = quad_to_box(torch.from_numpy(quads)).float().numpy() if len(quads) else np.zeros((0, 5), np.float32)
    # A box thinner than a pixel (a degenerate label) has no size to regress to.
    sized = (boxes[:, 2] >= 1) & (boxes[:, 3] >= 1)
    return boxes[sized], labels.labels[keep][sized], labels.difficult[keep][sized]


def flip_boxes(boxes: torch.Tensor, size: tuple[int, int], horizontal: bool) -> torch.Tensor:
    """Boxes of an image of ``size`` (height, width) flipped left-right or top-bottom."""
    out = boxes.clone()
    axis = 0 if horizontal else 1
    out[:, axis] = (size[1] if horizontal else size[0]) - boxes[:, axis]
    out[:, 4] = -boxes[:, 4]
    return normalize_boxes(out)


def rot90_boxes(boxes: torch.Tensor, size: tuple[int, int], k: int) -> torch.Tensor:
    """Boxes of an image of ``size`` (height, width) after ``torch.rot90(image, k, dims=(-2, -1))``, which
    turns the picture a quarter counter-clockwise per step: point ``(x, y)`` goes to ``(y, W - x)``."""
    out = boxes.clone()
    height, width = size
    for _ in range(k % 4):
        out = torch.stack([out[:, 1], width - out[:, 0], out[:, 2], out[:, 3], out[:, 4] - torch.pi / 2], dim=1)
        height, width = width, height
    return normalize_boxes(out)


class PatchDataset(torch.utils.data.Dataset):
    """Windows of large images, with the objects inside each as le90 boxes.

    Items are ``(image, target)``: ``image`` a float ``(C, size, size)`` tensor normalised by ``mean``/``std``
    (zero-padded past the image border), ``target`` a dict of ``boxes`` ``(n, 5)``, ``labels``, ``difficult``,
    ``image_index`` and ``window`` (top-left corner in the full image). ``augment`` adds random flips and
    quarter turns. Decoded images are cached (``cache_images`` most recent), since windows of one image follow
    each other.
    """

    def __init__(self, images: Sequence[ImageLabels], size: int = 1024, overlap: int = 200, keep_ratio: float = 0.7,
                 skip_empty: bool = True, augment: bool = False, mean: Sequence[float] = IMAGENET_RGB_MEAN_STD[0],
                 std: Sequence[float] = IMAGENET_RGB_MEAN_STD[1], cache_images: int = 4):
        self.images, self.size, self.keep_ratio, self.augment = list(images), size, keep_ratio, augment
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.cache_images = cache_images
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.items: list[tuple[int, tuple[int, int]]] = []
        for index, labels in enumerate(self.images):
            height, width = self._read(index).shape[:2]
            for window in patch_windows(width, height, size, overlap):
                if not skip_empty or len(patch_objects(labels, window, size, keep_ratio)[0]):
                    self.items.append((index, window))

    def _read(self, index: int) -> np.ndarray:
        if index not in self._cache:
            self._cache[index] = read_image(self.images[index].image)
            while len(self._cache) > self.cache_images:
                self._cache.popitem(last=False)
        self._cache.move_to_end(index)
        return self._cache[index]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        index, (x0, y0) = self.items[i]
        picture = self._read(index)[y0:y0 + self.size, x0:x0 + self.size]
        image = torch.zeros(picture.shape[-1], self.size, self.size)
        image[:, :picture.shape[0], :picture.shape[1]] = torch.from_numpy(
            np.ascontiguousarray(picture, dtype=np.float32)).permute(2, 0, 1)
        image = (image - self.mean) / self.std
        boxes, labels, difficult = patch_objects(self.images[index], (x0, y0), self.size, self.keep_ratio)
        boxes = torch.from_numpy(boxes).reshape(-1, 5)
        if self.augment:
            square = (self.size, self.size)
            if random.random() < 0.5:
                image, boxes = image.flip(-1), flip_boxes(boxes, square, horizontal=True)
            if random.random() < 0.5:
                image, boxes = image.flip(-2), flip_boxes(boxes, square, horizontal=False)
            k = random.randrange(4)
            image, boxes = torch.rot90(image, k, dims=(-2, -1)), rot90_boxes(boxes, square, k)
        target = {"boxes": boxes, "labels": torch.from_numpy(labels), "difficult": torch.from_numpy(difficult),
                  "image_index": index, "window": (x0, y0)}
        return image.contiguous(), target


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)


def merge_patch_detections(boxes: Sequence[torch.Tensor], scores: Sequence[torch.Tensor],
                           labels: Sequence[torch.Tensor], windows: Sequence[tuple[int, int]],
                           iou_threshold: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Detections of the windows of one image moved to full-image coordinates, duplicates from overlapping
    windows removed by class-wise rotated NMS."""
    from lemevit.ops.rotated import rotated_batched_nms

    shifted = []
    for b, (x0, y0) in zip(boxes, windows, strict=True):
        b = b.clone()
        b[:, 0] += x0
        b[:, 1] += y0
        shifted.append(b)
    all_boxes, all_scores, all_labels = torch.cat(shifted), torch.cat(list(scores)), torch.cat(list(labels))
    keep = rotated_batched_nms(all_boxes, all_scores, all_labels, iou_threshold)
    return all_boxes[keep], all_scores[keep], all_labels[keep]


class DetectionDataModule(pl.LightningDataModule):
    """Training windows (augmented, empty ones skipped) and validation windows from two lists of images."""

    def __init__(self, train: Sequence[ImageLabels], val: Sequence[ImageLabels], size: int = 1024,
                 overlap: int = 200, batch_size: int = 2, num_workers: int = 2, augment: bool = True,
                 mean: Sequence[float] = IMAGENET_RGB_MEAN_STD[0], std: Sequence[float] = IMAGENET_RGB_MEAN_STD[1]):
        super().__init__()
        self.train_images, self.val_images = list(train), list(val)
        self.options = {"size": size, "overlap": overlap, "mean": mean, "std": std}
        self.batch_size, self.num_workers, self.augment = batch_size, num_workers, augment

    def setup(self, stage: str | None = None) -> None:
        self.train_set = PatchDataset(self.train_images, augment=self.augment, **self.options)
        self.val_set = PatchDataset(self.val_images, augment=False, **self.options)

    def _loader(self, dataset: PatchDataset, shuffle: bool) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle,
                                           num_workers=self.num_workers, collate_fn=collate_detection,
                                           persistent_workers=False, drop_last=False)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader(self.val_set, shuffle=False)
