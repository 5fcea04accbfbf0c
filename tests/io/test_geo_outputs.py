"""GIS outputs: maps and probabilities as Cloud-Optimized GeoTIFFs, class regions and boxes as GeoJSON (RFC 7946)
and GeoPackage polygons with their areas on the ground."""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from lemevit.inference.scene import ProbabilityOutput, predict_scene
from lemevit.inference.sliding_window import softmax_predictor

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import Affine  # noqa: E402

from lemevit.io import raster  # noqa: E402
from lemevit.io.vector import write_detection_vectors, write_map_vectors  # noqa: E402

PALETTE = ((255, 255, 255), (0, 0, 255), (0, 255, 0), (255, 0, 0))
NAMES = {0: "road", 1: "building", 2: "tree", 3: "car"}
# A UTM 33N scene whose bottom-left corner is on the equator at the zone's central meridian: (15° E, 0°).
UTM = "EPSG:32633"
UTM_TRANSFORM = Affine(0.5, 0, 500000.0, 0, -0.5, 30.0)  # 60 rows from 30 m north


def write_geotiff(path, bands: np.ndarray, crs=UTM, transform=UTM_TRANSFORM, **profile) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=len(bands),
                       dtype=bands.dtype.name, crs=crs, transform=transform, **profile) as ds:
        ds.write(bands)


def predict(tmp_path, height=600, width=340, dtype="uint8", **kwargs):
    """A pointwise 4-class model over a random 4-band scene: the map and the probabilities it gives."""
    rng = np.random.default_rng(0)
    write_geotiff(tmp_path / "scene.tif", rng.integers(0, 4000, (4, height, width)).astype(np.uint16))
    torch.manual_seed(0)
    model = torch.nn.Conv2d(4, 4, 1).eval()
    probabilities = ProbabilityOutput(tmp_path / "out" / "map_probabilities.tif", list(NAMES.values()), dtype)
    predict_scene(softmax_predictor(model), [tmp_path / "scene.tif"], tmp_path / "out" / "map.tif", [2000.0] * 4,
                  [1000.0] * 4, PALETTE, window=128, stride=96, progress=False, value_names=NAMES, nodata=255,
                  probabilities=probabilities, **kwargs)
    return tmp_path / "out" / "map.tif", probabilities.path


@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_the_map_and_its_probabilities_are_cloud_optimized_geotiffs(tmp_path, dtype):
    map_path, probabilities = predict(tmp_path, dtype=dtype)
    assert sorted(p.name for p in map_path.parent.iterdir()) == ["map.tif", "map_probabilities.tif"]  # no scratch
    with rasterio.open(map_path) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.overviews(1) == [2, 4]  # 600 rows: 300, then 150, within one 256-pixel tile
        assert ds.block_shapes == [(256, 256)]
        assert ds.crs.to_string() == UTM and ds.transform == UTM_TRANSFORM
        assert ds.descriptions == ("0=road, 1=building, 2=tree, 3=car",)
        assert ds.nodata == 255
        colormap = ds.colormap(1)
        assert [colormap[i] for i in range(4)] == [(*c, 255) for c in PALETTE]
        classes = ds.read(1)
        # Overviews take the most frequent class of each 2x2 block: class values, never a blend of them.
        assert set(np.unique(ds.read(1, out_shape=(150, 85)))) <= set(NAMES)
    with rasterio.open(probabilities) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.overviews(1) == [2, 4]
        assert ds.crs.to_string() == UTM and ds.transform == UTM_TRANSFORM
        assert ds.descriptions == tuple(NAMES.values()) and ds.count == 4
        stored = ds.read()
        if dtype == "float16":
            assert ds.dtypes[0] == "float32" and ds.tags(1, ns="IMAGE_STRUCTURE")["NBITS"] == "16"
            np.testing.assert_allclose(stored.sum(axis=0), 1.0, atol=4e-3)
            np.testing.assert_array_equal(stored.astype(np.float16).astype(np.float32), stored)
        else:
            assert ds.dtypes[0] == "uint8" and abs(int(stored.sum(axis=0, dtype=np.int64).mean()) - 255) <= 2
    assert set(np.unique(classes)) <= set(NAMES)
    # The most probable class is the map's; where it is not the first, two classes tie once stored.
    at_class = np.take_along_axis(stored, classes[None].astype(np.int64), axis=0)[0]
    np.testing.assert_array_equal(at_class, stored.max(axis=0))
    assert (stored.argmax(axis=0) == classes).mean() > 0.99


def test_an_interrupted_prediction_leaves_nothing_behind(tmp_path):
    calls = []

    def failing(windows):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("killed")
        return torch.full((windows.shape[0], 4, *windows.shape[2:]), 0.25)

    write_geotiff(tmp_path / "scene.tif", np.zeros((3, 600, 300), np.uint8))
    with pytest.raises(RuntimeError, match="killed"):
        predict_scene(failing, [tmp_path / "scene.tif"], tmp_path / "map.tif", [0] * 3, [1] * 3, PALETTE,
                      window=128, stride=96, batch_size=2, progress=False,
                      probabilities=ProbabilityOutput(tmp_path / "map_probabilities.tif", list(NAMES.values())))
    assert [p.name for p in tmp_path.iterdir()] == ["scene.tif"]


