"""Reading one image file of any format, band count and data type."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lemevit.io import images as images_module
from lemevit.io.images import ImageReadError, read_image


def _rasterio():
    return pytest.importorskip("rasterio")


def _write_geotiff(path: Path, bands_first: np.ndarray) -> None:
    rasterio = _rasterio()
    from rasterio.transform import Affine

    count, height, width = bands_first.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count,
                       dtype=bands_first.dtype.name, crs="EPSG:32633",
                       transform=Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)) as ds:
        ds.write(bands_first)


def _rgb(rng: np.random.Generator, h: int = 12, w: int = 10) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)



def test_read_image_pil_formats(tmp_path):
    rng = np.random.default_rng(0)
    rgb = _rgb(rng)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and np.array_equal(out, rgb)

    smooth = np.dstack([*np.meshgrid(np.arange(10) * 20, np.arange(12) * 15), np.full((12, 10), 90)]).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "a.jpg", quality=95)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - smooth).mean() < 5  # lossy, but the same picture

    Image.fromarray(rgb).save(tmp_path / "a.bmp")
    assert np.array_equal(read_image(tmp_path / "a.bmp"), rgb)

    gray16 = rng.integers(0, 65536, (9, 7), dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    assert out.dtype == np.uint16 and out.shape == (9, 7, 1) and np.array_equal(out[..., 0], gray16)

    Image.fromarray(rgb[..., 0]).save(tmp_path / "g8.png")
    assert read_image(tmp_path / "g8.png").shape == (12, 10, 1)

    rgba = np.dstack([rgb, np.full((12, 10), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)  # alpha dropped

    Image.fromarray(rgb).quantize(8).save(tmp_path / "palette.png")
    out = read_image(tmp_path / "palette.png")
    assert out.shape == (12, 10, 3) and out.dtype == np.uint8


def test_read_image_16bit_colour_png(tmp_path, monkeypatch):
    rasterio = _rasterio()
    data = np.random.default_rng(1).integers(0, 65536, (3, 8, 6), dtype=np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(tmp_path / "rgb16.png", "w", driver="PNG", width=6, height=8, count=3,
                           dtype="uint16") as ds:
            ds.write(data)
    out = read_image(tmp_path / "rgb16.png")
    assert out.dtype == np.uint16 and np.array_equal(out, data.transpose(1, 2, 0))
    monkeypatch.setattr(images_module, "optional_rasterio", lambda: None)
    with pytest.raises(ImageReadError, match=r"rgb16\.png: 16-bit RGB PNG.*lemevit\[geo\]"):
        read_image(tmp_path / "rgb16.png")


def test_read_image_multiband_geotiff(tmp_path):
    data = np.random.default_rng(2).integers(0, 65536, (5, 9, 11), dtype=np.uint16)
    _write_geotiff(tmp_path / "s2.tif", data)
    out = read_image(tmp_path / "s2.tif")
    assert out.shape == (9, 11, 5) and out.dtype == np.uint16
    assert np.array_equal(out, data.transpose(1, 2, 0))

    floats = np.random.default_rng(3).normal(size=(2, 4, 4)).astype(np.float32)
    _write_geotiff(tmp_path / "f.tiff", floats)
    assert np.array_equal(read_image(tmp_path / "f.tiff"), floats.transpose(1, 2, 0))


def test_read_tiff_without_rasterio(tmp_path, monkeypatch):
    has_rasterio = images_module.optional_rasterio() is not None
    if has_rasterio:
        _write_geotiff(tmp_path / "s2.tif", np.zeros((5, 4, 4), np.uint16))
    monkeypatch.setattr(images_module, "optional_rasterio", lambda: None)
    gray16 = np.random.default_rng(0).integers(0, 65536, (6, 5), dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g.tif")
    out = read_image(tmp_path / "g.tif")
    assert out.dtype == np.uint16 and np.array_equal(out[..., 0], gray16)
    rgba = np.random.default_rng(0).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgbn.tif")
    assert np.array_equal(read_image(tmp_path / "rgbn.tif"), rgba)  # TIFF keeps its 4th band
    if has_rasterio:
        with pytest.raises(ImageReadError, match=r"s2\.tif.*pip install \"lemevit\[geo\]\""):
            read_image(tmp_path / "s2.tif")


def test_read_image_errors_name_the_file(tmp_path):
    Image.fromarray(_rgb(np.random.default_rng(0), 64, 64)).save(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.jpg: .*truncated"):
        read_image(tmp_path / "cut.jpg")
    (tmp_path / "junk.png").write_bytes(b"definitely not a png")
    with pytest.raises(ImageReadError, match=r"junk\.png"):
        read_image(tmp_path / "junk.png")
    with pytest.raises(ImageReadError, match=r"gone\.png: no such file"):
        read_image(tmp_path / "gone.png")
    with pytest.raises(ImageReadError, match=r"x\.gif: unsupported extension"):
        read_image(tmp_path / "x.gif")
    if images_module.optional_rasterio() is not None:
        _write_geotiff(tmp_path / "big.tif", np.ones((3, 64, 64), np.uint16))
        data = (tmp_path / "big.tif").read_bytes()
        (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageReadError, match=r"cut\.tif"):
            read_image(tmp_path / "cut.tif")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_read_image_turns_a_picture_as_its_exif_orientation_says(tmp_path, suffix):
    # Issue #29, 2: a drone's picture stored sideways with orientation 6 (shown turned 90° clockwise) is read as
    # shown, so that a mask drawn over the shown picture fits it; the header's size agrees.
    from lemevit.io.regions import raster_size

    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:5, :10] = 255  # a bright top-left corner, which orientation 6 shows at the top right
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / f"drone{suffix}"
    Image.fromarray(stored).save(path, exif=exif, **({"quality": 100} if suffix == ".jpg" else {}))
    shown = read_image(path)
    assert shown.shape == (40, 20, 3) and raster_size(path) == (40, 20)
    expected = np.rot90(stored, k=-1)
    assert np.abs(shown.astype(int) - expected).max() <= (0 if suffix == ".png" else 40)
