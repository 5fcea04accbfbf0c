"""Whole-scene prediction: georeference kept, outputs of the scene's size, checks, and bounded memory."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from lemevit.errors import ConfigError, DataError
from lemevit.inference.scene import predict_scene
from lemevit.inference.sliding_window import softmax_predictor

PALETTE = ((255, 255, 255), (0, 0, 255), (0, 255, 0), (255, 0, 0))
# The 6000 x 6000 scene's probabilities of its 4 classes alone would take 6000 * 6000 * 4 * 4 B = 549 MiB,
# its bands as float32 412 MiB. Prediction holds a 512-row accumulator (47 MiB), the rows being read (9 MiB),
# a batch of 8 windows with the model's output and softmax (~120 MiB) and GDAL's cache (16 MiB): measured
# 213-264 MiB over 7 runs.
MEMORY_BOUND_MIB = 320
HEIGHT_SLACK_MIB = 64


class Constant(torch.nn.Module):
    """Logits that do not depend on the input: any seam in the blending would show."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[None, :, None, None].expand(x.shape[0], -1, *x.shape[2:])


def pointwise(in_chans: int = 3, classes: int = 4) -> torch.nn.Module:
    """A 1x1 convolution: each pixel's logits depend on that pixel only, so tiling cannot change them."""
    torch.manual_seed(0)
    return torch.nn.Conv2d(in_chans, classes, 1).eval()


def write_geotiff(path, bands: np.ndarray, crs: str = "EPSG:32633"):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    transform = Affine(0.05, 0, 368000.0, 0, -0.05, 5810000.0)
    with rasterio.open(path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=len(bands),
                       dtype=bands.dtype.name, crs=crs, transform=transform) as ds:
        ds.write(bands)
    return transform


def test_a_geotiff_scene_gives_a_geotiff_class_map_with_its_georeference(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    rng = np.random.default_rng(0)
    bands = rng.integers(0, 4000, (4, 300, 170)).astype(np.uint16)  # 16-bit, 4 bands
    transform = write_geotiff(tmp_path / "scene.tif", bands)
    model = pointwise(in_chans=4)
    mean, std = [2000.0] * 4, [1000.0] * 4
    result = predict_scene(softmax_predictor(model), [tmp_path / "scene.tif"], tmp_path / "out" / "map.tif", mean,
                           std, PALETTE, window=64, stride=48, progress=False)
    with rasterio.open(tmp_path / "out" / "map.tif") as ds:
        assert ds.crs.to_string() == "EPSG:32633" and ds.transform == transform
        assert (ds.height, ds.width, ds.count, ds.dtypes[0]) == (300, 170, 1, "uint8")
        classes = ds.read(1)
        assert ds.colormap(1)[1] == (0, 0, 255, 255)
    x = (torch.from_numpy(bands.astype(np.float32)) - 2000) / 1000
    with torch.inference_mode():
        expected = model(x[None])[0].argmax(dim=0).numpy()
    np.testing.assert_array_equal(classes, expected)
    assert result.value_pixels[:4].tolist() == np.bincount(expected.ravel(), minlength=4).tolist()
    assert result.preview_step == 1
    np.testing.assert_array_equal(result.small_map, classes)
    np.testing.assert_array_equal(result.small_scenes[0], bands.transpose(1, 2, 0))


def test_a_png_scene_smaller_than_the_window_gives_a_png_class_map_of_its_size(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (21, 35, 3)).astype(np.uint8)).save(tmp_path / "s.png")
    out = tmp_path / "s_classes.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NotGeoreferencedWarning for plain images
        predict_scene(softmax_predictor(Constant([0.0, 0.0, 3.0, 0.0])), [tmp_path / "s.png"], out, [0] * 3, [1] * 3,
                      PALETTE, window=64, stride=48, progress=False)
    classes = np.asarray(Image.open(out))
    assert classes.shape == (21, 35) and (classes == 2).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.png", "s_classes.png"]  # no preview, no temporary file
    with pytest.raises(ConfigError, match="output: must end in .tif, .tiff, .png"):
        predict_scene(softmax_predictor(Constant([0.0])), [tmp_path / "s.png"], tmp_path / "x.jpg", [0] * 3, [1] * 3,
                      PALETTE)
    with pytest.raises(DataError, match="3 band.*expects 4"):
        predict_scene(softmax_predictor(pointwise(4)), [tmp_path / "s.png"], out, [0] * 4, [1] * 4, PALETTE,
                      progress=False)
    with pytest.raises(DataError, match=r"s\.png holds uint8 values, the model was trained on uint16"):
        predict_scene(softmax_predictor(pointwise()), [tmp_path / "s.png"], out, [0] * 3, [1] * 3, PALETTE,
                      progress=False, expected_dtype="uint16")


