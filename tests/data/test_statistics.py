"""Band statistics of the training images, for every task."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lemevit.data import band_normalisation, band_statistics
from lemevit.errors import DataError


def test_band_statistics_match_numpy(tmp_path):
    rng = np.random.default_rng(4)
    (tmp_path / "A").mkdir()
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((8, 8), (5, 9), (12, 3))]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / "A" / f"{i}.png")
    pixels = np.concatenate([a.reshape(-1, 3) for a in arrays]).astype(np.float64)
    mean, std = band_statistics([tmp_path / 'A' / f'{i}.png' for i in range(len(arrays))])
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-10)

    # 16-bit data with a large offset and a small spread: a raw sum of squares would lose it.
    arrays16 = [(60000 + rng.integers(0, 4, (7, 6))).astype(np.uint16) for _ in range(3)]
    for i, a in enumerate(arrays16):
        Image.fromarray(a).save(tmp_path / "A" / f"u{i}.png")
    mean, std = band_statistics([tmp_path / 'A' / f'u{i}.png' for i in range(3)])
    values = np.concatenate([a.ravel() for a in arrays16]).astype(np.float64)
    np.testing.assert_allclose(mean, [values.mean()], rtol=1e-12)
    np.testing.assert_allclose(std, [values.std()], rtol=1e-9)


def test_normalisation_is_imagenet_for_8_bit_rgb_and_measured_otherwise(tmp_path):
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(rgb)
    norm = band_normalisation([rgb])
    assert (norm.bands, norm.dtype) == (3, "uint8") and norm.mean[0] == pytest.approx(123.675)
    grey = [tmp_path / f"g{i}.png" for i in range(2)]
    for i, path in enumerate(grey):
        Image.fromarray(np.full((4, 4), 1000 + 100 * i, np.uint16)).save(path)
    norm = band_normalisation(grey)
    assert (norm.bands, norm.dtype, norm.mean, norm.std) == (1, "uint16", (1050.0,), (50.0,))
    with pytest.raises(DataError, match=r"band\(s\) \[0\] are constant"):
        band_normalisation(grey[:1])
