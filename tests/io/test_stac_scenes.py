"""STAC Items as scenes: per-band COGs served over HTTP from 127.0.0.1 (one band at half resolution), picked by
asset key, name or common name, scaled by raster:bands, read by byte ranges onto the finest band's grid; an
ItemCollection or a folder of Items as a scene per Item; ``predict`` on an Item's URL."""
from __future__ import annotations

import json

import numpy as np
import pytest
from band_models import segmentation_band_run  # noqa: F401 - a run trained on named bands
from test_remote_scenes import server  # noqa: F401 - the range-serving HTTP server on 127.0.0.1

from lemevit.cli import main
from lemevit.errors import DataError
from lemevit.io.bands import BandStack, find_band_scenes, list_scenes
from lemevit.io.stac import read_stac

rasterio = pytest.importorskip("rasterio")
from rasterio.shutil import copy as copy_raster  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

WIDTH, HEIGHT = 64, 48
LEFT, TOP, CRS = 500000.0, 4000000.0, "EPSG:32631"
COMMON = {"B02": "blue", "B03": "green", "B04": "red", "B08": "nir"}


def write_cog(folder, name: str, values: np.ndarray, side: float, nodata=None) -> None:
    """A COG of ``values`` (bands first) at ``side`` metres, written through a tiled GeoTIFF beside it."""
    tmp = folder / f".{name}.tif"
    with rasterio.open(tmp, "w", driver="GTiff", width=values.shape[2], height=values.shape[1], count=len(values),
                       dtype=values.dtype.name, crs=CRS, transform=from_origin(LEFT, TOP, side, side),
                       nodata=nodata, tiled=True, blockxsize=16, blockysize=16) as ds:
        ds.write(values)
    copy_raster(tmp, folder / f"{name}.tif", driver="COG", compress="deflate")
    tmp.unlink()


def item(item_id: str, hrefs: dict[str, str]) -> dict:
    """A STAC 1.0 Item: per-band assets with eo:bands and raster:bands (L2A scale and offset, nodata 0), an RGB
    visual asset and a thumbnail."""
    assets = {
        key: {"href": href, "type": "image/tiff; application=geotiff; profile=cloud-optimized", "roles": ["data"],
              "eo:bands": [{"name": key, "common_name": COMMON[key]}],
              "raster:bands": [{"nodata": 0, "data_type": "uint16", "scale": 0.0001, "offset": -0.1}]}
        for key, href in hrefs.items() if key in COMMON}
    assets["visual"] = {"href": hrefs["visual"], "type": "image/tiff; application=geotiff", "roles": ["visual"],
                        "eo:bands": [{"name": "red", "common_name": "red"}, {"name": "green", "common_name": "green"},
                                     {"name": "blue", "common_name": "blue"}]}
    assets["thumbnail"] = {"href": "thumb.png", "type": "image/png", "roles": ["thumbnail"]}
    return {"type": "Feature", "stac_version": "1.0.0", "id": item_id, "bbox": [0, 0, 1, 1],
            "geometry": {"type": "Point", "coordinates": [0, 0]}, "properties": {"datetime": "2024-01-01T00:00:00Z"},
            "links": [], "assets": assets,
            "stac_extensions": ["https://stac-extensions.github.io/eo/v1.1.0/schema.json",
                                "https://stac-extensions.github.io/raster/v1.1.0/schema.json"]}