_MEMORY_PROBE = textwrap.dedent("""
    import json, re, sys
    from pathlib import Path
    import torch
    from lemevit.inference.scene import predict_scene
    from lemevit.inference.sliding_window import softmax_predictor

    def kib(key):
        return int(re.search(key + r":\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))

    class Pointwise(torch.nn.Module):
        # A 1x1 convolution through einsum: oneDNN's Conv2d would pad 3 channels to 16 in its blocked layout
        # and take 256 MiB of workspace for a batch of 8 windows, memory of the model, not of the window.
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return torch.einsum("bchw,kc->bkhw", x, self.conv.weight[:, :, 0, 0]).add_(self.conv.bias[:, None, None])

    small, out, *scenes = sys.argv[1:]
    model = softmax_predictor(Pointwise().eval())
    palette = [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
    kwargs = dict(mean=[128.0] * 3, std=[64.0] * 3, palette=palette, window=512, stride=384, progress=False)
    predict_scene(model, [small], out + "/small.tif", **kwargs)  # one-off allocations: libraries, GDAL, oneDNN
    measured = {}
    for scene in scenes:
        Path("/proc/self/clear_refs").write_text("5")
        base = kib("VmRSS")
        result = predict_scene(model, [scene], out + "/" + Path(scene).stem + "_classes.tif", **kwargs)
        measured[Path(scene).stem] = {"peak_mib": (kib("VmHWM") - base) / 1024, "windows": result.windows}
    print(json.dumps(measured))
""")


def _patterned_geotiff(path, width: int, height: int):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine
    from rasterio.windows import Window

    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(0.05, 0, 368000.0, 0, -0.05, 5810000.0), tiled=True,
                       compress="deflate") as ds:
        columns = np.arange(width)
        for top in range(0, height, 512):
            rows = np.arange(top, min(top + 512, height))[:, None]
            pattern = ((rows * 7 + columns * 3) % 256).astype(np.uint8)
            ds.write(np.stack([pattern, pattern[:, ::-1], pattern // 2 + 64]),
                     window=Window(0, top, width, len(rows)))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc/self/status")
def test_predicting_a_6000_pixel_geotiff_keeps_memory_bounded(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.windows import Window

    size = 6000
    _patterned_geotiff(tmp_path / "square.tif", size, size)
    _patterned_geotiff(tmp_path / "short.tif", size, 1536)  # the same width, a quarter of the height
    write_geotiff(tmp_path / "small.tif", np.zeros((3, 600, 600), np.uint8))
    done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(tmp_path / "small.tif"), str(tmp_path),
                           str(tmp_path / "short.tif"), str(tmp_path / "square.tif")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    square, short = measured["square"], measured["short"]
    print(f"peak RSS growth predicting {size}x{size}: {square['peak_mib']:.0f} MiB, {size}x1536: "
          f"{short['peak_mib']:.0f} MiB (bound {MEMORY_BOUND_MIB} MiB)")
    assert square["windows"] == 16 * 16 and short["windows"] == 4 * 16
    assert square["peak_mib"] < MEMORY_BOUND_MIB
    # Memory follows the width, not the height: the 4464 extra rows as uint8 alone would be 77 MiB more.
    assert square["peak_mib"] < short["peak_mib"] + HEIGHT_SLACK_MIB
    with rasterio.open(tmp_path / "square_classes.tif") as ds:
        assert (ds.width, ds.height) == (size, size) and ds.crs.to_string() == "EPSG:32633"
        corner = ds.read(1, window=Window(size - 64, size - 64, 64, 64))
    with rasterio.open(tmp_path / "square.tif") as ds:
        pixels = ds.read(window=Window(size - 64, size - 64, 64, 64)).astype(np.float32)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 1).eval()
    with torch.inference_mode():
        expected = conv(((torch.from_numpy(pixels) - 128) / 64)[None])[0].argmax(dim=0).numpy()
    np.testing.assert_array_equal(corner, expected)
