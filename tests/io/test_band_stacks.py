"""Scenes made of band files of mixed resolution (a folder of *_B02.tif, a Sentinel-2 SAFE) read as one raster on
the finest band's grid: a pattern lands on the right pixels after resampling, bands come in the order asked,
digital numbers become reflectance by the product's metadata, and what a model cannot take is refused; then
``predict`` end to end on a band folder with a model that recorded its bands."""
from __future__ import annotations

import numpy as np
import pytest

# Runs trained on named bands.
from band_models import change_band_run, segmentation_band_run  # noqa: F401

from lemevit.cli import main
from lemevit.errors import ConfigError, DataError
from lemevit.io.bands import BandStack, band_name, find_band_scenes, list_scenes, read_band_folder, read_safe

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import from_origin  # noqa: E402

# A scene of 48 x 36 px at 10 m: 24 x 18 at 20 m, 8 x 6 at 60 m, over the same extent.
WIDTH, HEIGHT = 48, 36
LEFT, TOP = 600000.0, 5000000.0
CRS = "EPSG:32633"


def write_band(path, values: np.ndarray, side: float, nodata=None, driver: str = "GTiff", description=None) -> None:
    options = {"QUALITY": "100", "REVERSIBLE": "YES"} if driver == "JP2OpenJPEG" else {}
    with rasterio.open(path, "w", driver=driver, width=values.shape[1], height=values.shape[0], count=1,
                       dtype=values.dtype.name, crs=CRS, transform=from_origin(LEFT, TOP, side, side), nodata=nodata,
                       **options) as ds:
        ds.write(values, 1)
        if description:
            ds.set_band_description(1, description)


def grid(side: float) -> tuple[int, int]:
    return round(HEIGHT * 10 / side), round(WIDTH * 10 / side)


def ramp(side: float) -> np.ndarray:
    """A plane in the band's own pixel centres: 400 per column, 40 per row, which bilinear resampling keeps."""
    rows, cols = np.mgrid[0:grid(side)[0], 0:grid(side)[1]]
    return (1000 + 400 * cols + 40 * rows).astype(np.uint16)


def blocks(side: float, value: int, at: tuple[int, int]) -> np.ndarray:
    classes = np.full(grid(side), 4, np.uint8)
    classes[at] = value
    return classes


