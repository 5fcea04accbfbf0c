"""Scene classification data: class folders, reproducible splits, image checks, band statistics, the
dataset and the Lightning data module.

A dataset is a root folder with one subfolder per class (``root/<class>/**/<image>``); class names are
the sorted subfolder names and labels their indices. Sample paths are stored relative to the root, in
POSIX form, so that a split file stays valid when the data moves.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lemevit.data.images import IMAGE_EXTENSIONS, ImageReadError, read_image
from lemevit.data.transforms import IMAGENET_RGB_MEAN_STD, eval_transform, train_transform
from lemevit.io import atomic_path

__all__ = [
    "ClassificationDataModule",
    "Sample",
    "SceneDataset",
    "band_statistics",
    "check_images",
    "load_split",
    "read_split_file",
    "save_split",
    "scan_class_folders",
    "stratified_split",
]

_SPLIT_FORMAT = "lemevit-split"
_SPLIT_VERSION = 1
_PROGRESS_MIN_IMAGES = 200
_AUGMENT_KEYS = ("hflip", "vflip", "rot90", "scale", "randaugment", "ratio")


@dataclass
class Sample:
    path: str  # relative to the dataset root, POSIX separators
    label: int


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset root {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"dataset root {root} is not a folder (expected one subfolder per class)")
    return root


def scan_class_folders(root: str | Path) -> tuple[list[str], list[Sample]]:
    """Class names (sorted subfolder names) and every image below them, sorted by path.

    Hidden folders and files (names starting with ``.``) and files without an image extension are
    ignored; images in nested folders belong to the class of their top folder. A class folder without
    any image is an error: it would be a class the model can never learn.
    """
    root = _check_root(root)
    class_names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not class_names:
        raise ValueError(f"dataset root {root} has no class folders (expected one subfolder per class "
                         f"holding {', '.join(sorted(IMAGE_EXTENSIONS))} images)")
    samples = []
    for label, name in enumerate(class_names):
        found = []
        for folder, dirs, files in os.walk(root / name):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = Path(folder).relative_to(root)
            found += [(rel / f).as_posix() for f in files if not f.startswith(".") and _is_image(f)]
        if not found:
            raise ValueError(f"empty class folder {root / name}: it holds no image files "
                             f"({', '.join(sorted(IMAGE_EXTENSIONS))}); remove it or add images")
        samples += [Sample(p, label) for p in found]
    samples.sort(key=lambda s: s.path)
    return class_names, samples


def _rank(seed: int, path: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{path}".encode()).digest()


def stratified_split(samples: Iterable[Sample], train_fraction: float, seed: int) -> dict[str, list[Sample]]:
    """Split each class into ``"train"`` and ``"val"`` with ``train_fraction`` of it in training.

    Each class is shuffled by ranking its images on a seeded hash of their path: the result does not
    depend on the order the samples come in, one class's assignment does not depend on any other
    class, and adding an image to a class moves at most one of the images already there. Every class
    has at least one training image, and at least one validation image when it has two or more.
    """
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)) \
            or not 0.0 < train_fraction < 1.0:
        raise ValueError(f"--split must be the fraction of each class used for training, strictly between 0 and 1; "
                         f"got {train_fraction!r}")
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    if not by_class:
        raise ValueError("cannot split an empty list of samples")
    splits: dict[str, list[Sample]] = {"train": [], "val": []}
    for members in by_class.values():
        members = sorted(members, key=lambda s: _rank(seed, s.path))
        n = len(members)
        n_val = min(max(n - round(n * train_fraction), 1), n - 1) if n >= 2 else 0
        splits["val"] += members[:n_val]
        splits["train"] += members[n_val:]
    for subset in splits.values():
        subset.sort(key=lambda s: s.path)
    return splits


def read_split_file(path: str | Path, root: str | Path, class_names: Sequence[str]) -> list[Sample]:
    """Samples listed in a text file: one image path per line, relative to ``root``, whose first
    component is the class folder (``Airport/airport_1.jpg``). Blank lines and lines starting with
    ``#`` are ignored. Errors name the file, the line number and the path."""
    path, root = Path(path), Path(root)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read split file {path}: {e}") from e
    labels = {name: i for i, name in enumerate(class_names)}
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        where = f"{path}, line {number}: {entry!r}"
        rel = PurePosixPath(entry)
        if rel.is_absolute() or len(rel.parts) < 2:
            raise ValueError(f"{where}: expected a path relative to {root} of the form <class>/<image>")
        if rel.parts[0] not in labels:
            raise ValueError(f"{where}: unknown class {rel.parts[0]!r}; the classes are {list(class_names)}")
        if not _is_image(rel.name):
            raise ValueError(f"{where}: not an image file; expected one of {', '.join(sorted(IMAGE_EXTENSIONS))}")
        if not (root / rel).is_file():
            raise ValueError(f"{where}: file {root / rel} not found")
        key = rel.as_posix()
        if key in seen:
            raise ValueError(f"{where}: listed twice (first on line {seen[key]})")
        seen[key] = number
        samples.append(Sample(key, labels[rel.parts[0]]))
    if not samples:
        raise ValueError(f"split file {path} lists no images")
    return samples


