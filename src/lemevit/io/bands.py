"""Scenes made of several band files, read as one multi-band raster: a folder of per-band GeoTIFFs or JPEG 2000
files (``*_B02.tif``, ``*_B8A_20m.jp2``), a Sentinel-2 L1C or L2A SAFE folder, or a STAC Item whose assets are
per-band COGs (:mod:`lemevit.io.stac`). Each becomes a :class:`BandScene`, a list of :class:`BandFile` (a band of
a file or URL, with its scale, offset and nodata); :meth:`BandScene.select` picks and orders the bands a model
takes, and :class:`BandStack` reads them by windows onto one grid, the finest chosen band's (or a resolution
asked for): bilinear for reflectance, nearest for masks and classifications (a Sentinel-2 SCL band), through GDAL's
warped VRTs, so that a remote band is read by the byte ranges of the blocks a window needs.

Sentinel-2 digital numbers become reflectance as ``DN * scale + offset``: for a SAFE product ``scale`` is one over
its quantification value and ``offset`` its radiometric offset over the same (``-1000 / 10000`` since processing
baseline 04.00), both from ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``; for a STAC Item, its ``raster:bands``.
"""
from __future__ import annotations

import dataclasses
import math
import re
import warnings
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lemevit.errors import ConfigError, DataError
from lemevit.io.images import optional_rasterio
from lemevit.io.paths import is_remote, list_images, source_name

__all__ = ["SENTINEL2_BANDS", "BandFile", "BandScene", "BandStack", "band_aliases", "band_name", "find_band_scenes",
           "is_safe", "list_scenes", "read_band_folder", "read_safe"]

#: Sentinel-2's bands in the order of its metadata's ``band_id``, with their STAC common names.
SENTINEL2_BANDS = {"B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
                   "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "nir09",
                   "B10": "cirrus", "B11": "swir16", "B12": "swir22"}
_COMMON_TO_SENTINEL2 = {common: band for band, common in SENTINEL2_BANDS.items()}
# Classification bands, read by nearest neighbour and never scaled: Sentinel-2 L2A's scene classification.
_CATEGORICAL_BANDS = {"SCL"}
# A band in a file name: B02, B2, B8A, SCL, delimited by anything but a letter or digit (T33UUB is a tile).
_BAND_IN_NAME = re.compile(r"(?<![A-Za-z0-9])(B\d{1,2}|B8A|SCL)(?![A-Za-z0-9])", re.IGNORECASE)
_RESOLUTION_IN_NAME = re.compile(r"_(\d+)m$")
# The files of a Sentinel-2 product's image folders that are no band: true colour, aerosol, water vapour.
_PRODUCT_EXTRAS = re.compile(r"_(TCI|AOT|WVP)(_\d+m)?$", re.IGNORECASE)
_BAND_EXTENSIONS = (".tif", ".tiff", ".jp2")
_SAFE_METADATA = ("MTD_MSIL2A.xml", "MTD_MSIL1C.xml")
_READ_HINT = 'install rasterio: pip install "lemevit[geo]"'


def band_name(text: str) -> str | None:
    """The band a file name (or any text) names, spelt as Sentinel-2 spells it (``B2`` → ``B02``), or None."""
    found = _BAND_IN_NAME.findall(text)
    if not found:
        return None
    name = found[-1].upper()
    return name if name in ("B8A", "SCL") else f"B{int(name[1:]):02d}"


def band_aliases(*names: str | None) -> frozenset[str]:
    """Every name a band answers to, lower-cased: its own names and, for a Sentinel-2 band, its number and common
    name both (``B04`` and ``red``; ``B4`` is ``B04``)."""
    found = set()
    for name in filter(None, names):
        found.add(name.lower())
        canonical = _COMMON_TO_SENTINEL2.get(name.lower()) or (
            band_name(name) if _BAND_IN_NAME.fullmatch(name) else None)
        if canonical in SENTINEL2_BANDS:
            found |= {canonical.lower(), SENTINEL2_BANDS[canonical]}
    return frozenset(found)