def served_item(folder, item_id: str = "S2B_33UUP_20240101_0_L2A", seed: int = 0) -> dict[str, np.ndarray]:
    """Band COGs and the Item describing them in ``folder``: B02-B04 at 10 m, B08 at 20 m (a plane in its own
    pixel centres), a nodata corner in B02; relative hrefs."""
    rng = np.random.default_rng(seed)
    truth = {name: rng.integers(1100, 9000, (HEIGHT, WIDTH)).astype(np.uint16) for name in ("B02", "B03", "B04")}
    truth["B02"][:3, :3] = 0
    rows, cols = np.mgrid[0:HEIGHT // 2, 0:WIDTH // 2]
    truth["B08"] = (2000 + 200 * cols + 20 * rows).astype(np.uint16)
    for name, values in truth.items():
        write_cog(folder, f"{item_id}_{name}", values[None], 20 if name == "B08" else 10, nodata=0)
    write_cog(folder, f"{item_id}_TCI", np.stack([(truth[n] // 40).astype(np.uint8) for n in ("B04", "B03", "B02")]),
              10)
    hrefs = {name: f"{item_id}_{name}.tif" for name in truth} | {"visual": f"{item_id}_TCI.tif"}
    (folder / f"{item_id}.json").write_text(json.dumps(item(item_id, hrefs)))
    return truth


def test_an_item_over_http_is_read_by_ranges_onto_the_finest_grid_as_reflectance(tmp_path, server):  # noqa: F811
    url, log = server
    truth = served_item(tmp_path / "served")
    (scene,) = find_band_scenes(f"{url}/S2B_33UUP_20240101_0_L2A.json")
    assert scene.name == "S2B_33UUP_20240101_0_L2A.json"
    assert [b.name for b in scene.bands] == ["B02", "B03", "B04", "B08", "red", "green", "blue"]
    assert [b.name for b in scene.visual] == ["red", "green", "blue"]
    # By common name the per-band assets, not the visual asset's bands; the order is the one asked for.
    chosen = scene.select(["nir", "red", "green", "B02"], reflectance=True)
    assert [(b.name, b.href.rsplit("_", 1)[-1]) for b in chosen.bands] == [
        ("B08", "B08.tif"), ("B04", "B04.tif"), ("B03", "B03.tif"), ("B02", "B02.tif")]
    assert all(b.href.startswith(url) for b in chosen.bands)
    log.clear()
    stack = BandStack(chosen)
    try:
        assert (stack.height, stack.width) == (HEIGHT, WIDTH) and stack.crs.to_string() == CRS
        assert stack.transform == from_origin(LEFT, TOP, 10, 10)
        values, valid = stack.read(0, HEIGHT), stack.read_valid(0, HEIGHT)
    finally:
        stack.close()
    np.testing.assert_allclose(values[1], truth["B04"] * 1e-4 - 0.1, atol=1e-6)
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    plane = 2000 + 200 * ((cols + 0.5) / 2 - 0.5) + 20 * ((rows + 0.5) / 2 - 0.5)
    np.testing.assert_allclose(values[0, 1:-1, 1:-1], plane[1:-1, 1:-1] * 1e-4 - 0.1, atol=2e-4)
    # The nodata of raster:bands: B02's corner has no data, the rest has.
    assert not valid[:3, :3].any() and valid[3:, 3:].all()
    # Every band was read by byte ranges, none asked for a sidecar file.
    assert log and all(ranged for _, ranged, _ in log) and all(path.endswith(".tif") for path, _, _ in log)


def test_without_bands_an_item_gives_its_visual_asset(tmp_path, server):  # noqa: F811
    url, _ = server
    truth = served_item(tmp_path / "served")
    (scene,) = read_stac(f"{url}/S2B_33UUP_20240101_0_L2A.json")
    stack = BandStack(scene.select())
    try:
        assert stack.dtype == "uint8"
        np.testing.assert_array_equal(stack.read(0, HEIGHT)[2], truth["B02"] // 40)
    finally:
        stack.close()
    with pytest.raises(DataError, match=r"lacks the band\(s\) B05"):
        scene.select(["B05"])


def test_an_item_collection_and_a_folder_of_items_are_a_scene_per_item(tmp_path):
    folder = tmp_path / "items"
    folder.mkdir()
    served_item(folder, "first", seed=1)
    served_item(folder, "second", seed=2)
    (folder / "collection.json").write_text(json.dumps({"type": "Collection", "id": "not a scene"}))
    scenes = list_scenes([folder])
    assert [s.name for s in scenes] == ["first.json", "second.json"]
    features = [json.loads((folder / f"{name}.json").read_text()) for name in ("first", "second")]
    (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    (tmp_path / "copy").mkdir()
    scenes = read_stac(tmp_path / "items.json")
    assert [s.name for s in scenes] == ["first.json", "second.json"]
    # Relative hrefs are resolved against the collection's own location.
    assert scenes[1].find("B02").href == str(tmp_path / "second_B02.tif")
    with pytest.raises(DataError, match="not a STAC Item or ItemCollection"):
        read_stac(folder / "collection.json")


@pytest.mark.slow
def test_predict_an_item_url_into_a_map_on_its_finest_grid(segmentation_band_run, tmp_path,  # noqa: F811
                                                           server):  # noqa: F811
    url, _ = server
    served_item(tmp_path / "served")
    out = tmp_path / "maps"
    assert main(["predict", "--checkpoint", str(segmentation_band_run / "best.ckpt"),
                 f"{url}/S2B_33UUP_20240101_0_L2A.json", "--output", str(out), "--num-workers", "0",
                 "--no-preview"]) == 0
    with rasterio.open(out / "S2B_33UUP_20240101_0_L2A.tif") as ds:
        assert ds.crs.to_string() == CRS and ds.transform == from_origin(LEFT, TOP, 10, 10)
        assert (ds.height, ds.width) == (HEIGHT, WIDTH)
        values = ds.read(1)
    # The corner without data in B02 is the map's nodata; the rest is classes.
    assert (values[:3, :3] == ds.nodata).all() and set(np.unique(values[3:, 3:])) <= {0, 1}