def test_without_the_cog_driver_a_tiled_geotiff_with_overviews_is_written_with_a_warning(tmp_path, monkeypatch):
    monkeypatch.setattr(raster, "_cog_driver", lambda: False)
    with pytest.warns(UserWarning, match="no COG driver"):
        map_path, _ = predict(tmp_path)
    with rasterio.open(map_path) as ds:
        assert ds.overviews(1) == [2, 4] and ds.block_shapes == [(256, 256)] and ds.colormap(1)[1] == (0, 0, 255, 255)


def known_map(path, crs=UTM, transform=UTM_TRANSFORM) -> np.ndarray:
    """A 60 x 80 map: road on the left, a building with a courtyard of tree, a car (4 pixels), and no data."""
    classes = np.zeros((60, 80), np.uint8)
    classes[10:40, 30:70] = 1
    classes[20:30, 40:50] = 2  # a hole in the building
    classes[50:52, 5:7] = 3
    classes[55:, 70:] = 255
    write_geotiff(path, classes[None], crs=crs, transform=transform, nodata=255)
    return classes


def features(path) -> list[dict]:
    collection = json.loads(path.read_text())
    assert set(collection) == {"type", "features"} and collection["type"] == "FeatureCollection"  # no "crs" member
    return collection["features"]


def areas_by_class(found: list[dict]) -> dict[str, float]:
    areas: dict[str, float] = {}
    for feature in found:
        areas[feature["properties"]["class"]] = areas.get(feature["properties"]["class"], 0.0) + \
            feature["properties"]["area_m2"]
    return areas


def test_class_regions_become_geojson_polygons_in_longitude_latitude_with_their_areas(tmp_path):
    from shapely.geometry import shape

    classes = known_map(tmp_path / "map.tif")
    assert write_map_vectors(tmp_path / "map.tif", tmp_path / "map.geojson", NAMES) == 4
    found = features(tmp_path / "map.geojson")
    assert {f["properties"]["class"] for f in found} == set(NAMES.values())  # the no-data corner is left out
    assert {f["properties"]["value"] for f in found} == set(NAMES)
    for value, name in NAMES.items():
        # UTM areas within 1 % of the pixels' (0.25 m² each); polygons follow pixel edges, so here exactly.
        assert areas_by_class(found)[name] == pytest.approx((classes == value).sum() * 0.25, rel=0.01)
    building = next(f for f in found if f["properties"]["class"] == "building")
    assert len(building["geometry"]["coordinates"]) == 2  # the courtyard is a hole
    # RFC 7946: exterior rings counterclockwise, holes clockwise.
    polygon = shape(building["geometry"])
    assert polygon.exterior.is_ccw and not polygon.interiors[0].is_ccw
    road = next(f for f in found if f["properties"]["class"] == "road")
    corners = np.array(road["geometry"]["coordinates"][0])
    # The map's bottom-left corner: the equator on the central meridian of zone 33, (15° E, 0°).
    assert np.abs(corners - [15.0, 0.0]).sum(axis=1).min() < 1e-9
    # Its top-left corner, 30 m of grid north: 30 / 0.9996 m on the ground (UTM's scale on the central meridian),
    # at 110574.27 m per degree of latitude at the equator.
    lat = 30 / 0.9996 / 110574.27
    assert np.abs(corners - [15.0, lat]).sum(axis=1).min() < 1e-8


def test_geopackage_keeps_the_scene_crs_and_small_polygons_are_dropped_and_simplified(tmp_path):
    pyogrio = pytest.importorskip("pyogrio")
    classes = known_map(tmp_path / "map.tif")
    assert write_map_vectors(tmp_path / "map.tif", tmp_path / "map.gpkg", NAMES, min_area=2.0, simplify=0.6) == 3
    info = pyogrio.read_info(tmp_path / "map.gpkg")
    assert info["crs"] == UTM and info["geometry_type"] == "Polygon"
    _, _, geometries, fields = pyogrio.raw.read(tmp_path / "map.gpkg")
    by_name = dict(zip(info["fields"], fields, strict=True))
    assert sorted(by_name["class"]) == ["building", "road", "tree"]  # the 1 m² car is under --min-area
    areas = dict(zip(by_name["class"], by_name["area_m2"], strict=True))
    assert areas["building"] == pytest.approx(((classes == 1).sum()) * 0.25)  # areas of the unsimplified polygons
    import shapely

    road = shapely.from_wkb(geometries[list(by_name["class"]).index("road")])
    assert road.is_valid and road.bounds == (500000.0, 0.0, 500040.0, 30.0)  # in metres, UTM