# Not frozen: Lightning rebuilds the dataclasses of a batch (a prediction job) field by field.
@dataclass(unsafe_hash=True)
class BandFile:
    """One band of a scene: band ``index`` of the file or URL ``href``, called ``name`` and answering to
    ``aliases`` (lower-cased). ``scale`` and ``offset`` turn its values into reflectance (None: the product does
    not say); ``nodata`` is the value of its pixels without data; a ``categorical`` band (classes, a mask) is
    resampled by nearest neighbour and never scaled. ``single`` tells a band that is its file's only one."""

    name: str
    href: str
    index: int = 1
    aliases: frozenset[str] = frozenset()
    scale: float | None = None
    offset: float | None = None
    nodata: float | None = None
    categorical: bool = False
    single: bool = True

    def answers_to(self, name: str) -> bool:
        return bool(band_aliases(name) & (self.aliases | {self.name.lower()}))


@dataclass(unsafe_hash=True)
class BandScene:
    """A scene made of band files: ``name``, a file name whose stem names its map; ``source``, what it was read
    from (for messages); ``bands``, in order; ``visual``, the bands of its RGB picture (a STAC Item's visual
    asset), taken when nothing else says which; ``resolution``, the side of the grid's
    pixels when one was asked for (default: the finest band's); ``reflectance``, whether its values are read as
    reflectance (scaled) or as stored."""

    name: str
    source: str
    bands: tuple[BandFile, ...]
    visual: tuple[BandFile, ...] = ()
    resolution: float | None = None
    reflectance: bool = False

    def files(self) -> list[Path | str]:
        """The files (or URLs) the scene reads."""
        return list(dict.fromkeys(Path(b.href) if not is_remote(b.href) else b.href for b in self.bands))

    def find(self, name: str) -> BandFile | None:
        """The band called ``name``: an asset or file named so first, then a band of its own file by its name or
        common name, then a band of a multi-band file (an RGB visual asset)."""
        for matches in (lambda b: b.name.lower() == name.lower() and b.single,
                        lambda b: b.single and b.answers_to(name), lambda b: b.answers_to(name)):
            for band in self.bands:
                if matches(band):
                    return band
        return None

    def select(self, names: Sequence[str] = (), trained: Sequence[str] | None = None, reflectance: bool = False,
               scale: float | None = None, offset: float | None = None,
               resolution: float | None = None) -> BandScene:
        """This scene reduced to the bands a model takes, in its order.

        Args:
            names: the bands asked for (``--bands``), by file band, asset key, name or common name.
            trained: the bands the model was trained on, taken when ``names`` is empty; else the Item's visual
                asset.
            reflectance: read the values as reflectance, ``DN * scale + offset`` with the product's scale and
                offset (the model was trained so), else as stored.
            scale, offset: the reflectance scale and offset of the bands whose product says none.
            resolution: the pixel side of the grid (default: the finest chosen band's).
        """
        available = ", ".join(b.name for b in self.bands)
        if names or trained:
            wanted, why = (list(names), "asked for") if names else (list(trained), "the model was trained on")
            chosen = [self.find(name) for name in wanted]
            missing = [name for name, band in zip(wanted, chosen, strict=True) if band is None]
            if missing:
                raise DataError(f"{self.source} lacks the band(s) {', '.join(missing)} {why} (it has {available})")
        elif self.visual:
            chosen = list(self.visual)
        else:
            raise ConfigError("bands", f"{self.source}: say which of its bands ({available}) the model takes, in "
                                       "order, with `bands`: the model records no band names")
        if not reflectance and (scale is not None or offset is not None):
            raise ConfigError("reflectance_scale" if scale is not None else "reflectance_offset",
                              "the model was trained on values as stored, not on reflectance: it takes no scale")
        if reflectance:
            unscaled = [b.name for b in chosen if not b.categorical and b.scale is None]
            if unscaled and scale is None:
                raise ConfigError("reflectance_scale", f"{self.source}: the model was trained on reflectance, and "
                                                       f"nothing says the scale of {', '.join(unscaled)}: give it")
            chosen = [b if b.categorical or b.scale is not None else
                      dataclasses.replace(b, scale=scale, offset=offset or 0.0) for b in chosen]
        if resolution is not None and not resolution > 0:
            raise ConfigError("resolution", f"must be a positive pixel side, got {resolution!r}")
        return dataclasses.replace(self, bands=tuple(chosen), visual=(), resolution=resolution,
                                   reflectance=reflectance)


