"""Raster scenes read and written by windows: GeoTIFFs through rasterio (rows at a time, with their CRS and
transform), other formats (PNG, JPEG), which cannot be decoded in parts, whole. Used by every dense task's
whole-scene prediction.

GeoTIFF maps are written as Cloud-Optimized GeoTIFFs (internal tiles, overviews, the tiles in the order a
reader over HTTP wants them): GIS software and web viewers open a zoomed-out view of a whole scene from the
overviews, without reading the full-resolution map.

Scenes are read through GDAL when it can read them in parts: TIFFs, GDAL's virtual mosaics (``.vrt``) and remote
sources (``https://`` URLs, ``/vsicurl/`` and the other virtual file systems), of which GDAL fetches only the
byte ranges of the blocks read. Their nodata value, alpha band or mask (GDAL's mask of the dataset, whichever of
the three it has) tells which pixels are not to be predicted; so does a NaN or infinite value in a band of a
floating-point scene, declared or not (no model input can hold it).
"""
from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from lemevit.errors import ConfigError, DataError
from lemevit.io.atomic import scratch_path
from lemevit.io.bands import BandScene, BandStack
from lemevit.io.images import TIFF_EXTENSIONS, optional_rasterio, read_image
from lemevit.io.paths import download_whole, is_remote

__all__ = ["GEO_HINT", "OUTPUT_EXTENSIONS", "PROBABILITY_DTYPES", "ClassMapWriter", "CogWriter", "RasterScene",
           "SceneStack", "gdal_cache", "read_by_gdal"]

GEO_HINT = 'install rasterio for GeoTIFF output: pip install "lemevit[geo]"'
#: What a class or change map can be written as.
OUTPUT_EXTENSIONS = (".tif", ".tiff", ".png")
#: How probabilities can be stored: 0..255 for 0..1 (a quarter of float32's size, steps of 0.4 %), or half floats.
PROBABILITY_DTYPES = ("uint8", "float16")
_READ_HINT = 'install rasterio: pip install "lemevit[geo]"'
# Side of the tiles of written GeoTIFFs; overviews are added until the smallest fits in one tile.
_TILE = 256


def read_by_gdal(source: str | Path | BandScene) -> bool:
    """Whether a scene is read through GDAL, in windows: a TIFF, a VRT, a remote source or a scene of band files
    (else, whole by :func:`~lemevit.data.read_image`)."""
    return (isinstance(source, BandScene) or is_remote(source)
            or Path(source).suffix.lower() in (*TIFF_EXTENSIONS, ".vrt"))


def gdal_cache(megabytes: int):
    """A context in which GDAL's block cache holds at most ``megabytes`` (it otherwise grows to 5 % of the
    machine's memory with the blocks of the scene); a no-op without rasterio."""
    import contextlib

    rasterio = optional_rasterio()
    return rasterio.Env(GDAL_CACHEMAX=megabytes) if rasterio is not None else contextlib.nullcontext()