def band_folder(folder, names=("B02", "B03", "B04", "B08", "B8A", "B11", "B01", "SCL")):
    """Band files of a tile: 10 m random values, 20 m ramps, a 60 m constant, a 20 m classification."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sides = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B8A": 20, "B11": 20, "B01": 60, "SCL": 20}
    truth = {}
    for name in names:
        side = sides[name]
        if name == "SCL":
            values = blocks(side, 8, (2, 3))
        elif side == 20:
            values = ramp(side) + (0 if name == "B8A" else 7)
        elif side == 60:
            values = np.full(grid(side), 1500, np.uint16)
        else:
            values = rng.integers(1000, 5000, grid(side)).astype(np.uint16)
        truth[name] = values
        write_band(folder / f"T33UUP_20240101T100000_{name}_{side}m.tif", values, side)
    return truth


def test_band_names_are_read_from_file_names():
    assert [band_name(n) for n in ("T33UUB_20240101_B02_10m", "B8A", "x_b4", "S2A_SCL_20m", "T33UUB_TCI")] == [
        "B02", "B8A", "B04", "SCL", None]


def test_mixed_resolutions_are_aligned_on_the_finest_grid(tmp_path):
    truth = band_folder(tmp_path / "scene")
    (scene,) = find_band_scenes(tmp_path / "scene")
    assert [b.name for b in scene.bands] == ["B01", "B02", "B03", "B04", "B08", "B8A", "B11", "SCL"]
    stack = BandStack(scene.select(["B8A", "B02", "SCL", "B01"]))
    try:
        assert (stack.height, stack.width, stack.bands) == (HEIGHT, WIDTH, 4)
        assert stack.crs.to_string() == CRS and stack.transform == from_origin(LEFT, TOP, 10, 10)
        assert stack.dtype == "uint16" and not stack.masked
        whole = stack.read(0, HEIGHT)
        # The 20 m plane, sampled at the 10 m pixel centres: a half-pixel shift would move every value by 100.
        rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
        expected = 1000 + 400 * ((cols + 0.5) / 2 - 0.5) + 40 * ((rows + 0.5) / 2 - 0.5)
        np.testing.assert_allclose(whole[0, 1:-1, 1:-1], expected[1:-1, 1:-1], atol=1)
        np.testing.assert_array_equal(whole[1], truth["B02"])
        # The classification by nearest neighbour: its 20 m pixel (2, 3) is exactly the 10 m pixels (4..5, 6..7).
        changed = np.argwhere(whole[2] == 8)
        assert changed.min(axis=0).tolist() == [4, 6] and changed.max(axis=0).tolist() == [5, 7]
        assert len(changed) == 4 and set(np.unique(whole[2])) == {4, 8}
        np.testing.assert_array_equal(whole[3], 1500)
        # A window reads what the whole does.
        np.testing.assert_array_equal(stack.read(10, 25, 5, 30), whole[:, 10:25, 5:30])
        assert stack.read_decimated(4).shape == (4, 9, 12)
    finally:
        stack.close()


def test_a_resolution_asked_for_makes_the_grid(tmp_path):
    truth = band_folder(tmp_path / "scene", names=("B02", "B8A"))
    stack = BandStack(read_band_folder(tmp_path / "scene").select(["B8A", "B02"], resolution=20))
    try:
        assert (stack.height, stack.width) == (HEIGHT // 2, WIDTH // 2)
        assert stack.transform == from_origin(LEFT, TOP, 20, 20)
        np.testing.assert_array_equal(stack.read(0, HEIGHT // 2)[0], truth["B8A"])
    finally:
        stack.close()


def test_bands_are_picked_by_any_of_their_names_and_refused_when_missing(tmp_path):
    band_folder(tmp_path / "scene", names=("B02", "B03", "B04", "B08"))
    scene = read_band_folder(tmp_path / "scene")
    assert [b.name for b in scene.select(["nir", "red", "B3", "b02"]).bands] == ["B08", "B04", "B03", "B02"]
    assert [b.name for b in scene.select(trained=["B04", "B03", "B02"]).bands] == ["B04", "B03", "B02"]
    with pytest.raises(DataError, match=r"lacks the band\(s\) B05, B11 the model was trained on \(it has B02, B03"):
        scene.select(trained=["B04", "B05", "B11"])
    with pytest.raises(ConfigError, match="model records no band names") as error:
        scene.select()
    assert error.value.argument == "bands"


def test_a_scene_without_scale_needs_one_for_a_reflectance_model(tmp_path):
    truth = band_folder(tmp_path / "scene", names=("B02", "B8A"))
    scene = read_band_folder(tmp_path / "scene")
    with pytest.raises(ConfigError, match="trained on reflectance, and nothing says the scale of B02, B8A") as error:
        scene.select(["B02", "B8A"], reflectance=True)
    assert error.value.argument == "reflectance_scale"
    with pytest.raises(ConfigError, match="trained on values as stored"):
        scene.select(["B02"], scale=1e-4)
    stack = BandStack(scene.select(["B02", "B8A"], reflectance=True, scale=1e-4, offset=-0.1))
    try:
        values = stack.read(0, HEIGHT)
        assert values.dtype == np.float32
        np.testing.assert_allclose(values[0], truth["B02"] * 1e-4 - 0.1, atol=1e-6)
    finally:
        stack.close()


MTD = """<?xml version="1.0" encoding="UTF-8"?>
<n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-2A.xsd">
<n1:General_Info><Product_Image_Characteristics>
<Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX>
</Special_Values>
<Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX>
</Special_Values>
<QUANTIFICATION_VALUES_LIST><BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE>
<AOT_QUANTIFICATION_VALUE unit="none">1000.0</AOT_QUANTIFICATION_VALUE></QUANTIFICATION_VALUES_LIST>
<BOA_ADD_OFFSET_VALUES_LIST>{offsets}</BOA_ADD_OFFSET_VALUES_LIST>
</Product_Image_Characteristics></n1:General_Info></n1:Level-2A_User_Product>
"""


def safe_folder(root, nodata_corner: bool = True, date: str = "20240101"):
    """A SAFE-like L2A product: MTD_MSIL2A.xml (quantification 10000, offset -1000) and the JPEG 2000 bands of one
    granule in R10m, R20m and R60m, B02 at 10 m and 20 m both."""
    safe = root / f"S2B_MSIL2A_{date}T100000_N0510_R122_T33UUP_{date}T120000.SAFE"
    offsets = "".join(f'<BOA_ADD_OFFSET band_id="{i}">-1000</BOA_ADD_OFFSET>' for i in range(13))
    safe.mkdir(parents=True)
    (safe / "MTD_MSIL2A.xml").write_text(MTD.format(offsets=offsets))
    img = safe / "GRANULE" / "L2A_T33UUP_A000000_20240101T100000" / "IMG_DATA"
    rng = np.random.default_rng(int(date))
    truth = {}
    for side, names in ((10, ("B02", "B03", "B04", "B08")), (20, ("B02", "B8A", "SCL")), (60, ("B01",))):
        (img / f"R{side}m").mkdir(parents=True)
        for name in names:
            if name == "SCL":
                values = blocks(side, 9, (0, 0))
            else:
                values = rng.integers(1100, 9000, grid(side)).astype(np.uint16)
                if nodata_corner:
                    values[:2, :2] = 0
            truth.setdefault(name, values)
            write_band(img / f"R{side}m" / f"T33UUP_20240101T100000_{name}_{side}m.jp2", values, side,
                       driver="JP2OpenJPEG")
    return safe, truth


def test_a_safe_product_is_read_as_reflectance_by_its_metadata(tmp_path):
    safe, truth = safe_folder(tmp_path)
    (scene,) = find_band_scenes(safe)
    assert scene.name == safe.name
    assert [b.name for b in scene.bands] == ["B01", "B02", "B03", "B04", "B08", "B8A", "SCL"]
    assert scene.find("B02").href.endswith("R10m/T33UUP_20240101T100000_B02_10m.jp2")
    assert (scene.find("B02").scale, scene.find("B02").offset) == (1e-4, -0.1)
    stack = BandStack(scene.select(["B04", "B02", "SCL"], reflectance=True))
    try:
        values = stack.read(0, HEIGHT)
        assert values.dtype == np.float32 and stack.transform == from_origin(LEFT, TOP, 10, 10)
        np.testing.assert_allclose(values[1, 2:, 2:], (truth["B02"][2:, 2:] - 1000) / 10000, atol=1e-6)
        np.testing.assert_allclose(values[0, 2:, 2:], (truth["B04"][2:, 2:] - 1000) / 10000, atol=1e-6)
        assert values[2, 0, 0] == 9 and values[2, 1, 1] == 9 and values[2, 2, 2] == 4  # classes, never scaled
        # NODATA 0 of the metadata: the corner without data in the 10 m bands.
        valid = stack.read_valid(0, HEIGHT)
        assert stack.masked and not valid[:2, :2].any() and valid[2:, 2:].all()
    finally:
        stack.close()
    assert read_safe(safe).source == str(safe)


def test_inputs_list_band_scenes_beside_image_files(tmp_path):
    band_folder(tmp_path / "in" / "tile", names=("B02", "B03"))
    write_band(tmp_path / "in" / "tile" / "T33UUP_20240101T100000_TCI_10m.tif", np.zeros((4, 4), np.uint8), 10)
    write_band(tmp_path / "in" / "plain.tif", np.zeros((4, 4), np.uint8), 10)
    scenes = list_scenes([tmp_path / "in" / "tile", tmp_path / "in" / "plain.tif"])
    assert scenes[0].name == "tile" and scenes[1] == tmp_path / "in" / "plain.tif"


@pytest.mark.slow
def test_predict_reads_a_band_folder_in_the_bands_the_model_recorded(segmentation_band_run,  # noqa: F811
                                                                     tmp_path, capsys):
    run = segmentation_band_run
    import torch

    hparams = torch.load(run / "best.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
    assert list(hparams["band_names"]) == ["B02", "B03", "B04", "B08"] and hparams["reflectance"] is False

    band_folder(tmp_path / "scene")
    out = tmp_path / "maps"
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(tmp_path / "scene"), "--output", str(out),
                 "--num-workers", "0", "--no-preview"]) == 0
    with rasterio.open(out / "scene.tif") as ds:
        assert (ds.height, ds.width) == (HEIGHT, WIDTH)
        assert ds.crs.to_string() == CRS and ds.transform == from_origin(LEFT, TOP, 10, 10)
        assert set(np.unique(ds.read(1))) <= {0, 1}

    # A scene without the recorded B08, or bands the model does not take: one line each, exit status 2.
    band_folder(tmp_path / "rgb", names=("B02", "B03", "B04"))
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(tmp_path / "rgb"), "--output",
                 str(tmp_path / "rgb.tif"), "--num-workers", "0"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "lacks the band(s) B08 the model was trained on (it has B02, B03, B04)" in error
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(tmp_path / "scene"), "--bands", "B02",
                 "B03", "B04", "--output", str(tmp_path / "three.tif"), "--num-workers", "0"]) == 2
    assert "3 band(s), the model expects 4" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(tmp_path / "scene"), "--reflectance-scale",
                 "0.0001", "--output", str(tmp_path / "scaled.tif"), "--num-workers", "0"]) == 2
    assert "--reflectance-scale: the model was trained on values as stored" in capsys.readouterr().err


def as_reflectance_model(checkpoint, target):
    """The change run as if trained on reflectance: float32 inputs, its statistics on the reflectance scale."""
    import torch

    content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    hp = content["hyper_parameters"]
    hp.update(reflectance=True, input_dtype="float32", mean=[(m - 1000) / 1e4 for m in hp["mean"]],
              std=[s / 1e4 for s in hp["std"]])
    torch.save(content, target)
    return target


@pytest.mark.slow
def test_predict_a_pair_of_sentinel2_products_into_a_georeferenced_change_map(change_band_run,  # noqa: F811
                                                                              tmp_path, capsys):
    first, _ = safe_folder(tmp_path / "a", date="20240101")
    second, _ = safe_folder(tmp_path / "b", date="20240301")
    checkpoint = change_band_run / "best.ckpt"
    out = tmp_path / "change.tif"
    assert main(["predict", "--checkpoint", str(checkpoint), "--pair", str(first), str(second), "--output", str(out),
                 "--num-workers", "0", "--no-preview"]) == 0
    with rasterio.open(out) as ds:
        assert ds.driver == "GTiff" and ds.crs.to_string() == CRS and ds.transform == from_origin(LEFT, TOP, 10, 10)
        assert (ds.height, ds.width) == (HEIGHT, WIDTH) and ds.nodata == 128
        values = ds.read(1)
        assert (values[:2, :2] == 128).all() and set(np.unique(values[2:, 2:])) <= {0, 255}

    # A model trained on reflectance reads the products' DN as reflectance; band files that say no scale need one.
    reflectance = as_reflectance_model(checkpoint, tmp_path / "reflectance.ckpt")
    assert main(["predict", "--checkpoint", str(reflectance), "--pair", str(first), str(second), "--output",
                 str(tmp_path / "r.tif"), "--num-workers", "0", "--no-preview"]) == 0
    band_folder(tmp_path / "plain_a", names=("B02", "B03", "B04", "B08"))
    band_folder(tmp_path / "plain_b", names=("B02", "B03", "B04", "B08"))
    pair = ["--pair", str(tmp_path / "plain_a"), str(tmp_path / "plain_b"), "--num-workers", "0", "--no-preview"]
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(reflectance), *pair, "--output", str(tmp_path / "p.tif")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "--reflectance-scale:" in error and "nothing says the scale of B02" in error
    assert main(["predict", "--checkpoint", str(reflectance), *pair, "--output", str(tmp_path / "p.tif"),
                 "--reflectance-scale", "0.0001", "--reflectance-offset", "-0.1"]) == 0
    with rasterio.open(tmp_path / "p.tif") as ds:
        assert ds.transform == from_origin(LEFT, TOP, 10, 10) and (ds.height, ds.width) == (HEIGHT, WIDTH)