def _remote_env() -> dict:
    # Over HTTP, listing a band's folder is a request per sidecar file GDAL looks for; a remote band has none.
    return {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}


class BandStack:
    """The bands of a selected :class:`BandScene` read as one raster, by windows, onto one grid: that of the
    finest band (the smallest pixels; with ``resolution``, its extent at that pixel side). It has what
    :class:`~lemevit.io.raster.RasterScene` has (``height``, ``width``, ``bands``, ``dtype``, ``crs``,
    ``transform``, ``masked``, ``read``, ``read_valid``, ``read_decimated``), so that it is predicted as a
    multi-band GeoTIFF is.

    Values are float32 reflectance when the scene is read as reflectance (categorical bands as stored), else as
    stored (in the type that holds every band's: uint16 for uint16 bands and a uint8 classification). A pixel has
    data where every band has (its nodata value, or its file's mask, says not): a pixel lacking one band would be
    normalised from a fill value.

    ``grid``, ``(crs, transform, height, width)``, reads the bands onto another grid instead (the first date's,
    for the second date of a pair whose products were cut on grids a few pixels apart)."""

    alpha = None

    def __init__(self, scene: BandScene, grid: tuple | None = None):
        rasterio = optional_rasterio()
        if rasterio is None:
            raise DataError(f"cannot read {scene.source}: its bands are read through GDAL, {_READ_HINT}")
        from rasterio.enums import MaskFlags, Resampling
        from rasterio.errors import NotGeoreferencedWarning
        from rasterio.vrt import WarpedVRT

        self.path, self.scene = scene.source, scene
        self._datasets: dict[str, object] = {}
        self._warped: list = []
        try:
            with warnings.catch_warnings(), rasterio.Env(**_remote_env()):
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                for band in scene.bands:
                    if band.href not in self._datasets:
                        try:
                            self._datasets[band.href] = rasterio.open(band.href)
                        except Exception as e:  # noqa: BLE001 - GDAL reports all unreadable files alike
                            raise DataError(f"cannot read band {band.name} of {scene.source} ({band.href}): "
                                            f"{type(e).__name__}: {e}") from e
                    dataset = self._datasets[band.href]
                    if band.index > dataset.count:
                        raise DataError(f"{band.href} has {dataset.count} band(s), not the band {band.index} of "
                                        f"{band.name}")
                datasets = [self._datasets[b.href] for b in scene.bands]
                self.crs, self.transform, self.height, self.width = grid or self._grid(datasets, scene)
                self.masked = False
                self._masked_bands = []
                for band, dataset in zip(scene.bands, datasets, strict=True):
                    nodata = band.nodata if band.nodata is not None else dataset.nodatavals[band.index - 1]
                    resampling = Resampling.nearest if band.categorical else Resampling.bilinear
                    # Without a nodata value, an alpha band of the warp tells the pixels outside the band's
                    # footprint (a band cut a little smaller than the grid), which would otherwise read as 0.
                    options = {"src_nodata": nodata, "nodata": nodata} if nodata is not None else {"add_alpha": True}
                    self._warped.append(WarpedVRT(dataset, crs=self.crs, transform=self.transform, width=self.width,
                                                  height=self.height, resampling=resampling, **options))
                    masked = nodata is not None or MaskFlags.all_valid not in dataset.mask_flag_enums[band.index - 1]
                    self._masked_bands.append(masked or not self._covers(dataset))
                    self.masked |= self._masked_bands[-1]
        except BaseException:
            self.close()
            raise
        self.bands = len(scene.bands)
        self._scaled = [scene.reflectance and not b.categorical for b in scene.bands]
        types = [d.dtypes[b.index - 1] for b, d in zip(scene.bands, datasets, strict=True)]
        self.dtype = "float32" if any(self._scaled) else np.result_type(*types).name

    @staticmethod
    def _grid(datasets: list, scene: BandScene) -> tuple:
        """CRS, transform, height and width of the grid: the finest band's (in the first band's CRS), or its
        extent at ``scene.resolution``."""
        from rasterio.transform import from_origin

        crs = datasets[0].crs
        same = [d for d in datasets if d.crs == crs]
        finest = min(same, key=lambda d: abs(d.transform.a * d.transform.e))
        if scene.resolution is None:
            return crs, finest.transform, finest.height, finest.width
        left, bottom, right, top = finest.bounds
        width = max(1, round((right - left) / scene.resolution))
        height = max(1, round((top - bottom) / scene.resolution))
        return crs, from_origin(left, top, scene.resolution, scene.resolution), height, width

    def _covers(self, dataset) -> bool:
        """Whether a band's footprint holds every pixel centre of the grid (same CRS: compared by bounds)."""
        if dataset.crs != self.crs:
            return False
        left, bottom, right, top = dataset.bounds
        half_x, half_y = abs(self.transform.a) / 2, abs(self.transform.e) / 2
        x0, y0 = self.transform * (0, 0)
        x1, y1 = self.transform * (self.width, self.height)
        return (left <= min(x0, x1) + half_x and max(x0, x1) - half_x <= right
                and bottom <= min(y0, y1) + half_y and max(y0, y1) - half_y <= top)

    @property
    def grid(self) -> tuple:
        """``(crs, transform, height, width)``: what the bands are read onto."""
        return self.crs, self.transform, self.height, self.width

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None or not self.transform.is_identity

    def _window(self, top: int, bottom: int, left: int, right: int | None):
        from rasterio.windows import Window

        right = self.width if right is None else right
        return Window(left, top, right - left, bottom - top)

    def _values(self, parts: list[np.ndarray]) -> np.ndarray:
        out = np.stack(parts).astype(self.dtype, copy=False)
        for i, (band, scaled) in enumerate(zip(self.scene.bands, self._scaled, strict=True)):
            if scaled:
                out[i] = parts[i] * np.float32(band.scale) + np.float32(band.offset or 0.0)
        return out

    def read(self, top: int, bottom: int, left: int = 0, right: int | None = None) -> np.ndarray:
        """``(C, rows, columns)`` of rows ``top:bottom`` and columns ``left:right`` (default: all) of the grid."""
        window = self._window(top, bottom, left, right)
        with optional_rasterio().Env(**_remote_env()):
            parts = [vrt.read(band.index, window=window) for vrt, band in zip(self._warped, self.scene.bands,
                                                                              strict=True)]
        return self._values(parts)

    @property
    def mask_declared(self) -> bool:
        """Whether the bands declare pixels without data (a nodata value, a mask, a footprint short of the grid)."""
        return self.masked

    def read_valid(self, top: int, bottom: int, left: int = 0, right: int | None = None) -> np.ndarray | None:
        """``(rows, columns)`` booleans, the pixels where every band has data, or None when all have."""
        if not self.masked:
            return None
        window = self._window(top, bottom, left, right)
        with optional_rasterio().Env(**_remote_env()):
            masks = [vrt.read_masks(band.index, window=window) > 0
                     for vrt, band, masked in zip(self._warped, self.scene.bands, self._masked_bands, strict=True)
                     if masked]
        return np.logical_and.reduce(masks)

    def read_decimated(self, step: int) -> np.ndarray:
        """``(C, ceil(H / step), ceil(W / step))``: every ``step``-th row and column, for a look at the scene."""
        from rasterio.enums import Resampling

        shape = (math.ceil(self.height / step), math.ceil(self.width / step))
        with optional_rasterio().Env(**_remote_env()):
            parts = [vrt.read(band.index, out_shape=shape, resampling=Resampling.nearest)
                     for vrt, band in zip(self._warped, self.scene.bands, strict=True)]
        return self._values(parts)

    def close(self) -> None:
        for vrt in self._warped:
            vrt.close()
        for dataset in self._datasets.values():
            dataset.close()


