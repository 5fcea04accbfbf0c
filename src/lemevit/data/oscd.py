"""The Onera Satellite Change Detection data set (OSCD) as released, made a change-detection data set of the
LEVIR-CD layout: each labelled city's two dates, thirteen Sentinel-2 band files apiece at 10, 20 and 60 m, read
through the band-stack reader (:mod:`lemevit.io.bands`) onto the first date's 10 m grid (the second date's
products are cut a few pixels apart), as reflectance, into ``A/<city>.tif`` and ``B/<city>.tif`` (float32
GeoTIFFs in the dates' CRS, the bands named); ``<city>-cm.tif`` (1 no change, 2 change) into ``label/<city>.png``
(0 / 255); and the split into ``list/train.txt`` and ``list/val.txt``.

The release: ``<root>/Onera Satellite Change Detection dataset - Images/<city>/imgs_1|imgs_2/*_B01.tif ...``
with ``train.txt`` and ``test.txt`` (comma-separated cities), and the labels in ``... - Train Labels/<city>/cm/``
(and ``... - Test Labels`` where one has them). OSCD ships its L1C digital numbers without their metadata; its
products predate processing baseline 04.00, so reflectance is ``DN / 10000``.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lemevit.data.statistics import REFLECTANCE_TAG
from lemevit.errors import ConfigError, DataError
from lemevit.io import atomic_folder, atomic_path
from lemevit.io.bands import SENTINEL2_BANDS, BandStack, read_band_folder
from lemevit.io.images import optional_rasterio, read_image

__all__ = ["OSCD_IMAGES", "OSCD_SCALE", "find_oscd", "is_oscd_release", "oscd_cities", "prepare_oscd",
           "read_oscd_label", "stack_oscd"]

OSCD_IMAGES = "Onera Satellite Change Detection dataset - Images"
_LABELS = ("Onera Satellite Change Detection dataset - Train Labels",
           "Onera Satellite Change Detection dataset - Test Labels")
#: OSCD's L1C digital numbers are reflectance times 10000 (products before processing baseline 04.00: no offset).
OSCD_SCALE = 1e-4


#: What :func:`stack_oscd` stacked into a folder, written last: a folder without it was never finished.
STACK_FILE = "oscd_stack.json"


def is_oscd_release(root: str | Path) -> bool:
    """Whether ``root`` is the OSCD release (or its images folder) rather than a stacked data set."""
    root = Path(root)
    return not (root / "A").is_dir() and ((root / OSCD_IMAGES).is_dir() or (root / "train.txt").is_file())


def find_oscd(root: str | Path) -> tuple[Path, list[Path]]:
    """The images folder (the one with ``train.txt``) and the label folders of an OSCD release given as its
    root or as its images folder."""
    root = Path(root)
    images = root / OSCD_IMAGES if (root / OSCD_IMAGES).is_dir() else root
    if not (images / "train.txt").is_file():
        raise DataError(f"{root} is not the OSCD release: no {OSCD_IMAGES}/train.txt (nor train.txt in it)")
    labels = [images.parent / name for name in _LABELS if (images.parent / name).is_dir()]
    return images, labels


def oscd_cities(path: str | Path) -> list[str]:
    """The cities a list file names: comma-separated (OSCD's ``train.txt``) or one a line; ``#`` comments."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the list of cities {path}: {e}") from e
    names = [n.strip() for line in text.splitlines() if not line.strip().startswith("#")
             for n in re.split(r"[,\s]+", line) if n.strip()]
    if not names:
        raise DataError(f"{path} names no cities")
    return names


def read_oscd_label(path: str | Path) -> np.ndarray:
    """A change map of OSCD (``<city>-cm.tif``: 1 no change, 2 change) as ``(H, W)`` booleans; 0/1 and 0/255
    masks are read too."""
    values = read_image(path)[..., 0]
    found = set(np.unique(values).tolist())
    for no_change, change in ((1, 2), (0, 1), (0, 255)):
        if found <= {no_change, change}:
            return values == change
    raise DataError(f"change map {path} holds the values {sorted(found)[:8]}; expected OSCD's 1 (no change) and 2 "
                    "(change)")


def _label_path(labels: Sequence[Path], city: str) -> Path | None:
    return next((folder / city / "cm" / f"{city}-cm.tif" for folder in labels
                 if (folder / city / "cm" / f"{city}-cm.tif").is_file()), None)


def _write_date(path: Path, values: np.ndarray, stack: BandStack, names: Sequence[str]) -> None:
    rasterio = optional_rasterio()
    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", driver="GTiff", width=stack.width, height=stack.height, count=len(values),
                           dtype="float32", crs=stack.crs, transform=stack.transform, compress="deflate",
                           predictor=3, tiled=True, blockxsize=256, blockysize=256) as ds:
            ds.write(values)
            ds.descriptions = tuple(names)
            ds.update_tags(**{REFLECTANCE_TAG: "reflectance"})


