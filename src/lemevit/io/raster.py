"""Raster scenes read and written by windows: GeoTIFFs through rasterio (rows at a time, with their CRS and
transform), other formats (PNG, JPEG), which cannot be decoded in parts, whole. Used by every dense task's
whole-scene prediction."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lemevit.data.images import TIFF_EXTENSIONS, optional_rasterio, read_image
from lemevit.errors import ConfigError, DataError

__all__ = ["GEO_HINT", "OUTPUT_EXTENSIONS", "ClassMapWriter", "RasterScene", "SceneStack", "gdal_cache"]

GEO_HINT = 'install rasterio for GeoTIFF output: pip install "lemevit[geo]"'
#: What a class or change map can be written as.
OUTPUT_EXTENSIONS = (".tif", ".tiff", ".png")


def gdal_cache(megabytes: int):
    """A context in which GDAL's block cache holds at most ``megabytes`` (it otherwise grows to 5 % of the
    machine's memory with the blocks of the scene); a no-op without rasterio."""
    import contextlib

    rasterio = optional_rasterio()
    return rasterio.Env(GDAL_CACHEMAX=megabytes) if rasterio is not None else contextlib.nullcontext()


class RasterScene:
    """Rows of a scene file: a TIFF through rasterio windows; other formats (PNG, JPEG), which cannot be
    decoded in parts, from the whole image as :func:`~lemevit.data.read_image` reads it. ``height``,
    ``width``, ``bands``, ``dtype`` (of the first band), ``crs`` and ``transform`` describe it."""

    def __init__(self, path: Path):
        rasterio = optional_rasterio()
        self.path = path
        self.dataset = None
        self.crs = self.transform = None
        if path.suffix.lower() in TIFF_EXTENSIONS and rasterio is not None:
            from rasterio.errors import NotGeoreferencedWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                try:
                    self.dataset = rasterio.open(path)
                except Exception as e:  # noqa: BLE001 - GDAL reports all unreadable files alike
                    raise DataError(f"cannot read scene {path}: {type(e).__name__}: {e}") from e
            self.height, self.width, self.bands = self.dataset.height, self.dataset.width, self.dataset.count
            self.crs, self.transform = self.dataset.crs, self.dataset.transform
            self.dtype = np.dtype(self.dataset.dtypes[0]).name
        else:
            self.array = read_image(path)
            if not self.array.flags.writeable:  # torch.from_numpy warns about read-only arrays
                self.array = self.array.copy()
            self.height, self.width, self.bands = self.array.shape
            self.dtype = self.array.dtype.name

    @property
    def georeferenced(self) -> bool:
        """Whether the file places its pixels on the ground (a CRS or a non-identity transform)."""
        return self.crs is not None or (self.transform is not None and not self.transform.is_identity)

    def read(self, top: int, bottom: int) -> np.ndarray:
        """``(C, rows, width)`` in the file's data type."""
        if self.dataset is None:
            return self.array[top:bottom].transpose(2, 0, 1)
        from rasterio.windows import Window

        return self.dataset.read(window=Window(0, top, self.width, bottom - top))

    def close(self) -> None:
        if self.dataset is not None:
            self.dataset.close()


class ClassMapWriter:
    """Strips of class indices into a GeoTIFF (written in windows, with the scene's georeference and the
    palette as its colour table) or a PNG (assembled in memory: PNG cannot be written in parts)."""

    def __init__(self, path: Path, tmp: Path, scene: RasterScene | SceneStack, palette: Sequence[Sequence[int]]):
        self.tmp, self.palette = tmp, palette
        self.dataset = self.array = None
        if path.suffix.lower() not in TIFF_EXTENSIONS:
            self.array = np.zeros((scene.height, scene.width), np.uint8)
            return
        rasterio = optional_rasterio()
        if rasterio is None:
            raise ConfigError("output", f"cannot write {path}: {GEO_HINT}")
        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self.dataset = rasterio.open(
                tmp, "w", driver="GTiff", height=scene.height, width=scene.width, count=1, dtype="uint8",
                crs=scene.crs, transform=scene.transform, tiled=True, blockxsize=256, blockysize=256,
                compress="deflate")

    def write(self, top: int, classes: np.ndarray) -> None:
        if self.dataset is None:
            self.array[top:top + classes.shape[0]] = classes
            return
        from rasterio.windows import Window

        self.dataset.write(classes[None], window=Window(0, top, classes.shape[1], classes.shape[0]))

    def close(self) -> None:
        if self.dataset is None:
            from PIL import Image

            Image.fromarray(self.array).save(self.tmp, format="PNG")
            return
        self.dataset.write_colormap(1, {i: (*colour, 255) for i, colour in enumerate(self.palette)})
        self.dataset.close()


class SceneStack:
    """Several co-registered scenes of one size read as one, their bands stacked in order (the dates of a change
    pair): ``read(top, bottom)`` gives ``(sum of bands, rows, width)``. The georeference is the first
    georeferenced scene's; scenes georeferenced differently, or of different sizes, are refused."""

    def __init__(self, paths: Sequence[Path]):
        self.scenes: list[RasterScene] = []
        try:
            for path in paths:
                self.scenes.append(RasterScene(Path(path)))
            first = self.scenes[0]
            for other in self.scenes[1:]:
                if (other.height, other.width) != (first.height, first.width):
                    raise DataError(f"the dates must have the same size: {first.path} is {first.width}x{first.height},"
                                    f" {other.path} is {other.width}x{other.height} (width x height)")
                if first.georeferenced and other.georeferenced and (
                        first.crs != other.crs or not first.transform.almost_equals(other.transform)):
                    raise DataError(f"{first.path} and {other.path} are not co-registered: their CRS or geotransforms "
                                    f"differ ({first.crs}, {tuple(first.transform)[:6]} vs {other.crs}, "
                                    f"{tuple(other.transform)[:6]})")
        except BaseException:
            self.close()
            raise
        located = [s for s in self.scenes if s.georeferenced] or self.scenes
        self.crs, self.transform = located[0].crs, located[0].transform
        self.height, self.width = first.height, first.width
        self.bands = sum(s.bands for s in self.scenes)
        self.dtypes = [s.dtype for s in self.scenes]

    @property
    def georeferenced(self) -> bool:
        return any(s.georeferenced for s in self.scenes)

    def read(self, top: int, bottom: int) -> np.ndarray:
        rows = [s.read(top, bottom) for s in self.scenes]
        if len({r.dtype for r in rows}) > 1:
            rows = [r.astype(np.float32) for r in rows]
        return rows[0] if len(rows) == 1 else np.concatenate(rows)

    def close(self) -> None:
        for scene in self.scenes:
            scene.close()
