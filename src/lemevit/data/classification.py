"""Scene classification data: class folders, split files, image checks and the scene dataset.

A dataset is a root folder with one subfolder per class (``root/<class>/**/<image>``); class names are
the sorted subfolder names and labels their indices. The RSP releases of MillionAID, AID, UC Merced and
NWPU-RESISC45 (Wang et al., TGRS 2022, which LeMeViT trains from) instead keep every image in one folder and name
its class in label lists (:func:`read_label_lists`). Sample paths are stored relative to the root, in POSIX form,
so that a split stays valid when the data moves.
"""
from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from torch.utils.data import Dataset

from lemevit.data.transforms import pixel_tensor
from lemevit.errors import ConfigError, DataError
from lemevit.io import atomic_path
from lemevit.io.images import IMAGE_EXTENSIONS, ImageReadError, read_image
from lemevit.viz import display_rgb

__all__ = ["RSP_IMAGES", "RSP_LISTS", "SCENE_LAYOUT", "Sample", "SceneDataset", "check_images", "is_label_list",
           "is_scene_data", "read_label_lists", "read_split_file", "scan_class_folders"]

_PROGRESS_MIN_IMAGES = 200

#: The label lists of the RSP MillionAID release, found in a dataset root without being named.
RSP_LISTS = {"train": "train_labels.txt", "val": "valid_labels.txt"}
#: The folder of the RSP releases that holds every image the lists name.
RSP_IMAGES = "all_img"


@dataclass(frozen=True)
class Sample:
    path: str  # relative to the dataset root, POSIX separators
    label: int


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data folder {root} is a file; expected a folder with one subfolder per class")
    return root


#: The layout of a scene-recognition data set, as messages name it.
SCENE_LAYOUT = ("a folder per class holding its images (or train/ and val/ such folders, or an RSP release's "
                f"{RSP_IMAGES}/ with its label lists)")


def is_scene_data(root: str | Path) -> bool:
    """Whether ``root`` holds class folders of images (in it or in its train/), or is an RSP release. Any folder of
    image folders is one: a data set of another task's layout is also this one."""
    root = Path(root)
    if (root / RSP_IMAGES).is_dir():
        return True
    top = root / "train" if (root / "train").is_dir() else root
    if not top.is_dir():
        return False
    return any(entry.is_dir() and not entry.name.startswith(".") and
               any(_is_image(name) for _, _, files in os.walk(entry.path) for name in files)
               for entry in os.scandir(top))


def scan_class_folders(root: str | Path) -> tuple[list[str], list[Sample]]:
    """Class names (sorted subfolder names) and every image below them, sorted by path.

    Hidden folders and files (names starting with ``.``) and files without an image extension are
    ignored; images in nested folders belong to the class of their top folder. A class folder without
    any image is an error: it would be a class the model can never learn.
    """
    root = _check_root(root)
    class_names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not class_names:
        raise DataError(f"dataset root {root} has no class folders (expected one subfolder per class "
                         f"holding {', '.join(sorted(IMAGE_EXTENSIONS))} images)")
    samples = []
    for label, name in enumerate(class_names):
        found = []
        for folder, dirs, files in os.walk(root / name):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = Path(folder).relative_to(root)
            found += [(rel / f).as_posix() for f in files if not f.startswith(".") and _is_image(f)]
        if not found:
            raise DataError(f"empty class folder {root / name}: it holds no image files "
                             f"({', '.join(sorted(IMAGE_EXTENSIONS))}); remove it or add images")
        samples += [Sample(p, label) for p in found]
    samples.sort(key=lambda s: s.path)
    return class_names, samples


