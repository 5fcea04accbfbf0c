"""Reading regions of images without decoding more than needed: headers for sizes, rasterio windows for TIFF,
and a cache of decoded tiles for formats that cannot be read in parts (PNG, JPEG), for every task's crops."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from lemevit.errors import ConfigError
from lemevit.io.images import TIFF_EXTENSIONS, ImageReadError, optional_rasterio, read_image, shown_size

__all__ = ["RegionReader", "raster_size", "read_region"]


def raster_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image from its header, without decoding the pixels (as :func:`read_image` gives
    it: after a JPEG's EXIF orientation)."""
    path = Path(path)
    rasterio = optional_rasterio()
    if path.suffix.lower() in TIFF_EXTENSIONS and rasterio is not None:
        try:
            with rasterio.open(path) as ds:
                return ds.height, ds.width
        except Exception as e:  # noqa: BLE001 - GDAL reports all unreadable files alike
            raise ImageReadError(path, f"{type(e).__name__}: {e}") from e
    from PIL import Image

    try:
        with Image.open(path) as im:
            return shown_size(im)
    except Exception as e:  # noqa: BLE001 - PIL raises several types for bad files
        raise ImageReadError(path, f"{type(e).__name__}: {e}") from e


def _read_by_window(path: Path) -> bool:
    return path.suffix.lower() in TIFF_EXTENSIONS and optional_rasterio() is not None


def read_region(path: str | Path, top: int, left: int, height: int, width: int) -> np.ndarray:
    """``(height, width, C)`` pixels of a region, read through a rasterio window for TIFF (only the
    region is decoded, whatever the tile's size) and cut from the whole image otherwise."""
    path = Path(path)
    if _read_by_window(path):
        from rasterio.windows import Window

        try:
            with optional_rasterio().open(path) as ds:
                data = ds.read(window=Window(left, top, width, height))
        except Exception as e:  # noqa: BLE001 - GDAL reports all unreadable files alike
            raise ImageReadError(path, f"{type(e).__name__}: {e}") from e
        return np.ascontiguousarray(np.moveaxis(data, 0, -1))
    return np.ascontiguousarray(read_image(path)[top:top + height, left:left + width])


class RegionReader:
    """:func:`read_region` that keeps the whole decoded images of files it cannot read by window (PNG,
    JPEG, TIFF without rasterio), up to ``max_bytes`` and least recently used dropped first: random crops
    from a 1024² PNG tile then cost a slice each, not the decoding of the whole tile (about 50 ms) every
    time. Each data loader worker holds its own copy."""

    def __init__(self, max_bytes: int = 512 * 2**20):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ConfigError("max_bytes", f"must be a non-negative integer, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._images: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._bytes = 0

    def __call__(self, path: str | Path, top: int, left: int, height: int, width: int) -> np.ndarray:
        path = Path(path)
        if _read_by_window(path):
            return read_region(path, top, left, height, width)
        image = self._images.get(path)
        if image is None:
            image = read_image(path)
            self._keep(path, image)
        else:
            self._images.move_to_end(path)
        return np.ascontiguousarray(image[top:top + height, left:left + width])

    def _keep(self, path: Path, image: np.ndarray) -> None:
        if image.nbytes > self.max_bytes:
            return
        self._images[path] = image
        self._bytes += image.nbytes
        while self._bytes > self.max_bytes:
            self._bytes -= self._images.popitem(last=False)[1].nbytes

    def __getstate__(self) -> dict:
        # Workers started by spawn receive the reader pickled: send the budget, not the images.
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_bytes"])

