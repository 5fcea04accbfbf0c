"""Whole-scene prediction of scenes with no data (a nodata value, an alpha band): those pixels are the map's nodata,
the windows holding nothing else are not run, and the rest is predicted as in the scene without no data."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lemevit.errors import ConfigError, DataError
from lemevit.inference.scene import ProbabilityOutput, predict_scene
from lemevit.inference.sliding_window import softmax_predictor, window_starts

rasterio = pytest.importorskip("rasterio")
from rasterio.enums import ColorInterp  # noqa: E402
from rasterio.transform import Affine  # noqa: E402

PALETTE = ((255, 255, 255), (0, 0, 255), (0, 255, 0), (255, 0, 0))
HEIGHT, WIDTH, WINDOW, STRIDE = 200, 230, 32, 24
# The pixels with data: a block off the centre, the rest a border of no data.
VALID = (slice(70, 130), slice(90, 150))


def pointwise(in_chans: int = 3, classes: int = 4) -> torch.nn.Module:
    """A 1x1 convolution: each pixel's logits depend on that pixel only, so the pixels of no data beside a pixel
    cannot change its prediction."""
    torch.manual_seed(0)
    return torch.nn.Conv2d(in_chans, classes, 1).eval()


class Counting:
    """A predictor that counts the windows it is given."""

    def __init__(self, model: torch.nn.Module):
        self.predict, self.windows = softmax_predictor(model), 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.windows += len(batch)
        return self.predict(batch)


def write(path, bands: np.ndarray, nodata=None, alpha: bool = False) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=len(bands),
                       dtype=bands.dtype.name, crs="EPSG:32633", transform=Affine(0.5, 0, 368000, 0, -0.5, 5810000),
                       nodata=nodata, **({} if alpha else {"photometric": "RGB"})) as ds:
        ds.write(bands)
        if alpha:
            ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]


def valid_mask(height: int = HEIGHT, width: int = WIDTH, valid=VALID) -> np.ndarray:
    mask = np.zeros((height, width), bool)
    mask[valid] = True
    return mask


def windows_touching(mask: np.ndarray) -> int:
    return sum(mask[y:y + WINDOW, x:x + WINDOW].any() for y in window_starts(mask.shape[0], WINDOW, STRIDE)
               for x in window_starts(mask.shape[1], WINDOW, STRIDE))


def scene(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, (3, HEIGHT, WIDTH)).astype(np.uint8)


def predict(paths, out, model, bands: int = 3, nodata: int | None = 255, probabilities=None, to_map=None):
    counting = Counting(model)
    predict_scene(counting, paths, out, [128.0] * bands, [64.0] * bands, PALETTE, window=WINDOW, stride=STRIDE,
                  batch_size=4, progress=False, nodata=nodata, probabilities=probabilities, to_map=to_map)
    return counting.windows


def read(path) -> tuple[np.ndarray, object]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.nodata


@pytest.mark.parametrize("marked_by", ["nodata value", "alpha band"])
def test_no_data_pixels_are_the_maps_nodata_and_their_windows_are_not_run(tmp_path, marked_by):
    bands, mask = scene(), valid_mask()
    write(tmp_path / "whole.tif", bands)
    if marked_by == "nodata value":
        write(tmp_path / "bordered.tif", np.where(mask, bands, 0).astype(np.uint8), nodata=0)
    else:  # an RGBA scene for an RGB model: the alpha band is the mask, the colours under it are kept
        write(tmp_path / "bordered.tif", np.concatenate([bands, mask[None].astype(np.uint8) * 255]), alpha=True)
    model = pointwise()
    float16 = ProbabilityOutput(tmp_path / "p.tif", ["a", "b", "c", "d"], "float16")
    run_whole = predict([tmp_path / "whole.tif"], tmp_path / "whole_map.tif", model,
                        probabilities=ProbabilityOutput(tmp_path / "whole_p.tif", ["a", "b", "c", "d"], "float16"))
    run_bordered = predict([tmp_path / "bordered.tif"], tmp_path / "map.tif", model, probabilities=float16)

    assert run_whole == len(window_starts(HEIGHT, WINDOW, STRIDE)) * len(window_starts(WIDTH, WINDOW, STRIDE))
    assert run_bordered == windows_touching(mask) < run_whole / 4
    (whole,), _ = read(tmp_path / "whole_map.tif")
    (classes,), nodata = read(tmp_path / "map.tif")
    assert nodata == 255
    np.testing.assert_array_equal(classes == 255, ~mask)
    # The same windows cover each pixel with data, and the model sees each pixel alone: the same classes.
    np.testing.assert_array_equal(classes[mask], whole[mask])
    probs, probs_nodata = read(tmp_path / "p.tif")
    whole_probs, _ = read(tmp_path / "whole_p.tif")
    assert math.isnan(probs_nodata)
    np.testing.assert_array_equal(np.isnan(probs).any(axis=0), ~mask)
    assert np.isnan(probs).all(axis=0)[~mask].all()
    np.testing.assert_allclose(probs[:, mask], whole_probs[:, mask], atol=1e-3)


def test_uint8_probabilities_are_zero_where_there_is_no_data(tmp_path):
    bands, mask = scene(), valid_mask()
    write(tmp_path / "bordered.tif", np.where(mask, bands, 0).astype(np.uint8), nodata=0)
    predict([tmp_path / "bordered.tif"], tmp_path / "map.tif", pointwise(),
            probabilities=ProbabilityOutput(tmp_path / "p.tif", ["a", "b", "c", "d"]))
    probs, nodata = read(tmp_path / "p.tif")
    assert nodata is None and (probs[:, ~mask] == 0).all() and (probs[:, mask].sum(axis=0) >= 250).all()


def test_a_change_pixel_is_no_data_when_either_date_is(tmp_path):
    a_mask = valid_mask(valid=(slice(0, 200), slice(60, 230)))  # no data on the left in A, at the top in B
    b_mask = valid_mask(valid=(slice(50, 200), slice(0, 230)))
    write(tmp_path / "a.tif", np.where(a_mask, scene(1), 0).astype(np.uint8), nodata=0)
    write(tmp_path / "b.tif", np.where(b_mask, scene(2), 0).astype(np.uint8), nodata=0)
    windows = predict([tmp_path / "a.tif", tmp_path / "b.tif"], tmp_path / "change.tif", pointwise(6, 2), bands=6,
                      nodata=128, to_map=lambda probs: (probs.argmax(dim=0) == 1).to(torch.uint8) * 255)
    (change,), nodata = read(tmp_path / "change.tif")
    assert nodata == 128
    np.testing.assert_array_equal(change == 128, ~(a_mask & b_mask))
    assert windows == windows_touching(a_mask & b_mask)


def test_a_scene_of_no_data_only_runs_one_window_and_maps_no_data(tmp_path):
    write(tmp_path / "empty.tif", np.zeros((3, HEIGHT, WIDTH), np.uint8), nodata=0)
    assert predict([tmp_path / "empty.tif"], tmp_path / "map.tif", pointwise()) == 1  # to learn the classes
    (classes,), _ = read(tmp_path / "map.tif")
    assert (classes == 255).all()


def test_a_scene_with_no_data_needs_a_nodata_value_for_the_map(tmp_path):
    write(tmp_path / "bordered.tif", scene(), nodata=0)
    with pytest.raises(ConfigError, match="nodata"):
        predict([tmp_path / "bordered.tif"], tmp_path / "map.tif", pointwise(), nodata=None)


def test_an_alpha_band_is_a_band_for_a_model_that_expects_it_and_refused_otherwise(tmp_path):
    bands = np.concatenate([scene(), np.full((1, HEIGHT, WIDTH), 255, np.uint8)])
    bands[3, :10] = 0
    write(tmp_path / "rgba.tif", bands, alpha=True)
    # A 4-band model reads the 4th band as training read it, a band: no mask, every window run.
    assert predict([tmp_path / "rgba.tif"], tmp_path / "map.tif", pointwise(4), bands=4, nodata=None) > 0
    (classes,), _ = read(tmp_path / "map.tif")
    assert (classes != 255).all()
    with pytest.raises(DataError, match="band 4 of .*rgba.tif is alpha"):
        predict([tmp_path / "rgba.tif"], tmp_path / "map2.tif", pointwise(5), bands=5)


@pytest.mark.parametrize("value, declared", [(np.nan, None), (np.nan, np.nan), (np.inf, None)])
def test_non_finite_pixels_of_a_float_scene_are_no_data_declared_or_not(tmp_path, value, declared):
    # Issue #29, 1: a float scene whose NaN pixels were not declared gave class 0 over the windows holding them
    # (NaN probabilities), silently. Any NaN or infinite band makes a pixel no data, as a nodata value does.
    mask = valid_mask()
    mask[100, 100:103] = False  # a few pixels among the data, too
    bands = np.where(mask, scene().astype(np.float32), np.float32(value))
    bands[1, 100, 103] = value  # one band alone is enough
    mask[100, 103] = False
    write(tmp_path / "float.tif", bands, nodata=declared)
    write(tmp_path / "whole.tif", scene().astype(np.float32))
    model, names = pointwise(), ["a", "b", "c", "d"]
    counting = Counting(model)
    result = predict_scene(counting, [tmp_path / "float.tif"], tmp_path / "map.tif", [128.0] * 3, [64.0] * 3,
                           PALETTE, window=WINDOW, stride=STRIDE, batch_size=4, progress=False, nodata=255,
                           probabilities=ProbabilityOutput(tmp_path / "p.tif", names, "float16"))
    predict([tmp_path / "whole.tif"], tmp_path / "whole_map.tif", model)
    (classes,), _ = read(tmp_path / "map.tif")
    (whole,), _ = read(tmp_path / "whole_map.tif")
    np.testing.assert_array_equal(classes == 255, ~mask)
    np.testing.assert_array_equal(classes[mask], whole[mask])
    assert result.no_data_pixels == int((~mask).sum())
    assert counting.windows == windows_touching(mask)
    probs, _ = read(tmp_path / "p.tif")
    assert np.isfinite(probs[:, mask]).all()


def test_a_float_scene_without_non_finite_pixels_needs_no_nodata_value(tmp_path):
    write(tmp_path / "float.tif", scene().astype(np.float32))
    predict([tmp_path / "float.tif"], tmp_path / "map.tif", pointwise(), nodata=None)
    write(tmp_path / "nan.tif", np.where(valid_mask(), scene().astype(np.float32), np.float32(np.nan)))
    with pytest.raises(ConfigError, match="NaN or infinite"):
        predict([tmp_path / "nan.tif"], tmp_path / "nan_map.tif", pointwise(), nodata=None)
    assert not (tmp_path / "nan_map.tif").exists()
