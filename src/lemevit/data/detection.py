"""Data for oriented object detection: DOTA and DIOR-R labels, patches of large images, box-aware flips.

Boxes are le90 oriented boxes ``(cx, cy, w, h, theta)`` in pixels (see :mod:`lemevit.ops.rotated`); image
coordinates are continuous, the image spanning ``[0, W] x [0, H]`` and pixel ``(i, j)`` centred at
``(j + 0.5, i + 0.5)``.

Dataset layouts recognised by :func:`scan_detection_data`:

- DOTA: ``images/*.png`` with ``labelTxt/<stem>.txt`` (two optional header lines ``imagesource:`` and
  ``gsd:``, then ``x1 y1 x2 y2 x3 y3 x4 y4 category difficult`` per object);
- DIOR-R: ``JPEGImages*/`` (or ``JPEGImage/``) with ``Annotations/Oriented Bounding Boxes/<stem>.xml``;
- DOTA's released layout: ``train/`` and ``val/`` folders, each one of the above, which then are the split,
  and optionally ``test/``: unlabelled (``test/images`` only, as DOTA publishes it) it is left to ``predict``,
  whose Task-1 files its evaluation server scores; with ``labelTxt/`` it is the test subset.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
import torch

from lemevit.data.splits import SUBSETS
from lemevit.data.transforms import IMAGENET_RGB_MEAN_STD, pixel_tensor
from lemevit.errors import ConfigError, DataError
from lemevit.inference.detection import detection_windows
from lemevit.io.images import read_image
from lemevit.io.paths import is_listed_image
from lemevit.io.regions import RegionReader, raster_size
from lemevit.ops.rotated import normalize_boxes, quad_to_box

__all__ = [
    "DETECTION_LAYOUT", "DIOR_R_CLASSES", "DOTA_V1_CLASSES", "UNSPLIT", "DetectionImages", "ImageLabels",
    "LabelError", "PatchDataset", "collate_detection", "collate_single", "flip_boxes", "is_detection_data",
    "parse_dior_xml", "parse_dota_txt", "patch_objects", "rot90_boxes", "scan_detection_data", "scan_detection_folder",
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
_DIOR_ANNOTATIONS = Path("Annotations", "Oriented Bounding Boxes")
#: The subset key of :func:`scan_detection_data` for a folder holding its images itself, to be split at random.
UNSPLIT = "unsplit"


class LabelError(DataError):
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
        if not all(math.isfinite(v) for v in coords):
            raise LabelError(f"{where}: the 8 corner coordinates must be finite numbers, got {fields[:8]}")
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
        if not all(math.isfinite(v) for corner in corners for v in corner):
            raise LabelError(f"{where}: <robndbox> corners must be finite numbers, got {corners}")
        quads.append(np.array(corners, np.float32))
        labels.append(class_names.index(name))
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    image = image if image is not None else path
    if not quads:
        return ImageLabels.empty(image)
    return ImageLabels(image, np.stack(quads), np.array(labels, np.int64), np.array(difficult, bool))


def _image_files(folder: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and is_listed_image(path.name):
            if path.stem in files:
                raise DataError(f"{files[path.stem]} and {path} have the same name; each image needs its own label "
                                "file name")
            files[path.stem] = path
    return files


def _is_labelled_folder(folder: Path) -> bool:
    return ((folder / "labelTxt").is_dir() and (folder / "images").is_dir()) or (folder / _DIOR_ANNOTATIONS).is_dir()


#: The layout of a detection data set, as messages name it.
DETECTION_LAYOUT = ("DOTA's images/ and labelTxt/ (or its released train/ and val/ such folders) or DIOR-R's "
                    "JPEGImages*/ and 'Annotations/Oriented Bounding Boxes/'")


def is_detection_data(root: str | Path) -> bool:
    """Whether ``root`` is laid out as a DOTA or DIOR-R data set, itself or in its subset folders."""
    root = Path(root)
    return any(_is_labelled_folder(folder) for folder in (root, *(root / s for s in SUBSETS)))


def _scan_labelled_folder(root: Path) -> tuple[list[str], list[ImageLabels]]:
    """Class names and labelled images of one DOTA or DIOR-R folder (not DOTA's released train/, val/ layout)."""
    if (root / "labelTxt").is_dir() and (root / "images").is_dir():
        class_names, images = list(DOTA_V1_CLASSES), _image_files(root / "images")
        labels = [parse_dota_txt(root / "labelTxt" / f"{stem}.txt", class_names, image)
                  for stem, image in images.items() if (root / "labelTxt" / f"{stem}.txt").is_file()]
    elif (root / _DIOR_ANNOTATIONS).is_dir():
        class_names = list(DIOR_R_CLASSES)
        folders = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("JPEGImage"))
        images = {stem: p for folder in folders for stem, p in _image_files(folder).items()}
        xml = root / _DIOR_ANNOTATIONS
        labels = [parse_dior_xml(xml / f"{stem}.xml", class_names, image)
                  for stem, image in images.items() if (xml / f"{stem}.xml").is_file()]
    elif (root / "images").is_dir():
        raise DataError(f"{root}: images/ has no labelTxt/ beside it (DOTA's labels, labelTxt/<image>.txt); an "
                        "unlabelled folder such as DOTA's test/images is predicted, not trained on")
    else:
        raise DataError(f"{root}: expected DOTA (images/ and labelTxt/, or train/ and val/ such folders) or DIOR-R "
                        "(JPEGImages*/ and 'Annotations/Oriented Bounding Boxes/') folders")
    if not labels:
        raise DataError(f"{root}: no image has a label file")
    if not any(len(i.quads) for i in labels):
        raise DataError(f"{root}: the label files of its {len(labels)} image(s) hold no objects; nothing to learn")
    return class_names, labels