# --- band folders and SAFE products -------------------------------------------------------------------------
def _band_files(files: Sequence[Path], source: str) -> dict[str, Path]:
    """``{band: file}`` of files named by band; of several files of one band (a SAFE's R10m, R20m, R60m), the one
    of the smallest ``_NNm`` suffix."""
    found: dict[str, list[Path]] = {}
    for path in files:
        name = band_name(path.stem)
        if name is not None:
            found.setdefault(name, []).append(path)
    chosen = {}
    for name, paths in found.items():
        if len(paths) > 1:
            sides = [_RESOLUTION_IN_NAME.search(p.stem) for p in paths]
            if not all(sides):
                raise DataError(f"{source}: several files of band {name} ({', '.join(p.name for p in paths[:3])}) "
                                "and no _10m/_20m/_60m suffix to tell the finest")
            paths = [p for _, p in sorted(zip([int(s.group(1)) for s in sides], paths, strict=True))]
        chosen[name] = paths[0]
    return dict(sorted(chosen.items(), key=lambda item: _band_order(item[0])))


def _band_order(name: str) -> tuple:
    order = list(SENTINEL2_BANDS)
    return (0, order.index(name), "") if name in order else (1, 0, name)


def _is_band_folder(folder: Path) -> bool:
    """Whether a folder holds a scene as band files: at least two image files, each named by a band (besides a
    SAFE's true-colour picture, aerosol and water-vapour files)."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _BAND_EXTENSIONS
             and not p.name.startswith(".") and not _PRODUCT_EXTRAS.search(p.stem)]
    return len(files) >= 2 and all(band_name(p.stem) for p in files) and len({band_name(p.stem) for p in files}) > 1


def _band_file(name: str, path: Path, scale=None, offset=None, nodata=None) -> BandFile:
    categorical = name in _CATEGORICAL_BANDS
    return BandFile(name, str(path), 1, band_aliases(name), None if categorical else scale,
                    None if categorical else offset, nodata, categorical)


def read_band_folder(folder: str | Path) -> BandScene:
    """A folder of per-band files (``*_B02.tif``, ``B8A.jp2``) as one scene, its bands in Sentinel-2's order. The
    files say nothing of reflectance: a model trained on it takes ``reflectance_scale``."""
    folder = Path(folder)
    files = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in _BAND_EXTENSIONS and not p.name.startswith(".")]
    bands = _band_files(files, str(folder))
    if not bands:
        raise DataError(f"{folder}: no band files (*_B02.tif, *_B8A.jp2, ...)")
    return BandScene(folder.name, str(folder), tuple(_band_file(n, p) for n, p in bands.items()))


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _safe_radiometry(metadata: Path) -> tuple[dict[str, tuple[float, float]], float | None]:
    """``{band: (scale, offset)}`` and the nodata value from a SAFE's ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml``:
    reflectance is ``(DN + RADIO_ADD_OFFSET or BOA_ADD_OFFSET) / (BOA_)QUANTIFICATION_VALUE``."""
    try:
        root = ElementTree.parse(metadata).getroot()
    except (OSError, ElementTree.ParseError) as e:
        raise DataError(f"cannot read {metadata}: {e}") from e
    quantification, offsets, nodata = None, {}, None
    for element in root.iter():
        tag = _local(element.tag)
        if tag in ("QUANTIFICATION_VALUE", "BOA_QUANTIFICATION_VALUE"):
            quantification = float(element.text)
        elif tag in ("RADIO_ADD_OFFSET", "BOA_ADD_OFFSET"):
            offsets[int(element.get("band_id"))] = float(element.text)
        elif tag == "Special_Values":
            values = {_local(child.tag): (child.text or "").strip() for child in element}
            if values.get("SPECIAL_VALUE_TEXT") == "NODATA":
                nodata = float(values["SPECIAL_VALUE_INDEX"])
    if quantification is None or not quantification > 0:
        raise DataError(f"{metadata}: no QUANTIFICATION_VALUE (L1C) or BOA_QUANTIFICATION_VALUE (L2A)")
    return {band: (1.0 / quantification, offsets.get(i, 0.0) / quantification)
            for i, band in enumerate(SENTINEL2_BANDS)}, nodata


def is_safe(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in _SAFE_METADATA)


def read_safe(folder: str | Path) -> BandScene:
    """A Sentinel-2 L1C or L2A SAFE folder as one scene: the JPEG 2000 bands of its granule
    (``GRANULE/*/IMG_DATA[/R10m|R20m|R60m]``), each at its finest resolution, scaled to reflectance by its
    metadata, L2A's scene classification (SCL) as a categorical band; nodata 0 unless the metadata says."""
    folder = Path(folder)
    metadata = next((folder / name for name in _SAFE_METADATA if (folder / name).is_file()), None)
    if metadata is None:
        raise DataError(f"{folder}: no {' or '.join(_SAFE_METADATA)}: not a Sentinel-2 SAFE folder")
    radiometry, nodata = _safe_radiometry(metadata)
    granules = sorted(p for p in (folder / "GRANULE").glob("*") if (p / "IMG_DATA").is_dir())
    if len(granules) != 1:
        raise DataError(f"{folder}: expected one GRANULE/*/IMG_DATA folder, found {len(granules)}")
    files = [p for p in sorted((granules[0] / "IMG_DATA").rglob("*")) if p.suffix.lower() in _BAND_EXTENSIONS]
    bands = _band_files(files, str(folder))
    if not bands:
        raise DataError(f"{granules[0] / 'IMG_DATA'}: no band files (*_B02.jp2, *_B02_10m.jp2, ...)")
    nodata = 0.0 if nodata is None else nodata
    scene_bands = tuple(_band_file(n, p, *radiometry.get(n, (None, None)), nodata=nodata) for n, p in bands.items())
    return BandScene(folder.name, str(folder), scene_bands)


# --- what an input is ---------------------------------------------------------------------------------------
def _is_json(source: str | Path) -> bool:
    return source_name(source).lower().endswith(".json")


def find_band_scenes(source: str | Path) -> list[BandScene] | None:
    """The band scenes an input is, or None when it is none (an image file, a folder of scenes): a STAC Item or
    ItemCollection (a ``.json`` file or URL; a scene per Item), a folder of STAC Items, a SAFE folder, or a folder
    of band files."""
    from lemevit.io.stac import read_stac, stac_files

    if is_remote(source) or Path(source).is_file():
        return read_stac(source) if _is_json(source) else None
    folder = Path(source)
    if not folder.is_dir():
        return None
    if is_safe(folder):
        return [read_safe(folder)]
    items = stac_files(folder)
    if items:
        return [scene for item in items for scene in read_stac(item)]
    if _is_band_folder(folder):
        return [read_band_folder(folder)]
    return None


def list_scenes(inputs: Sequence[str | Path], argument: str = "inputs") -> list[Path | str | BandScene]:
    """The scenes of ``inputs`` as ``predict`` takes them: band scenes (:func:`find_band_scenes`) as such, the
    rest listed as image files (:func:`~lemevit.io.paths.list_images`)."""
    scenes: list[Path | str | BandScene] = []
    for item in inputs:
        found = find_band_scenes(item)
        scenes += found if found is not None else list_images([item], argument)
    seen, unique = set(), []
    for scene in scenes:
        key = scene if isinstance(scene, (str, BandScene)) else scene.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(scene)
    return unique

