"""Tiny runs trained on four-band uint16 GeoTIFFs whose bands are named (B02 B03 B04 B08), for the tests that
predict scenes of band files with them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lemevit.cli import main

BAND_NAMES = ("B02", "B03", "B04", "B08")


def write_named_bands(path: Path, bands: np.ndarray) -> None:
    import rasterio

    with rasterio.open(path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=len(bands),
                       dtype=bands.dtype.name) as ds:
        ds.write(bands)
        ds.descriptions = BAND_NAMES


def _data(root: Path) -> Path:
    """Three 32 px tiles (segmentation: class 1 where B08 is high) and pairs (change: where B08 rose)."""
    if (root / "tiles").is_dir():
        return root
    rng = np.random.default_rng(0)
    for sub in ("tiles/img_dir", "tiles/ann_dir", "pairs/A", "pairs/B", "pairs/label"):
        (root / sub).mkdir(parents=True)
    for i in range(3):
        a, b = (rng.integers(1000, 3000, (4, 32, 32)).astype(np.uint16) for _ in range(2))
        write_named_bands(root / "tiles" / "img_dir" / f"t{i}.tif", a)
        Image.fromarray((a[3] > 2000).astype(np.uint8)).save(root / "tiles" / "ann_dir" / f"t{i}.png")
        write_named_bands(root / "pairs" / "A" / f"p{i}.tif", a)
        write_named_bands(root / "pairs" / "B" / f"p{i}.tif", b)
        Image.fromarray(((b[3] > a[3] + 500) * 255).astype(np.uint8)).save(root / "pairs" / "label" / f"p{i}.png")
    return root


_COMMON = ["--model", "resnet10t", "--img-size", "32", "--epochs", "1", "--batch-size", "2", "--num-workers", "0",
           "--split", "0.67"]


@pytest.fixture(scope="session")
def segmentation_band_run(tmp_path_factory) -> Path:
    """One epoch of a resnet10t UperNet on the named four-band tiles."""
    pytest.importorskip("rasterio")
    root = _data(tmp_path_factory.mktemp("band_segmentation"))
    assert main(["train", "--task", "segmentation", "--data", str(root / "tiles"), "--output", str(root / "run"),
                 "--decoder-channels", "16", "--class-names", "low", "high", *_COMMON]) == 0
    return root / "run"


@pytest.fixture(scope="session")
def change_band_run(tmp_path_factory) -> Path:
    """One epoch of a resnet10t siamese UNet on the named four-band pairs."""
    pytest.importorskip("rasterio")
    root = _data(tmp_path_factory.mktemp("band_change"))
    assert main(["train", "--task", "change", "--data", str(root / "pairs"), "--output", str(root / "run"),
                 "--head", "siamunet", *_COMMON]) == 0
    return root / "run"