def scan_detection_data(root: str | Path) -> tuple[list[str], dict[str, list[ImageLabels]]]:
    """Class names and labelled images of a detection data folder by subset (see the module docstring):
    ``train``, ``val`` and a labelled ``test`` of DOTA's released layout, which are the split; everything under
    :data:`UNSPLIT` for a folder that holds its images itself."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"detection data folder {root} is not a folder" if root.exists() else
                        f"detection data folder {root} does not exist")
    present = [s for s in SUBSETS if (root / s).is_dir()]
    if _is_labelled_folder(root) or not {"train", "val"} & set(present):
        class_names, labels = _scan_labelled_folder(root)
        return class_names, {UNSPLIT: labels}
    missing = [s for s in ("train", "val") if s not in present]
    if missing:
        raise DataError(f"{root}: has {', '.join(s + '/' for s in present)} but no {missing[0]}/; DOTA's released "
                        "layout is train/ and val/ (each with images/ and labelTxt/), and optionally test/images")
    # DOTA's own test/ is images only, scored by its evaluation server on what predict writes.
    labelled = [s for s in present if s != "test" or _is_labelled_folder(root / s)]
    class_names, subsets = None, {}
    for subset in labelled:
        names, subsets[subset] = _scan_labelled_folder(root / subset)
        if class_names is not None and names != class_names:
            raise DataError(f"{root / subset}: its labels are of another data set than those of {root / 'train'} "
                            "(DOTA and DIOR-R folders mixed)")
        class_names = names
    return class_names, subsets


def scan_detection_folder(root: str | Path) -> tuple[list[str], list[ImageLabels]]:
    """Class names and every labelled image of a detection data folder, all its subsets together."""
    class_names, subsets = scan_detection_data(root)
    return class_names, [labels for images in subsets.values() for labels in images]


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
    """Windows of large images, with the objects inside each as le90 boxes: the training items of detection.

    Items are ``(image, target)``: ``image`` a float ``(C, size, size)`` tensor normalised by ``mean``/``std``
    (zero-padded past the image border), ``target`` a dict of ``boxes`` ``(n, 5)``, ``labels``, ``difficult``,
    ``image_index`` and ``window`` (top-left corner in the full image). Windows without objects are left out
    (``skip_empty``). ``augment`` adds random flips and quarter turns, drawn from a generator seeded by
    ``(augment_seed, item)`` so that an item is augmented alike whichever worker loads it. Decoded images are
    kept up to ``cache_bytes`` per worker (:class:`~lemevit.io.regions.RegionReader`).
    """

    def __init__(self, images: Sequence[ImageLabels], size: int = 1024, overlap: int = 200, keep_ratio: float = 0.7,
                 skip_empty: bool = True, augment: bool = False, mean: Sequence[float] = IMAGENET_RGB_MEAN_STD[0],
                 std: Sequence[float] = IMAGENET_RGB_MEAN_STD[1], augment_seed: int | None = None,
                 cache_bytes: int = 512 * 2**20):
        self.images, self.size, self.keep_ratio, self.augment = list(images), size, keep_ratio, augment
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.augment_seed = augment_seed
        self.read_region = RegionReader(cache_bytes)
        self.items: list[tuple[int, tuple[int, int]]] = []
        for index, labels in enumerate(self.images):
            height, width = raster_size(labels.image)
            for window in detection_windows(width, height, size, overlap):
                if not skip_empty or len(patch_objects(labels, window, size, keep_ratio)[0]):
                    self.items.append((index, window))
        if not self.items:
            raise DataError(f"no {size} px window of the {len(self.images)} training image(s) holds a whole object "
                            f"(70 % of it); the objects are too large for the window or lie on its edges")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        index, (x0, y0) = self.items[i]
        picture = self.read_region(self.images[index].image, y0, x0, self.size, self.size)
        image = torch.zeros(picture.shape[-1], self.size, self.size)
        image[:, :picture.shape[0], :picture.shape[1]] = pixel_tensor(picture)
        image = (image - self.mean) / self.std  # padding normalised too, as at inference
        boxes, labels, difficult = patch_objects(self.images[index], (x0, y0), self.size, self.keep_ratio)
        boxes = torch.from_numpy(boxes).reshape(-1, 5)
        if self.augment:
            rng = np.random.default_rng(None if self.augment_seed is None else (self.augment_seed, i))
            square = (self.size, self.size)
            if rng.random() < 0.5:
                image, boxes = image.flip(-1), flip_boxes(boxes, square, horizontal=True)
            if rng.random() < 0.5:
                image, boxes = image.flip(-2), flip_boxes(boxes, square, horizontal=False)
            k = int(rng.integers(4))
            image, boxes = torch.rot90(image, k, dims=(-2, -1)), rot90_boxes(boxes, square, k)
        target = {"boxes": boxes, "labels": torch.from_numpy(labels), "difficult": torch.from_numpy(difficult),
                  "image_index": index, "window": (x0, y0)}
        return image.contiguous(), target


class DetectionImages(torch.utils.data.Dataset):
    """Whole labelled images for evaluation: ``(pixels, truth)`` with the pixels as read, ``(H, W, C)`` in the
    file's data type (windows are cut and normalised by the detector's sliding window), and the truth as
    ``quads``, ``labels`` and ``difficult`` arrays."""

    def __init__(self, images: Sequence[ImageLabels]):
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, dict]:
        labels = self.images[i]
        return read_image(labels.image), {"quads": labels.quads, "labels": labels.labels,
                                          "difficult": labels.difficult}


def collate_single(batch: list[tuple]) -> tuple:
    """A batch of one item, unstacked: whole images of different sizes are scored one at a time."""
    if len(batch) != 1:
        raise ConfigError("batch_size", f"whole images are evaluated one per batch, got {len(batch)}")
    return batch[0]


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), list(targets)