class RasterScene:
    """Rows of a scene: one GDAL reads (:func:`read_by_gdal`) through rasterio windows; other formats (PNG,
    JPEG), which cannot be decoded in parts, from the whole image as :func:`~lemevit.data.read_image` reads it.
    ``height``, ``width``, ``bands``, ``dtype`` (of the first band), ``crs`` and ``transform`` describe it;
    ``masked`` tells whether some pixels may be no data, which :meth:`read_valid` gives: those GDAL's mask of the
    dataset marks (``mask_declared``) and, in a floating-point scene, those with a NaN or infinite band.

    ``path`` is a local :class:`~pathlib.Path` or a remote source's string, or the name of ``array``, the
    ``(H, W, C)`` pixels of a scene already read. A remote source is opened without
    listing its folder (``GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR``): over HTTP that listing is a request per
    sidecar file GDAL looks for, and a remote scene has none. An alpha band counts among ``bands`` until
    :meth:`use_alpha_as_mask`."""

    def __init__(self, path: Path | str, array: np.ndarray | None = None):
        rasterio = optional_rasterio()
        self.path = path
        self.dataset = None
        self.crs = self.transform = None
        self.mask_declared, self.alpha = False, None
        # The window last read and whether each of its pixels is finite in every band, which read_valid takes
        # instead of reading the window again.
        self._finite: tuple[tuple, np.ndarray] | None = None
        #: The temporary whole copy of a remote scene whose server cannot send byte ranges.
        self.download: Path | None = None
        if array is None and read_by_gdal(path):
            if rasterio is None:
                raise DataError(f"cannot read scene {path}: GDAL reads it, {_READ_HINT}")
            from rasterio.enums import ColorInterp, MaskFlags
            from rasterio.errors import NotGeoreferencedWarning

            remote = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"} if is_remote(path) else {}
            with warnings.catch_warnings(), rasterio.Env(**remote):
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                try:
                    self.dataset = rasterio.open(path)
                except Exception as e:  # noqa: BLE001 - GDAL reports all unreadable files alike
                    if "Range downloading not supported" not in str(e):
                        raise DataError(f"cannot read scene {path}: {type(e).__name__}: {e}") from e
                    # GDAL reads a remote file by the byte ranges of the blocks it needs; a server that sends
                    # only whole files is read from a whole copy.
                    self.download = download_whole(path, "its server does not send byte ranges")
                    try:
                        self.dataset = rasterio.open(self.download)
                    except Exception as e:  # noqa: BLE001 - as above
                        self.close()
                        raise DataError(f"cannot read scene {path}: {type(e).__name__}: {e}") from e
            self.height, self.width, self.bands = self.dataset.height, self.dataset.width, self.dataset.count
            self.crs, self.transform = self.dataset.crs, self.dataset.transform
            self.dtype = np.dtype(self.dataset.dtypes[0]).name
            self.indexes = list(range(1, self.bands + 1))
            if ColorInterp.alpha in self.dataset.colorinterp:
                self.alpha = self.dataset.colorinterp.index(ColorInterp.alpha) + 1
            else:  # an alpha band read as a band is no mask (until use_alpha_as_mask)
                self.mask_declared = any(MaskFlags.all_valid not in flags for flags in self.dataset.mask_flag_enums)
        else:
            self.array = read_image(path) if array is None else array
            if not self.array.flags.writeable:  # torch.from_numpy warns about read-only arrays
                self.array = self.array.copy()
            self.height, self.width, self.bands = self.array.shape
            self.dtype = self.array.dtype.name
        self.floating = np.dtype(self.dtype).kind == "f"

    @property
    def masked(self) -> bool:
        return self.mask_declared or self.floating

    @property
    def georeferenced(self) -> bool:
        """Whether the file places its pixels on the ground (a CRS or a non-identity transform)."""
        return self.crs is not None or (self.transform is not None and not self.transform.is_identity)

    def use_alpha_as_mask(self) -> None:
        """Read the alpha band as the mask of the other bands, no longer as a band."""
        self.indexes.remove(self.alpha)
        self.bands -= 1
        self.mask_declared = True

    def read(self, top: int, bottom: int, left: int = 0, right: int | None = None) -> np.ndarray:
        """``(C, rows, columns)`` of rows ``top:bottom`` and columns ``left:right`` (default: all), in the file's
        data type."""
        right = self.width if right is None else right
        if self.dataset is None:
            data = self.array[top:bottom, left:right].transpose(2, 0, 1)
        else:
            from rasterio.windows import Window

            data = self.dataset.read(self.indexes, window=Window(left, top, right - left, bottom - top))
        if self.floating:
            self._finite = ((top, bottom, left, right), np.isfinite(data).all(axis=0))
        return data

    def read_valid(self, top: int, bottom: int, left: int = 0, right: int | None = None) -> np.ndarray | None:
        """``(rows, columns)`` booleans, the pixels with data, or None when all have. As GDAL's mask of the
        dataset: a pixel is no data where its bands all are (their nodata value, the alpha band's 0, the mask's
        0); in a floating-point scene, also where a band is NaN or infinite."""
        if not self.masked:
            return None
        right = self.width if right is None else right
        valid = None
        if self.mask_declared:
            from rasterio.windows import Window

            valid = self.dataset.read_masks(self.indexes,
                                            window=Window(left, top, right - left, bottom - top)).any(axis=0)
        if self.floating:
            if self._finite is None or self._finite[0] != (top, bottom, left, right):
                self.read(top, bottom, left, right)
            finite = self._finite[1]
            valid = finite if valid is None else valid & finite
        return valid

    def read_decimated(self, step: int) -> np.ndarray:
        """``(C, ceil(H / step), ceil(W / step))``: every ``step``-th row and column (GDAL reads them from the
        overviews where the file has some), for a look at a scene of any size."""
        if self.dataset is None:
            return self.array[::step, ::step].transpose(2, 0, 1)
        from rasterio.enums import Resampling

        shape = (len(self.indexes), math.ceil(self.height / step), math.ceil(self.width / step))
        return self.dataset.read(self.indexes, out_shape=shape, resampling=Resampling.nearest)

    def close(self) -> None:
        if self.dataset is not None:
            self.dataset.close()
        if self.download is not None:
            self.download.unlink(missing_ok=True)
            self.download = None