def test_mean_probability_of_each_polygon_comes_from_the_probabilities_file(tmp_path):
    classes = known_map(tmp_path / "map.tif")
    probabilities = np.zeros((4, 60, 80), np.uint8)
    for value in NAMES:
        probabilities[value][classes == value] = 51 * (value + 1)  # 0.2, 0.4, 0.6, 0.8 of each class
    probabilities[1, 10:11, 30:70] = 255  # the building's top row: 1.0
    write_geotiff(tmp_path / "probabilities.tif", probabilities)
    write_map_vectors(tmp_path / "map.tif", tmp_path / "map.geojson", NAMES,
                      probabilities=tmp_path / "probabilities.tif")
    means = {f["properties"]["class"]: f["properties"]["mean_probability"] for f in features(tmp_path / "map.geojson")}
    building_pixels = (classes == 1).sum()
    assert means == pytest.approx({"road": 0.2, "tree": 0.6, "car": 0.8,
                                   "building": (0.4 * (building_pixels - 40) + 40) / building_pixels})


def test_areas_in_a_geographic_crs_are_those_on_the_ellipsoid(tmp_path):
    # 0.001° pixels at 60° N: compare with the area of the map's cells between their parallels on WGS84.
    transform = Affine(0.001, 0, 10.0, 0, -0.001, 60.06)
    classes = known_map(tmp_path / "map.tif", crs="EPSG:4326", transform=transform)
    write_map_vectors(tmp_path / "map.tif", tmp_path / "map.geojson", NAMES)
    a, f = 6378137.0, 1 / 298.257223563
    e = math.sqrt(f * (2 - f))

    def q(latitude):  # the authalic function: the area from the equator is pi b^2 q(latitude) per 2 pi of longitude
        s = math.sin(math.radians(latitude))
        return s / (1 - e * e * s * s) + math.log((1 + e * s) / (1 - e * s)) / (2 * e)

    b2 = (a * (1 - f)) ** 2
    rows = 60.06 - 0.001 * np.arange(61)
    row_areas = np.array([b2 / 2 * math.radians(0.001) * (q(rows[i]) - q(rows[i + 1])) for i in range(60)])
    areas = areas_by_class(features(tmp_path / "map.geojson"))
    for value, name in NAMES.items():
        assert areas[name] == pytest.approx(((classes == value).sum(axis=1) * row_areas).sum(), rel=1e-4)


def test_a_polygon_across_the_antimeridian_is_cut_there(tmp_path):
    # UTM zone 60 (central meridian 177° E) at 65° N: 3° east of it, 180°, is about 141 km east.
    known_map(tmp_path / "map.tif", crs="EPSG:32660", transform=Affine(500, 0, 630000.0, 0, -500, 7210000.0))
    write_map_vectors(tmp_path / "map.tif", tmp_path / "map.geojson", NAMES)
    for feature in features(tmp_path / "map.geojson"):
        longitudes = [point[0] for ring in _rings(feature["geometry"]) for point in ring]
        assert min(longitudes) >= -180 and max(longitudes) <= 180
        if feature["properties"]["class"] == "road":
            assert feature["geometry"]["type"] == "MultiPolygon"
            assert min(longitudes) == -180.0 and max(longitudes) == 180.0


def _rings(geometry: dict) -> list:
    polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
    return [ring for polygon in polygons for ring in polygon]


def test_detections_as_geojson_in_longitude_latitude_and_as_geopackage_in_the_scene_crs(tmp_path):
    write_geotiff(tmp_path / "scene.tif", np.zeros((3, 60, 80), np.uint8))
    quads = np.array([[[0, 60], [20, 60], [20, 50], [0, 50]]], np.float32)  # pixels: the bottom-left corner
    labels, scores = np.array([1]), np.array([0.9], np.float32)
    assert write_detection_vectors(tmp_path / "scene.tif", quads, labels, scores, ["plane", "ship"],
                                   tmp_path / "scene.geojson")
    (feature,) = features(tmp_path / "scene.geojson")
    assert feature["properties"] == {"class": "ship", "score": pytest.approx(0.9)}
    ring = np.array(feature["geometry"]["coordinates"][0])
    assert np.abs(ring - [15.0, 0.0]).sum(axis=1).min() < 1e-9 and np.abs(ring).max() < 16
    pyogrio = pytest.importorskip("pyogrio")
    assert write_detection_vectors(tmp_path / "scene.tif", quads, labels, scores, ["plane", "ship"],
                                   tmp_path / "scene.gpkg")
    assert pyogrio.read_info(tmp_path / "scene.gpkg")["crs"] == UTM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_geotiff(tmp_path / "plain.tif", np.zeros((3, 60, 80), np.uint8), crs=None, transform=Affine.identity())
    assert not write_detection_vectors(tmp_path / "plain.tif", quads, labels, scores, ["plane", "ship"],
                                       tmp_path / "plain.geojson")


def test_a_map_without_a_crs_is_refused_with_its_name(tmp_path):
    from lemevit.errors import DataError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_geotiff(tmp_path / "plain.tif", np.zeros((1, 8, 8), np.uint8), crs=None, transform=Affine.identity())
    with pytest.raises(DataError, match=r"plain\.tif has no CRS"):
        write_map_vectors(tmp_path / "plain.tif", tmp_path / "plain.geojson", NAMES)
    assert not (tmp_path / "plain.geojson").exists()