def save_split(path: str | Path, class_names: Sequence[str], splits: dict[str, list[Sample]],
               root: str | Path) -> None:
    """Write the class names, the root (as given) and each subset's samples as JSON, atomically."""
    class_names = [str(c) for c in class_names]
    for subset, samples in splits.items():
        for s in samples:
            if not 0 <= s.label < len(class_names):
                raise ValueError(f"sample {s.path} in subset {subset!r} has label {s.label}, but there are "
                                 f"{len(class_names)} classes")
    doc = {
        "format": _SPLIT_FORMAT,
        "version": _SPLIT_VERSION,
        "root": str(root),
        "class_names": class_names,
        "splits": {subset: [{"path": s.path, "label": s.label} for s in samples]
                   for subset, samples in splits.items()},
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def load_split(path: str | Path) -> tuple[str, list[str], dict[str, list[Sample]]]:
    """Read a file written by :func:`save_split`: ``(root, class_names, splits)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"split file {path} is not valid JSON: {e}") from e

    def bad(what: str) -> ValueError:
        return ValueError(f"split file {path} is not a lemevit split ({what}); write it with save_split")

    if not isinstance(doc, dict) or doc.get("format") != _SPLIT_FORMAT:
        raise bad(f'expected a JSON object with "format": "{_SPLIT_FORMAT}"')
    if doc.get("version") != _SPLIT_VERSION:
        raise bad(f"version {doc.get('version')!r}, this lemevit reads version {_SPLIT_VERSION}")
    root, class_names, raw = doc.get("root"), doc.get("class_names"), doc.get("splits")
    if not isinstance(root, str):
        raise bad('"root" must be a string')
    if not isinstance(class_names, list) or not class_names or not all(isinstance(c, str) for c in class_names):
        raise bad('"class_names" must be a non-empty list of strings')
    if not isinstance(raw, dict):
        raise bad('"splits" must be an object mapping subset names to lists of samples')
    splits: dict[str, list[Sample]] = {}
    for subset, entries in raw.items():
        if not isinstance(entries, list):
            raise bad(f'subset "{subset}" must be a list')
        samples = []
        for i, e in enumerate(entries):
            ok = (isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("label"), int)
                  and not isinstance(e.get("label"), bool) and 0 <= e["label"] < len(class_names))
            if not ok:
                raise bad(f'entry {i} of subset "{subset}" is {e!r}; expected {{"path": str, "label": int in '
                          f"0..{len(class_names) - 1}}}")
            samples.append(Sample(e["path"], e["label"]))
        splits[subset] = samples
    return root, class_names, splits


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
                raise ValueError(f"image {root / samples[i].path} {reason}")
            bad.append({"path": samples[i].path, "reason": reason})
    bad_paths = {b["path"] for b in bad}
    good = [s for s in samples if s.path not in bad_paths]
    bad.sort(key=lambda b: b["path"])
    return good, bad


def band_statistics(root: str | Path, samples: Sequence[Sample]) -> tuple[list[float], list[float]]:
    """Per-band mean and (population) std over all pixels of the given images, in their own value scale.

    Streaming: each image's count, mean and sum of squared deviations (float64) are merged into the
    running totals (Chan et al.), which keeps 16-bit and float data precise where a raw sum of squares
    would cancel.
    """
    if not samples:
        raise ValueError("band statistics need at least one image; the training set is empty")
    root = Path(root)
    count, mean, m2 = 0, None, None
    for s in _progress(samples, "band statistics"):
        image = read_image(root / s.path)
        pixels = image.reshape(-1, image.shape[2]).astype(np.float64)
        if mean is not None and pixels.shape[1] != mean.shape[0]:
            raise ValueError(f"image {root / s.path} has {pixels.shape[1]} band(s), expected {mean.shape[0]} "
                             "(run check_images first)")
        if not np.isfinite(pixels).all():
            raise ValueError(f"image {root / s.path} holds NaN or infinite values; mean and std would be undefined")
        n = pixels.shape[0]
        if n == 0:
            continue
        image_mean = pixels.mean(axis=0)
        image_m2 = ((pixels - image_mean) ** 2).sum(axis=0)
        if mean is None:
            count, mean, m2 = n, image_mean, image_m2
            continue
        total = count + n
        delta = image_mean - mean
        mean = mean + delta * (n / total)
        m2 = m2 + image_m2 + delta**2 * (count * n / total)
        count = total
    if mean is None:
        raise ValueError("band statistics need at least one pixel; all images are empty")
    return [float(m) for m in mean], [math.sqrt(float(v) / count) for v in m2]


def band_normalisation(root: str | Path, paths: Sequence[str | Path]) -> tuple[int, list[float], list[float]]:
    """Band count and per-band mean/std for the images ``paths`` (relative to ``root``) a model trains on:
    ImageNet's for 8-bit RGB (what pretrained backbones expect), else :func:`band_statistics` over them."""
    first = read_image(Path(root) / paths[0])
    if first.shape[-1] == 3 and first.dtype == np.uint8:
        mean, std = IMAGENET_RGB_MEAN_STD
        return 3, list(mean), list(std)
    mean, std = band_statistics(root, [Sample(path, 0) for path in paths])
    return first.shape[-1], mean, std


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
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.load(index)
        if self.transform is not None:
            if self.augment_seed is not None:
                torch.manual_seed((self.augment_seed * 1_000_003 + index) % 2**63)
            image = self.transform(image)
        return image, self.samples[index].label

    def plot(self, sample_indices: Sequence[int], class_names: Sequence[str], path: str | Path,
             columns: int = 6, bands: Sequence[int] | None = None) -> None:
        """Write a PNG grid of the untransformed images titled with their class names.

        ``bands`` picks the bands shown as RGB (default the first three, or the single band in gray);
        8-bit images are shown as they are, other data stretched per band between its 2nd and 98th
        percentile.
        """
        from matplotlib.figure import Figure

        indices = list(sample_indices)
        if not indices:
            raise ValueError("plot needs at least one sample index")
        for i in indices:
            if not -len(self) <= i < len(self):
                raise IndexError(f"sample index {i} is out of range for a dataset of {len(self)} images")
        columns = max(1, min(columns, len(indices)))
        rows = math.ceil(len(indices) / columns)
        fig = Figure(figsize=(2.2 * columns, 2.4 * rows))
        for k, i in enumerate(indices):
            ax = fig.add_subplot(rows, columns, k + 1)
            ax.imshow(self._display(i, bands), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            label = self.samples[i].label
            ax.set_title(class_names[label] if 0 <= label < len(class_names) else str(label), fontsize=9)
            ax.axis("off")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")

    def _display(self, index: int, bands: Sequence[int] | None) -> np.ndarray:
        """(H, W) or (H, W, 3) array in 0..1 for showing sample ``index``."""
        image = read_image(self.root / self.samples[index].path)
        count = image.shape[2]
        chosen = list(bands) if bands is not None else ([0] if count < 3 else [0, 1, 2])
        if len(chosen) not in (1, 3) or not all(0 <= b < count for b in chosen):
            raise ValueError(f"bands must be 1 or 3 band indices below {count} for {self.samples[index].path}, "
                             f"got {chosen}")
        shown = image[..., chosen].astype(np.float64)
        if image.dtype == np.uint8:
            shown /= 255.0
        else:
            low, high = np.percentile(shown, [2, 98], axis=(0, 1))
            shown = (shown - low) / np.where(high > low, high - low, 1.0)
        shown = np.clip(shown, 0.0, 1.0)
        return shown[..., 0] if len(chosen) == 1 else shown


class EpochShuffle(torch.utils.data.Sampler[int]):
    """A random order fixed by ``seed``: every iteration yields the same permutation."""

    def __init__(self, length: int, seed: int):
        self.length, self.seed = length, seed

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        return iter(torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed)).tolist())