def _entries(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of the lines of a list file that are neither blank nor ``#`` comments."""
    if not path.is_file():
        raise DataError(f"split file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read split file {path}: {e}") from e
    return [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip() and
            not line.strip().startswith("#")]


def read_split_file(path: str | Path, root: str | Path, class_names: Sequence[str]) -> list[Sample]:
    """Samples listed in a text file: one image path per line, relative to ``root``, whose first
    component is the class folder (``Airport/airport_1.jpg``). Blank lines and lines starting with
    ``#`` are ignored. Errors name the file, the line number and the path."""
    path, root = Path(path), Path(root)
    labels = {name: i for i, name in enumerate(class_names)}
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for number, entry in _entries(path):
        where = f"{path}, line {number}: {entry!r}"
        rel = PurePosixPath(entry)
        if rel.is_absolute() or len(rel.parts) < 2:
            raise DataError(f"{where}: expected a path relative to {root} of the form <class>/<image>")
        if rel.parts[0] not in labels:
            raise DataError(f"{where}: unknown class {rel.parts[0]!r}; the classes are {list(class_names)}")
        if not _is_image(rel.name):
            raise DataError(f"{where}: not an image file; expected one of {', '.join(sorted(IMAGE_EXTENSIONS))}")
        if not (root / rel).is_file():
            raise DataError(f"{where}: file {root / rel} not found")
        key = rel.as_posix()
        if key in seen:
            raise DataError(f"{where}: listed twice (first on line {seen[key]})")
        seen[key] = number
        samples.append(Sample(key, labels[rel.parts[0]]))
    if not samples:
        raise DataError(f"split file {path} lists no images")
    return samples


def is_label_list(path: str | Path) -> bool:
    """Whether a list file is in RSP's format, ``<image> <class name> <class index>`` per line (else it is ours,
    ``<class>/<image>``)."""
    entries = _entries(Path(path))
    fields = entries[0][1].split() if entries else []
    return len(fields) == 3 and fields[2].isdigit()


def read_label_lists(paths: dict[str, str | Path], root: str | Path) -> tuple[list[str], dict[str, list[Sample]]]:
    """Class names and each subset's samples from RSP-style label lists (``{"train": FILE, "val": FILE}``).

    Each line names an image below ``root/all_img/`` (``root/`` when there is no such folder), its class and the
    class's index; the class names are ordered by those indices, which must run 0..K-1 and name one class each
    throughout the lists. Errors name the file and the line."""
    root = Path(root)
    images = root / RSP_IMAGES if (root / RSP_IMAGES).is_dir() else root
    prefix = PurePosixPath(images.relative_to(root))
    names: dict[int, tuple[str, str]] = {}
    subsets: dict[str, list[Sample]] = {}
    for subset, path in paths.items():
        path = Path(path)
        samples, seen = [], {}
        for number, entry in _entries(path):
            where = f"{path}, line {number}: {entry!r}"
            fields = entry.split()
            if len(fields) != 3 or not fields[2].isdigit():
                raise DataError(f"{where}: expected '<image> <class name> <class index>' (RSP's label lists)")
            image, name, index = fields[0], fields[1], int(fields[2])
            known = names.setdefault(index, (name, where))
            if known[0] != name:
                raise DataError(f"{where}: class index {index} is {known[0]!r} at {known[1]}")
            rel = prefix / image
            if PurePosixPath(image).is_absolute() or ".." in PurePosixPath(image).parts:
                raise DataError(f"{where}: expected a path relative to {images}")
            if not _is_image(rel.name):
                raise DataError(f"{where}: not an image file; expected one of {', '.join(sorted(IMAGE_EXTENSIONS))}")
            if not (root / rel).is_file():
                raise DataError(f"{where}: file {root / rel} not found")
            if rel.as_posix() in seen:
                raise DataError(f"{where}: listed twice (first on line {seen[rel.as_posix()]})")
            seen[rel.as_posix()] = number
            samples.append(Sample(rel.as_posix(), index))
        if not samples:
            raise DataError(f"split file {path} lists no images")
        subsets[subset] = samples
    missing = sorted(set(range(max(names) + 1)) - set(names))
    if missing:
        raise DataError(f"the label lists {', '.join(str(p) for p in paths.values())} use class indices up to "
                         f"{max(names)} but none is {missing[:10]}: indices must run 0..K-1")
    by_name: dict[str, int] = {}
    for index, (name, where) in sorted(names.items()):
        if by_name.setdefault(name, index) != index:
            raise DataError(f"{where}: class {name!r} has index {index} and {by_name[name]}")
    return [names[i][0] for i in range(len(names))], subsets


def _progress(items: Sequence, desc: str) -> Iterable:
    if len(items) <= _PROGRESS_MIN_IMAGES:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="img")


