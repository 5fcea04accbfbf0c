"""Vector outputs placed on the ground: the regions of class and change maps as polygons, and detected boxes.

Two formats, told by the file's suffix: GeoJSON as RFC 7946 has it (WGS84 longitude/latitude, exterior rings
counterclockwise, no ``crs`` member: what web maps and most tools read without asking), and GeoPackage in the
scene's own CRS (no reprojection, any number of features; written through pyogrio, of the ``geo`` extra).
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, mapping, shape
from shapely.geometry.polygon import orient

from lemevit.errors import ConfigError, DataError
from lemevit.io.atomic import atomic_path
from lemevit.io.images import TIFF_EXTENSIONS, optional_rasterio
from lemevit.io.raster import RasterScene, gdal_cache, read_by_gdal

__all__ = ["VECTOR_SUFFIXES", "check_vector_output", "check_vector_scenes", "require_pyogrio",
           "write_detection_vectors", "write_map_vectors"]

#: What vectors can be written as.
VECTOR_SUFFIXES = (".geojson", ".gpkg")
_HINT = 'pip install "lemevit[geo]"'
# GDAL's block cache while a map is polygonised: a row of its 256-pixel tiles for maps up to 65536 pixels wide.
_GDAL_CACHE_MB = 16
# The bytes a strip of the polygons' mean probabilities takes: its probabilities, and per pixel a polygon index
# (int32) and the float64 weights and copies of np.bincount (20 bytes).
_STRIP_BYTES = 32 * 2 ** 20
_BYTES_PER_PIXEL = 20


def require_pyogrio(argument: str):
    """The pyogrio module, which writes GeoPackages; a :class:`ConfigError` naming ``argument`` without it."""
    try:
        import pyogrio
    except ImportError as e:
        raise ConfigError(argument, f"writing a GeoPackage needs pyogrio: {_HINT}") from e
    return pyogrio


def check_vector_output(output: Path, argument: str) -> None:
    """Refuse before predicting a vector file that could not be written: an unknown suffix, or the ``geo``
    extra missing (rasterio for every vector, pyogrio for a GeoPackage)."""
    if output.suffix.lower() not in VECTOR_SUFFIXES:
        raise ConfigError(argument, f"vectors are written as {' or '.join(VECTOR_SUFFIXES)}, got {output}")
    if optional_rasterio() is None:
        raise ConfigError(argument, f"placing vectors on the ground needs rasterio: {_HINT}")
    if output.suffix.lower() == ".gpkg":
        require_pyogrio(argument)


def check_vector_scenes(scenes: Sequence[Path | str], argument: str) -> None:
    """Refuse before predicting vectors of scenes that are not placed on the ground: one GDAL does not read (a PNG,
    a JPEG), or one without a CRS and a geotransform. Only the headers are read."""
    for scene in scenes:
        if not read_by_gdal(scene):
            raise ConfigError(argument, f"{scene} is not georeferenced (a {Path(str(scene)).suffix or 'plain'} "
                                        "image): vectors are placed on the ground from a GeoTIFF's CRS; leave "
                                        f"`{argument}` out for it")
        raster = RasterScene(scene)
        try:
            if raster.crs is None or raster.transform.is_identity:
                raise ConfigError(argument, f"{scene} is not georeferenced (no CRS or geotransform): its vectors "
                                            f"cannot be placed on the ground; leave `{argument}` out for it")
        finally:
            raster.close()


def write_map_vectors(map_path: Path, output: Path, names: Mapping[int, str], min_area: float = 0.0,
                      simplify: float = 0.0, probabilities: Path | None = None) -> int:
    """Polygonise the class or change map ``map_path`` (a georeferenced GeoTIFF) into ``output`` (.geojson or
    .gpkg); returns the number of polygons written.

    A polygon per 4-connected region of one value among ``names`` (``{value: name}``; the regions of other
    values, no data among them, are left out), with the properties ``class`` (its name), ``value``, ``area_m2``
    and, when ``probabilities`` (the map's probabilities GeoTIFF) is given, ``mean_probability``: the mean over
    its pixels of the largest band, which is its class's probability (the map took the most probable class; a
    one-band file holds the probability of the one value polygonised). Polygons under ``min_area`` m² are
    dropped; the others are simplified to ``simplify`` map units (shapely's ``simplify``, keeping each polygon
    valid: neighbours are simplified each on its own, so their shared edges may part or overlap by up to it).

    Areas are computed on the pixel-exact polygons: planar in a projected CRS (its unit converted to metres),
    and for a geographic CRS those of a Lambert azimuthal equal-area projection centred on the scene, which are
    the areas on the WGS84 ellipsoid. GDAL polygonises the map from the file, row by row through its block cache:
    memory is the polygons (as GDAL builds them, then as kept), not the map.
    """
    import rasterio
    from rasterio.features import shapes

    with gdal_cache(_GDAL_CACHE_MB), rasterio.open(map_path) as src:
        crs, transform = src.crs, src.transform
        if crs is None:
            raise DataError(f"{map_path} has no CRS (its scene is not georeferenced): its polygons cannot be placed "
                            "on the ground")
        left, bottom, right, top = src.bounds
        found = [(shape(geometry), int(value)) for geometry, value in shapes(rasterio.band(src, 1), transform=transform)
                 if int(value) in names]
    polygons = np.array([polygon for polygon, _ in found], dtype=object)
    values = np.array([value for _, value in found], dtype=np.int64)
    areas = _areas_m2(polygons, crs, ((left + right) / 2, (bottom + top) / 2))
    kept = areas >= min_area
    polygons, values, areas = polygons[kept], values[kept], areas[kept]
    properties = {"class": np.array([names[v] for v in values.tolist()], dtype=str), "value": values,
                  "area_m2": areas}
    if probabilities is not None:
        properties["mean_probability"] = _mean_probabilities(polygons, probabilities)
    if simplify:
        polygons = shapely.simplify(polygons, simplify, preserve_topology=True)
    _write_features(output, polygons, properties, crs)
    return len(polygons)


def write_detection_vectors(path: Path, quads: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                            class_names: Sequence[str], output: Path) -> bool:
    """Write the boxes ``quads`` (``(n, 4, 2)`` pixel corners) of the scene ``path`` as polygons with their
    ``class`` and ``score`` into ``output`` (.geojson or .gpkg), when ``path`` is a GeoTIFF with a CRS and a
    transform; returns whether it wrote ``output``."""
    rasterio = optional_rasterio()
    if rasterio is None or path.suffix.lower() not in TIFF_EXTENSIONS:
        return False
    with rasterio.open(path) as src:
        if src.crs is None or src.transform.is_identity:
            return False
        transform, crs = src.transform, src.crs
    a, b, c, d, e, f = transform[:6]  # pixel (column, row) -> scene coordinates
    x, y = quads[..., 0].astype(np.float64), quads[..., 1].astype(np.float64)
    rings = np.stack([a * x + b * y + c, d * x + e * y + f], axis=-1)
    polygons = shapely.polygons(rings.reshape(len(quads), 4, 2))
    properties = {"class": np.array([class_names[label] for label in labels.tolist()], dtype=str),
                  "score": np.asarray(scores, np.float64)}
    _write_features(output, polygons, properties, crs)
    return True


def _areas_m2(polygons: np.ndarray, crs, centre: tuple[float, float]) -> np.ndarray:
    if not crs.is_geographic:
        return shapely.area(polygons) * crs.linear_units_factor[1] ** 2
    from rasterio.crs import CRS

    longitude, latitude = centre
    equal_area = CRS.from_proj4(f"+proj=laea +lat_0={latitude} +lon_0={longitude} +datum=WGS84 +units=m +no_defs")
    return shapely.area(_reprojected(polygons, crs, equal_area))


def _mean_probabilities(polygons: np.ndarray, probabilities: Path) -> np.ndarray:
    """The mean over each polygon's pixels of the largest band of ``probabilities``, 0..1: strips of rows are
    read in turn and the polygons they cross burnt into them by index (the polygons follow pixel edges, so each
    pixel's centre lies in exactly the polygon it came from)."""
    import rasterio
    from rasterio.features import rasterize
    from rasterio.windows import Window, bounds, transform

    sums, counts = np.zeros(len(polygons) + 1), np.zeros(len(polygons) + 1)
    tree = shapely.STRtree(polygons)
    with gdal_cache(_GDAL_CACHE_MB), rasterio.open(probabilities) as src:
        itemsize = np.dtype(src.dtypes[0]).itemsize
        rows = max(1, _STRIP_BYTES // (src.width * (src.count * itemsize + _BYTES_PER_PIXEL)))
        for top in range(0, src.height, rows):
            window = Window(0, top, src.width, min(rows, src.height - top))
            crossed = tree.query(shapely.box(*bounds(window, src.transform)))
            if not len(crossed):
                continue
            index = rasterize(zip(polygons[crossed], (crossed + 1).tolist(), strict=True),
                              out_shape=(window.height, window.width), transform=transform(window, src.transform),
                              fill=0, dtype="int32").ravel()
            largest = src.read(window=window).max(axis=0).ravel()
            sums += np.bincount(index, weights=largest, minlength=len(sums))
            counts += np.bincount(index, minlength=len(sums))
        scale = 255.0 if src.dtypes[0] == "uint8" else 1.0
    return sums[1:] / np.maximum(counts[1:], 1) / scale


def _reprojected(geometries: np.ndarray, source, target) -> np.ndarray:
    """``geometries`` with their coordinates reprojected from ``source`` to ``target``, all in one call to PROJ
    (GDAL's geometry-by-geometry reprojection takes a hundred times as long)."""
    from rasterio.warp import transform

    def move(xy: np.ndarray) -> np.ndarray:
        return np.column_stack(transform(source, target, xy[:, 0], xy[:, 1]))

    return shapely.transform(geometries, move)


def _longitude_latitude(geometries: np.ndarray, crs) -> np.ndarray:
    """``geometries`` in WGS84 longitude/latitude as RFC 7946 has them: exterior rings counterclockwise, holes
    clockwise, and a polygon crossing the antimeridian (spanning more than 180 degrees once reprojected) cut in
    two there by GDAL."""
    from rasterio.warp import transform_geom

    located = _reprojected(geometries, crs, "EPSG:4326")
    bounds = shapely.bounds(located).reshape(-1, 4)
    crossing = np.flatnonzero(bounds[:, 2] - bounds[:, 0] > 180)
    if len(crossing):
        cut = transform_geom(crs, "EPSG:4326", [mapping(g) for g in geometries[crossing]], antimeridian_cutting=True)
        located[crossing] = [shape(g) for g in cut]
    return np.array([MultiPolygon([orient(part, 1.0) for part in g.geoms]) if isinstance(g, MultiPolygon)
                     else orient(g, 1.0) for g in located], dtype=object).reshape(len(located))


def _write_features(output: Path, geometries: np.ndarray, properties: dict[str, np.ndarray], crs) -> None:
    """``geometries`` (shapely, in ``crs``) with ``properties`` (an array per name, of the field's type, a value per
    geometry) into ``output``: GeoJSON reprojected to WGS84, written feature by feature, or a GeoPackage in
    ``crs``."""
    names = list(properties)
    if output.suffix.lower() == ".gpkg":
        pyogrio = require_pyogrio("vector")
        with atomic_path(output) as tmp:
            pyogrio.raw.write(tmp, shapely.to_wkb(geometries),
                              [properties[name] for name in names], names, layer=output.stem,
                              driver="GPKG", geometry_type="Polygon", crs=crs.to_wkt())
        return
    located = shapely.to_geojson(_longitude_latitude(geometries, crs))
    columns = {name: values.tolist() for name, values in properties.items()}  # Python numbers and strings
    with atomic_path(output) as tmp, open(tmp, "w") as file:
        file.write('{"type": "FeatureCollection", "features": [')
        for i, geometry in enumerate(located.tolist()):
            values = json.dumps({name: columns[name][i] for name in names})
            file.write(f'{"," if i else ""}\n{{"type": "Feature", "geometry": {geometry}, "properties": {values}}}')
        file.write("\n]}\n")