def seed_everything_quietly(seed: int) -> None:
    """Seed Python, NumPy and torch (Lightning's seed_everything without its log line)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_loader_args(splits: dict, what: str, batch_size: int, num_workers: int) -> None:
    """The checks every data module makes of its arguments: ``train`` and ``val`` subsets that are not
    empty, a positive batch size, a non-negative number of workers. ``what`` names the items (images,
    tiles, pairs) in the error."""
    for subset in ("train", "val"):
        if not splits.get(subset):
            raise ValueError(f'the split has no "{subset}" {what}; expected "train" and "val" subsets (and optionally '
                             f'"test"), got {sorted(splits)}')
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")


class ClassificationDataModule(pl.LightningDataModule):
    """Data loaders for scene classification from a split (``"train"``, ``"val"``, optional ``"test"``).

    Training images go through :func:`~lemevit.data.train_transform` (``augment`` holds its keyword
    arguments: ``hflip``, ``vflip``, ``rot90``, ``scale``, ``ratio``, ``randaugment``), the others
    through :func:`~lemevit.data.eval_transform`. ``mean`` and ``std`` are per band in the images' own
    value scale. ``mean``, ``std`` and ``augment`` are keyword-only.
    """

    def __init__(self, root: str | Path, class_names: Sequence[str], splits: dict[str, list[Sample]],
                 img_size: int, batch_size: int, num_workers: int = 0, *, mean: Sequence[float],
                 std: Sequence[float], augment: dict | None = None, seed: int = 0):
        super().__init__()
        check_loader_args(splits, "images", batch_size, num_workers)
        unknown = sorted(set(augment or {}) - set(_AUGMENT_KEYS))
        if unknown:
            raise ValueError(f"augment has unknown key(s) {unknown}; expected some of {list(_AUGMENT_KEYS)}")
        self.class_names = list(class_names)
        for subset, samples in splits.items():
            for s in samples:
                if not 0 <= s.label < len(self.class_names):
                    raise ValueError(f"sample {s.path} in subset {subset!r} has label {s.label}, but there are "
                                     f"{len(self.class_names)} classes")
        self.root = Path(root)
        self.splits = {k: list(v) for k, v in splits.items()}
        self.img_size = img_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.augment = dict(augment or {})
        self.seed = seed
        # Built now so that a bad img_size / mean / std / augment fails at construction, not mid-training.
        self.train_transform = train_transform(img_size, self.mean, self.std, **self.augment)
        self.eval_transform = eval_transform(img_size, self.mean, self.std)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_bands(self) -> int:
        return len(self.mean)

    def dataset(self, subset: str) -> SceneDataset:
        """The dataset of one subset with the transform it is loaded with."""
        if subset not in self.splits:
            raise KeyError(f"the split has no {subset!r} subset; it has {sorted(self.splits)}")
        transform = self.train_transform if subset == "train" else self.eval_transform
        return SceneDataset(self.root, self.splits[subset], transform)

    def _loader(self, subset: str, train: bool) -> DataLoader:
        dataset = self.dataset(subset)
        sampler = None
        if train:
            # Shuffle and augmentations are functions of (seed, epoch) only (Lightning rebuilds the loader every
            # epoch): a run resumed at an epoch boundary draws the same batches as an uninterrupted one.
            epoch = self.trainer.current_epoch if self.trainer is not None else 0
            sampler = EpochShuffle(len(dataset), self.seed * 1_000_003 + epoch)
            dataset.augment_seed = self.seed * 1_000_003 + epoch
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            # A batch of one breaks batch-norm layers in training; dropping the remainder is only
            # affordable when there is more than one batch.
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0 and not train,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if self.splits.get("test") else "val", train=False)
