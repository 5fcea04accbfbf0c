"""STAC Items and ItemCollections as scenes: each Item's image assets become the bands of a
:class:`~lemevit.io.bands.BandScene`, named by their key, their ``eo:bands`` / ``bands`` name and common name,
with the ``raster:bands`` scale, offset and nodata (STAC 1.0 extensions, or the ``bands`` of STAC 1.1). An Item
is read from a local file or an ``http(s)`` URL; its assets' relative hrefs are resolved against it, so that GDAL
reads a remote band by byte ranges.

The JSON is read as it is, not through pystac: a scene needs a handful of fields, and reading them keeps the
dependency out of ``predict``.
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from lemevit.errors import DataError
from lemevit.io.bands import BandFile, BandScene, band_aliases
from lemevit.io.paths import is_remote

__all__ = ["read_stac", "stac_files"]

_IMAGE_TYPES = ("image/tiff", "image/jp2", "image/vnd.stac.geotiff")
_IMAGE_SUFFIXES = (".tif", ".tiff", ".jp2")
_NOT_BANDS = {"thumbnail", "overview", "metadata"}
_CATEGORICAL_ROLES = {"mask", "classification", "cloud", "cloud-shadow", "snow-ice", "water-mask", "land-water"}
# Seconds to wait for a remote Item.
_TIMEOUT = 60


def _url(source: str) -> str:
    """The HTTP URL of a remote source GDAL would read (``/vsicurl/https://...`` → ``https://...``)."""
    return source[len("/vsicurl/"):] if source.startswith("/vsicurl/") else source


def _load(source: str | Path) -> dict:
    try:
        if is_remote(source):
            with urllib.request.urlopen(_url(str(source)), timeout=_TIMEOUT) as response:  # noqa: S310 - the user's URL
                text = response.read().decode("utf-8")
        else:
            text = Path(source).read_text(encoding="utf-8")
        document = json.loads(text)
    except (OSError, urllib.error.URLError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read the STAC document {source}: {e}") from e
    if not isinstance(document, dict) or document.get("type") not in ("Feature", "FeatureCollection"):
        raise DataError(f"{source}: not a STAC Item or ItemCollection (its \"type\" is neither Feature nor "
                        "FeatureCollection)")
    return document


def _href(href: str, base: str | Path) -> str:
    """An asset's href as GDAL opens it: absolute as it is (``s3://`` through ``/vsis3/``), relative against the
    Item's own location."""
    if href.startswith("s3://"):
        return "/vsis3/" + href[len("s3://"):]
    if "://" in href or href.startswith("/"):
        return href
    if is_remote(base):
        return urljoin(_url(str(base)), href)
    return str(Path(base).parent / href)


def _is_band_asset(asset: dict) -> bool:
    roles = set(asset.get("roles") or [])
    media = (asset.get("type") or "").split(";")[0].strip().lower()
    path = urlsplit(asset.get("href", "")).path.lower()
    return bool(asset.get("href")) and not roles & _NOT_BANDS and (
        media in _IMAGE_TYPES or (not media and path.endswith(_IMAGE_SUFFIXES)))


def _item_scene(item: dict, base: str | Path, source: str) -> BandScene:
    bands, visual = [], ()
    assets = item.get("assets") or {}
    for key, asset in assets.items():
        if not isinstance(asset, dict) or not _is_band_asset(asset):
            continue
        described = asset.get("eo:bands") or asset.get("bands") or [{}]
        raster = asset.get("raster:bands") or [{}] * len(described)
        roles = set(asset.get("roles") or [])
        categorical = bool(roles & _CATEGORICAL_ROLES) or any(
            k in asset for k in ("classification:classes", "classification:bitfields"))
        single = len(described) == 1
        own_bands = []
        for index, (band, extra) in enumerate(zip(described, raster, strict=False), 1):
            own = band.get("name")
            name = key if single else (own or f"{key}:{index}")
            common = band.get("common_name") or band.get("eo:common_name")
            scale = extra.get("scale", band.get("raster:scale"))
            offset = extra.get("offset", band.get("raster:offset"))
            nodata = extra.get("nodata", band.get("nodata", asset.get("nodata")))
            own_bands.append(BandFile(name, _href(asset["href"], base), index,
                                      band_aliases(key if single else None, own, common),
                                      None if categorical else scale, None if categorical else offset,
                                      None if nodata in (None, "nan") else float(nodata), categorical, single))
        bands += own_bands
        if not single and (key == "visual" or "visual" in roles) and not visual:
            visual = tuple(own_bands)
    if not bands:
        raise DataError(f"{source}: no image assets (GeoTIFF or JPEG 2000) to read as bands")
    return BandScene(f"{item.get('id') or Path(source).stem}.json", source, tuple(bands), visual)


def read_stac(source: str | Path) -> list[BandScene]:
    """The scenes of a STAC Item (one) or ItemCollection (one per Item), from a local file or a URL."""
    document = _load(source)
    if document["type"] == "Feature":
        return [_item_scene(document, source, str(source))]
    features = document.get("features") or []
    if not features:
        raise DataError(f"{source}: an ItemCollection without Items")
    return [_item_scene(item, source, f"{source}#{item.get('id', i)}") for i, item in enumerate(features)]


def stac_files(folder: Path) -> list[Path]:
    """The STAC Items and ItemCollections among a folder's ``.json`` files (others, such as a Collection, are
    not scenes)."""
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            kind = json.loads(path.read_text(encoding="utf-8")).get("type")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            continue
        if kind in ("Feature", "FeatureCollection"):
            found.append(path)
    return found