def prepare_oscd(data: str | Path, output: str | Path, bands: Sequence[str] = (),
                 split_files: Mapping[str, str] | None = None, scale: float = OSCD_SCALE, offset: float = 0.0,
                 progress: bool = True) -> dict:
    """Write the labelled cities of the OSCD release ``data`` into ``output`` in the LEVIR-CD layout (see the
    module docstring), their ``bands`` (default all thirteen, in Sentinel-2's order) as reflectance
    ``DN * scale + offset``. The split: ``split_files`` (``{"train": FILE, "val": FILE}`` naming cities), else
    ``train.txt`` to train and the labelled cities of ``test.txt`` to validate (``{"test": FILE}`` alone: the
    cities to score); without those (this release has
    no test labels), only ``list/train.txt``, and ``train --split`` holds cities out. Returns what was written."""
    if optional_rasterio() is None:
        raise DataError('reading OSCD needs rasterio: pip install "lemevit[geo]"')
    images, labels = find_oscd(data)
    output = Path(output)
    names = list(bands) or list(SENTINEL2_BANDS)
    if split_files:
        if not ({"train", "val"} <= set(split_files) <= {"train", "val", "test"} or set(split_files) == {"test"}):
            raise ConfigError("split_files", f"takes the train and val lists of cities (and test), or the test list "
                                             f"alone; got {sorted(split_files)}")
        subsets = {subset: oscd_cities(path) for subset, path in split_files.items()}
    else:
        subsets = {"train": oscd_cities(images / "train.txt")}
        tested = [c for c in oscd_cities(images / "test.txt") if _label_path(labels, c)] \
            if (images / "test.txt").is_file() else []
        if tested:
            subsets["val"] = tested
    cities = list(dict.fromkeys(c for listed in subsets.values() for c in listed))
    for city in cities:
        if not (images / city / "imgs_1").is_dir() or not (images / city / "imgs_2").is_dir():
            raise DataError(f"{images / city} has no imgs_1/ and imgs_2/: {city} is not a city of {images}")
        if _label_path(labels, city) is None:
            raise DataError(f"{city} has no change map <labels>/{city}/cm/{city}-cm.tif in "
                            f"{', '.join(map(str, labels)) or images.parent}: it cannot train or validate")
    for folder in ("A", "B", "label", "list"):
        (output / folder).mkdir(parents=True, exist_ok=True)
    from PIL import Image
    from tqdm.auto import tqdm

    changed = 0
    for city in tqdm(cities, desc="stacking OSCD cities", unit="city", disable=not progress):
        first = read_band_folder(images / city / "imgs_1").select(names, reflectance=True, scale=scale,
                                                                  offset=offset)
        second = read_band_folder(images / city / "imgs_2").select(names, reflectance=True, scale=scale,
                                                                   offset=offset)
        stack = BandStack(first)
        try:
            label = read_oscd_label(_label_path(labels, city))
            if label.shape != (stack.height, stack.width):
                raise DataError(f"the change map of {city} is {label.shape[1]}x{label.shape[0]}, its first date's "
                                f"10 m grid {stack.width}x{stack.height} (width x height)")
            later = BandStack(second, stack.grid)
            try:
                for date, source in (("A", stack), ("B", later)):
                    valid = source.read_valid(0, source.height)
                    if valid is not None and not valid.all():
                        raise DataError(f"the bands of {city}'s date {date} leave {int((~valid).sum())} pixels of its "
                                        "10 m grid without data; the data set has none")
                    _write_date(output / date / f"{city}.tif", source.read(0, source.height), stack, names)
            finally:
                later.close()
        finally:
            stack.close()
        with atomic_path(output / "label" / f"{city}.png") as tmp:
            Image.fromarray(label.astype(np.uint8) * 255).save(tmp, format="PNG")
        changed += int(label.sum())
    for subset in ("train", "val", "test"):
        listed = output / "list" / f"{subset}.txt"
        if subset in subsets:
            with atomic_path(listed) as tmp:
                tmp.write_text("".join(f"{city}\n" for city in subsets[subset]))
        else:  # a list of an earlier preparation would split this one
            listed.unlink(missing_ok=True)
    return {"cities": len(cities), "subsets": {k: len(v) for k, v in subsets.items()}, "bands": names,
            "changed_pixels": changed}


def stack_oscd(data: str | Path, output: str | Path, bands: Sequence[str] = (),
               split_files: Mapping[str, str] | None = None, scale: float = OSCD_SCALE, offset: float = 0.0,
               progress: bool = True) -> Path:
    """The folder ``output`` holding the cities of the OSCD release ``data`` stacked by :func:`prepare_oscd`
    (same arguments), stacked once: a folder that an earlier call filled with the same bands, cities and scale is
    reused as it is, whatever the release's place; any other is stacked anew in a temporary folder that then takes
    its place whole, so that a stack cut short is done again, never used. Returns ``output``."""
    output = Path(output)
    images, _ = find_oscd(data)
    asked = {"bands": list(bands) or list(SENTINEL2_BANDS), "scale": scale, "offset": offset,
             "cities": {subset: oscd_cities(path) for subset, path in sorted((split_files or {}).items())}
             or {"train.txt": oscd_cities(images / "train.txt")}}
    try:
        if json.loads((output / STACK_FILE).read_text(encoding="utf-8")).get("asked") == asked:
            return output
    except (OSError, ValueError, AttributeError):
        pass  # none there, or not of this version: stacked anew
    with atomic_folder(output) as tmp:
        summary = prepare_oscd(data, tmp, bands, split_files, scale=scale, offset=offset, progress=progress)
        (tmp / STACK_FILE).write_text(json.dumps({"asked": asked, "release": str(images.resolve()),
                                                  "written": summary}, indent=1))
    return output