class CogWriter:
    """Strips of rows into a Cloud-Optimized GeoTIFF at ``tmp`` (the temporary of the atomic write of ``path``)
    with the georeference of ``scene``: a context, which writes the file on a normal exit.

    The strips go into a tiled GeoTIFF beside ``tmp`` (a :func:`~lemevit.io.atomic.scratch_path`, removed
    whatever happens); on exit GDAL builds its overviews (``resampling``: "mode" for classes, which cannot be
    averaged; "average" for probabilities) and its COG driver copies it with them, both reading the file block
    by block: memory is GDAL's block cache, for any scene size.

    Args:
        count, dtype: bands and their type; ``dtype`` "float16" stores half floats (GeoTIFF's 16-bit floats,
            which GDAL reads as float32).
        descriptions: one per band.
        colormap: ``{value: (r, g, b, a)}``, the colour table of a one-band uint8 file.
        nodata: the value declared as no data.
    """

    def __init__(self, path: Path, tmp: Path, scene: RasterScene | SceneStack | BandStack, count: int, dtype: str,
                 resampling: str, descriptions: Sequence[str], colormap: Mapping[int, tuple] | None = None,
                 nodata: int | None = None):
        self.rasterio = optional_rasterio()
        if self.rasterio is None:
            raise ConfigError("output", f"cannot write {path}: {GEO_HINT}")
        self.path, self.tmp, self.scene, self.count, self.resampling = path, tmp, scene, count, resampling
        self.descriptions, self.colormap, self.nodata = descriptions, colormap, nodata
        # Half floats are float32 written with 16 bits (GeoTIFF's half-float), which every GDAL since 2.0 reads.
        self.dtype, self.nbits = ("float32", 16) if dtype == "float16" else (dtype, None)

    def __enter__(self) -> CogWriter:
        from rasterio.errors import NotGeoreferencedWarning

        with ExitStack() as stack:
            self.scratch = stack.enter_context(scratch_path(self.path))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self.dataset = self.rasterio.open(
                    self.scratch, "w", driver="GTiff", height=self.scene.height, width=self.scene.width,
                    count=self.count, dtype=self.dtype, crs=self.scene.crs, transform=self.scene.transform,
                    nodata=self.nodata, tiled=True, blockxsize=_TILE, blockysize=_TILE, compress="deflate",
                    interleave="band", **self._nbits())
            stack.callback(self.dataset.close)
            for band, description in enumerate(self.descriptions, 1):
                self.dataset.set_band_description(band, description)
            if self.colormap is not None:
                self.dataset.write_colormap(1, self.colormap)
            self._stack = stack.pop_all()
        return self

    def write(self, top: int, rows: np.ndarray) -> None:
        """``(count, rows, width)`` from row ``top`` on."""
        from rasterio.windows import Window

        self.dataset.write(rows, window=Window(0, top, rows.shape[2], rows.shape[1]))

    def __exit__(self, kind, value, traceback) -> None:
        with self._stack:
            if kind is not None:
                return
            from rasterio.enums import Resampling

            self.dataset.build_overviews(_overview_factors(self.scene.height, self.scene.width),
                                         Resampling[self.resampling])
            self.dataset.close()
            _copy_as_cog(self.scratch, self.tmp, self._nbits())

    def _nbits(self) -> dict:
        return {"nbits": self.nbits} if self.nbits else {}


def _overview_factors(height: int, width: int) -> list[int]:
    """Halvings of the map until its longest side fits in one tile (none for a map that already does)."""
    return [2 ** k for k in range(1, max(0, math.ceil(math.log2(max(height, width) / _TILE))) + 1)]


@functools.cache
def _cog_driver() -> bool:
    """Whether GDAL has its COG driver (GDAL 3.1 and later)."""
    rasterio = optional_rasterio()
    with rasterio.Env() as env:
        return "COG" in env.drivers()