def check_images(root: str | Path, samples: Sequence[Sample],
                 skip_bad: bool) -> tuple[list[Sample], list[dict]]:
    """Open every image and check that all have the same band count and data type.

    The reference band count (and data type) is the one most images have. Without ``skip_bad`` the
    first unreadable or differing file raises (:class:`ImageReadError` or ValueError naming it); with
    it, the good samples are returned together with ``{"path", "reason"}`` for each bad one.
    """
    root = Path(root)
    shapes: dict[int, tuple[int, str]] = {}
    bad: list[dict] = []
    for i, s in enumerate(_progress(samples, "checking images")):
        try:
            image = read_image(root / s.path)
        except ImageReadError as e:
            if not skip_bad:
                raise
            bad.append({"path": s.path, "reason": e.reason or str(e)})
            continue
        shapes[i] = (image.shape[2], image.dtype.name)
    if shapes:
        bands_ref = Counter(b for b, _ in shapes.values()).most_common(1)[0][0]
        dtype_ref = Counter(d for _, d in shapes.values()).most_common(1)[0][0]
        for i, (bands, dtype) in shapes.items():
            if bands != bands_ref:
                reason = f"has {bands} band(s), expected {bands_ref} like most images"
            elif dtype != dtype_ref:
                reason = f"has data type {dtype}, expected {dtype_ref} like most images"
            else:
                continue
            if not skip_bad:
                raise DataError(f"image {root / samples[i].path} {reason}")
            bad.append({"path": samples[i].path, "reason": reason})
    bad_paths = {b["path"] for b in bad}
    good = [s for s in samples if s.path not in bad_paths]
    bad.sort(key=lambda b: b["path"])
    return good, bad


class SceneDataset(Dataset):
    """``(image, label)`` pairs: the image as a float32 ``(C, H, W)`` tensor in its own value scale
    (8-bit data stays 0..255), passed through ``transform`` when one is given."""

    def __init__(self, root: str | Path, samples: Sequence[Sample], transform=None, augment_seed: int | None = None):
        self.root = Path(root)
        self.samples = list(samples)
        self.transform = transform
        # When set, the random transform of sample i is seeded by (augment_seed, i): the same image gets the
        # same augmentation whichever worker loads it and however often the loader is restarted.
        self.augment_seed = augment_seed

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> torch.Tensor:
        """The untransformed image of sample ``index``."""
        image = read_image(self.root / self.samples[index].path)
        return pixel_tensor(image)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        # An (index, copy) key is one of the copies of repeated augmentation, each augmented in its own way.
        index, copy = key if isinstance(key, tuple) else (key, 0)
        image = self.load(index)
        if self.transform is not None:
            if self.augment_seed is None:
                return self.transform(image), self.samples[index].label
            # torchvision's transforms draw from torch's global generator: seed a copy of it, leaving the
            # caller's random state (the model's, when there are no workers) as it was.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((self.augment_seed * 1_000_003 + index + copy * 7_919_113) % 2**63)
                image = self.transform(image)
        return image, self.samples[index].label

    def plot(self, sample_indices: Sequence[int], class_names: Sequence[str], path: str | Path,
             columns: int = 6, bands: Sequence[int] | None = None) -> None:
        """Write a PNG grid of the untransformed images titled with their class names.

        ``bands`` picks the bands shown as RGB (default the first three, or the single band in grey); see
        :func:`lemevit.viz.display_rgb`.
        """
        from matplotlib.figure import Figure

        indices = list(sample_indices)
        if not indices:
            raise ConfigError("sample_indices", "give at least one")
        for i in indices:
            if not -len(self) <= i < len(self):
                raise ConfigError("sample_indices", f"index {i} is out of range for a dataset of {len(self)} images")
        columns = max(1, min(columns, len(indices)))
        rows = math.ceil(len(indices) / columns)
        fig = Figure(figsize=(2.2 * columns, 2.4 * rows))
        for k, i in enumerate(indices):
            ax = fig.add_subplot(rows, columns, k + 1)
            ax.imshow(display_rgb(read_image(self.root / self.samples[i].path), bands), interpolation="nearest")
            label = self.samples[i].label
            ax.set_title(class_names[label] if 0 <= label < len(class_names) else str(label), fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
