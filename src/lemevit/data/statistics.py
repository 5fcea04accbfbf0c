"""Per-band normalisation statistics of the images a model trains on, for every task."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lemevit.data.transforms import IMAGENET_RGB_MEAN_STD
from lemevit.errors import DataError
from lemevit.io.images import TIFF_EXTENSIONS, declared_nodata, optional_rasterio, read_image

__all__ = ["REFLECTANCE_TAG", "Normalisation", "band_metadata", "band_normalisation", "band_statistics"]

_PROGRESS_MIN_IMAGES = 200


@dataclass(frozen=True)
class Normalisation:
    """How a model's input is normalised: per-band ``mean`` and ``std`` in the images' own value scale, and the
    band count and data type of the images it was trained on; ``band_names``, the names of their bands in order
    when the images say them (a GeoTIFF's band descriptions), and ``reflectance``, whether their values are
    reflectance (digital numbers scaled by their product's quantification) rather than as stored."""

    bands: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype: str
    band_names: tuple[str, ...] | None = None
    reflectance: bool = False


#: The GeoTIFF tag that says a file's values are reflectance (as ``lemevit prepare oscd`` writes them).
REFLECTANCE_TAG = "LEMEVIT_VALUES"


def band_metadata(path: str | Path) -> tuple[tuple[str, ...] | None, bool]:
    """What a GeoTIFF says of its bands: their names (its band descriptions, when it names each band, and each
    differently), and whether its values are reflectance (:data:`REFLECTANCE_TAG`); ``(None, False)`` for other
    files."""
    rasterio = optional_rasterio()
    if rasterio is None or Path(path).suffix.lower() not in TIFF_EXTENSIONS:
        return None, False
    with rasterio.open(path) as dataset:
        names, reflectance = dataset.descriptions, dataset.tags().get(REFLECTANCE_TAG) == "reflectance"
    named = all(names) and len(set(names)) == len(names)
    return (tuple(names) if named else None), reflectance


def _progress(items: Sequence, desc: str) -> Iterable:
    if len(items) <= _PROGRESS_MIN_IMAGES:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="img")


def band_statistics(paths: Sequence[str | Path]) -> tuple[list[float], list[float]]:
    """Per-band mean and (population) std over all pixels of the images ``paths``, in their own value scale.

    Streaming: each image's count, mean and sum of squared deviations (float64) are merged into the running
    totals (Chan et al.), which keeps 16-bit and float data precise where a raw sum of squares would cancel.
    The pixels of an image that declares NaN as its nodata value and holds NaN or infinite values there are left
    out; such values in an image that does not declare them are refused.
    """
    if not paths:
        raise DataError("band statistics need at least one image; the training set is empty")
    count, mean, m2 = 0, None, None
    for path in _progress(paths, "band statistics"):
        image = read_image(path)
        pixels = image.reshape(-1, image.shape[2]).astype(np.float64)
        if mean is not None and pixels.shape[1] != mean.shape[0]:
            raise DataError(f"image {path} has {pixels.shape[1]} band(s), expected {mean.shape[0]} like the others")
        finite = np.isfinite(pixels).all(axis=1)
        if not finite.all():
            nodata = declared_nodata(path)
            if nodata is None or not math.isnan(nodata):
                raise DataError(f"image {path} holds NaN or infinite values that it does not declare as no data; "
                                "declare them (nodata=nan, e.g. gdal_edit.py -a_nodata nan FILE) to train with those "
                                "pixels left out of the statistics and fed as the band means")
            pixels = pixels[finite]  # its no data: left out of the statistics
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
        raise DataError("band statistics need at least one pixel; all images are empty")
    return [float(m) for m in mean], [math.sqrt(float(v) / count) for v in m2]


def band_normalisation(paths: Sequence[str | Path]) -> Normalisation:
    """The normalisation of a model trained on the images ``paths``: ImageNet's mean and std for 8-bit RGB
    (what pretrained backbones expect), else :func:`band_statistics` over them; the band names of the first image
    (:func:`band_metadata`)."""
    if not paths:
        raise DataError("no training images to compute the band statistics from")
    first = read_image(paths[0])
    bands, dtype = first.shape[-1], first.dtype.name
    if bands == 3 and first.dtype == np.uint8:
        mean, std = IMAGENET_RGB_MEAN_STD
    else:
        mean, std = band_statistics(paths)
    bad = [i for i, s in enumerate(std) if not s > 0]
    if bad:
        raise DataError(f"band(s) {bad} are constant over the training images (std 0): they carry no information; "
                        "drop them")
    return Normalisation(bands, tuple(float(m) for m in mean), tuple(float(s) for s in std), dtype,
                         *band_metadata(paths[0]))