def _copy_as_cog(source: Path, target: Path, options: dict) -> None:
    """Copy the tiled GeoTIFF ``source``, overviews built, as a COG. Without GDAL's COG driver, its GeoTIFF
    driver copies the overviews after the tiles (a COG's layout, bar the order of some headers), with a
    warning."""
    import rasterio
    import rasterio.shutil
    from rasterio.errors import NotGeoreferencedWarning

    if _cog_driver():
        layout = {"driver": "COG", "blocksize": _TILE}
    else:
        warnings.warn(f"GDAL {rasterio.__gdal_version__} has no COG driver (GDAL 3.1+): {target.name} is a tiled "
                      "GeoTIFF with overviews, not a validated Cloud-Optimized GeoTIFF", stacklevel=3)
        layout = {"driver": "GTiff", "tiled": True, "blockxsize": _TILE, "blockysize": _TILE,
                  "copy_src_overviews": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        rasterio.shutil.copy(source, target, compress="deflate", **layout, **options)


class ClassMapWriter:
    """Strips of class indices into a Cloud-Optimized GeoTIFF (see :class:`CogWriter`: the scene's georeference,
    the palette as its colour table, ``value_names`` as its band description, ``nodata`` declared, overviews by
    the most frequent class) or a PNG (assembled in memory: PNG cannot be written in parts). A context, which
    writes the file on a normal exit."""

    def __init__(self, path: Path, tmp: Path, scene: RasterScene | SceneStack, palette: Sequence[Sequence[int]],
                 value_names: Mapping[int, str] | None = None, nodata: int | None = None):
        self.tmp, self.cog = tmp, None
        if path.suffix.lower() not in TIFF_EXTENSIONS:
            self.array = np.zeros((scene.height, scene.width), np.uint8)
            return
        description = ", ".join(f"{value}={name}" for value, name in (value_names or {}).items())
        self.cog = CogWriter(path, tmp, scene, 1, "uint8", "mode", [description],
                             {i: (*colour, 255) for i, colour in enumerate(palette)}, nodata)

    def __enter__(self) -> ClassMapWriter:
        if self.cog is not None:
            self.cog.__enter__()
        return self

    def write(self, top: int, classes: np.ndarray) -> None:
        if self.cog is not None:
            self.cog.write(top, classes[None])
        else:
            self.array[top:top + classes.shape[0]] = classes

    def __exit__(self, kind, value, traceback) -> None:
        if self.cog is not None:
            self.cog.__exit__(kind, value, traceback)
        elif kind is None:
            from PIL import Image

            Image.fromarray(self.array).save(self.tmp, format="PNG")


class SceneStack:
    """Several co-registered scenes of one size read as one, their bands stacked in order (the dates of a change
    pair): ``read(top, bottom)`` gives ``(sum of bands, rows, width)``. The georeference is the first
    georeferenced scene's; scenes georeferenced differently, or of different sizes, are refused.

    ``bands``, the number the model expects, decides what an alpha band is: when the bands without the scenes'
    alpha bands are that many (an RGBA scene for an RGB model), each alpha band is its scene's mask; otherwise it
    is read as a band, as training reads it (a 4th band declared alpha may be near-infrared). ``arrays``, when
    given, are the ``(H, W, C)`` pixels of the scenes already read, ``paths`` then only naming them. A scene of
    band files (a :class:`~lemevit.io.bands.BandScene` whose bands were selected) is read as a
    :class:`~lemevit.io.bands.BandStack`, on its finest band's grid, or on the first scene's when that is one
    too."""

    def __init__(self, paths: Sequence[Path | str | BandScene], bands: int | None = None,
                 arrays: Sequence[np.ndarray] | None = None):
        self.scenes: list[RasterScene | BandStack] = []
        try:
            for path, array in zip(paths, arrays or [None] * len(paths), strict=True):
                if isinstance(path, BandScene):
                    # The dates of a pair of band scenes are read on the first date's grid: products of one
                    # place cut at two dates may be a few pixels apart (OSCD's are).
                    first = self.scenes[0] if self.scenes and isinstance(self.scenes[0], BandStack) else None
                    self.scenes.append(BandStack(path, first.grid if first else None))
                else:
                    self.scenes.append(RasterScene(path, array))
            alphas = [s for s in self.scenes if s.alpha is not None]
            if alphas and sum(s.bands for s in self.scenes) - len(alphas) == bands:
                for scene in alphas:
                    scene.use_alpha_as_mask()
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

    def read(self, top: int, bottom: int, left: int = 0, right: int | None = None) -> np.ndarray:
        return self._stacked([s.read(top, bottom, left, right) for s in self.scenes])

    def read_decimated(self, step: int) -> np.ndarray:
        return self._stacked([s.read_decimated(step) for s in self.scenes])

    @staticmethod
    def _stacked(parts: list[np.ndarray]) -> np.ndarray:
        if len({p.dtype for p in parts}) > 1:
            parts = [p.astype(np.float32) for p in parts]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @property
    def masked(self) -> bool:
        return any(s.masked for s in self.scenes)

    def read_valid(self, top: int, bottom: int, left: int = 0, right: int | None = None) -> np.ndarray | None:
        """``(rows, columns)`` booleans, the pixels with data in every scene (a pixel is no data when it is in one
        date), or None when all have."""
        masks = [m for m in (s.read_valid(top, bottom, left, right) for s in self.scenes) if m is not None]
        return np.logical_and.reduce(masks) if masks else None

    def no_data_pixels(self, rows: int = 512) -> int:
        """The pixels of no data (see :meth:`read_valid`) of the whole stack, counted strip by strip of ``rows``."""
        if not self.masked:
            return 0
        return sum(int(valid.size - np.count_nonzero(valid)) for top in range(0, self.height, rows)
                   if (valid := self.read_valid(top, min(top + rows, self.height))) is not None)

    def close(self) -> None:
        for scene in self.scenes:
            scene.close()
