"""Scene classification data layer: image reading, class folders, splits, checks, statistics, transforms,
the dataset and the data module."""
from __future__ import annotations

import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lemevit.data import (
    IMAGENET_RGB_MEAN_STD,
    ClassificationDataModule,
    ImageReadError,
    Sample,
    SceneDataset,
    band_statistics,
    check_images,
    eval_transform,
    load_split,
    read_image,
    read_split_file,
    save_split,
    scan_class_folders,
    stratified_split,
    train_transform,
)
from lemevit.data import images as images_module

# The sample data sets live next to the repository in ../shared (as the parity fixtures do, see conftest).
AID = Path(__file__).parent.parent.parent / "shared" / "data" / "aid_150px"


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


def _make_dataset(root: Path, counts: dict[str, int], size: int = 16, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(_rgb(rng, size, size)).save(root / name / f"{name.lower()}_{i}.png")


def _samples(counts: dict[str, int]) -> list[Sample]:
    return [Sample(f"{name}/{name.lower()}_{i}.jpg", label)
            for label, (name, n) in enumerate(sorted(counts.items())) for i in range(n)]


# --- splits -------------------------------------------------------------------------------------------


def _by_class(samples: list[Sample]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for s in samples:
        out.setdefault(s.label, []).append(s.path)
    return out


def test_stratified_split_is_stable_and_stratified():
    counts = {"Airport": 20, "Beach": 7, "Forest": 2, "Port": 1}
    samples = _samples(counts)
    a = stratified_split(samples, 0.8, seed=3)
    assert a == stratified_split(samples, 0.8, seed=3)
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    assert stratified_split(shuffled, 0.8, seed=3) == a
    assert stratified_split(samples, 0.8, seed=4) != a

    train, val = _by_class(a["train"]), _by_class(a["val"])
    assert sorted(s.path for s in a["train"] + a["val"]) == sorted(s.path for s in samples)
    assert set(train) == {0, 1, 2, 3} and set(val) == {0, 1, 2}  # a one-image class is training-only
    assert (len(train[0]), len(val[0])) == (16, 4)
    assert (len(train[2]), len(val[2])) == (1, 1)
    assert [s.path for s in a["train"]] == sorted(s.path for s in a["train"])

    # A new image in one class leaves every other class's assignment as it was.
    grown = samples + [Sample("Beach/beach_new.jpg", 1)]
    b = stratified_split(grown, 0.8, seed=3)
    for label in (0, 2, 3):
        assert _by_class(b["train"]).get(label) == train.get(label)
        assert _by_class(b["val"]).get(label) == val.get(label)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.1])
def test_stratified_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="--split"):
        stratified_split(_samples({"A": 4}), fraction, seed=0)


# --- class folders and split files --------------------------------------------------------------------


def test_scan_class_folders(tmp_path):
    _make_dataset(tmp_path, {"Beach": 2, "Airport": 3})
    (tmp_path / ".cache").mkdir()
    Image.fromarray(_rgb(np.random.default_rng(0))).save(tmp_path / ".cache" / "x.png")
    (tmp_path / "Beach" / "notes.txt").write_text("not an image")
    (tmp_path / "Beach" / "sub").mkdir()
    Image.fromarray(_rgb(np.random.default_rng(0))).save(tmp_path / "Beach" / "sub" / "deep.JPG")
    (tmp_path / "README.md").write_text("ignored")

    class_names, samples = scan_class_folders(tmp_path)
    assert class_names == ["Airport", "Beach"]
    assert [s.path for s in samples] == sorted(s.path for s in samples)
    assert len(samples) == 6
    assert Sample("Beach/sub/deep.JPG", 1) in samples
    assert all(s.label == (0 if s.path.startswith("Airport/") else 1) for s in samples)


def test_scan_class_folders_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        scan_class_folders(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class folders"):
        scan_class_folders(tmp_path)
    _make_dataset(tmp_path, {"Beach": 2})
    (tmp_path / "Desert").mkdir()
    (tmp_path / "Desert" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"empty class folder .*Desert"):
        scan_class_folders(tmp_path)


def test_read_split_file(tmp_path):
    _make_dataset(tmp_path / "data", {"Airport": 2, "Beach": 2})
    classes = ["Airport", "Beach"]
    split = tmp_path / "val.txt"
    split.write_text("# validation images\n\nBeach/beach_1.png\n  Airport/airport_0.png  \n")
    assert read_split_file(split, tmp_path / "data", classes) == [Sample("Beach/beach_1.png", 1),
                                                                  Sample("Airport/airport_0.png", 0)]

    split.write_text("Beach/beach_1.png\n# comment\nForest/forest_0.png\n")
    with pytest.raises(ValueError, match=r"val\.txt, line 3: 'Forest/forest_0\.png': unknown class"):
        read_split_file(split, tmp_path / "data", classes)
    split.write_text("\nBeach/beach_9.png\n")
    with pytest.raises(ValueError, match=r"val\.txt, line 2: 'Beach/beach_9\.png': file .* not found"):
        read_split_file(split, tmp_path / "data", classes)
    split.write_text("Beach/beach_1.png\nBeach/beach_1.png\n")
    with pytest.raises(ValueError, match=r"line 2.*listed twice \(first on line 1\)"):
        read_split_file(split, tmp_path / "data", classes)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_split_file(tmp_path / "nope.txt", tmp_path / "data", classes)


def test_save_load_split_round_trip(tmp_path):
    splits = stratified_split(_samples({"Airport": 5, "Beach": 4}), 0.5, seed=0)
    splits["test"] = [Sample("Beach/extra.jpg", 1)]
    path = tmp_path / "out" / "split.json"
    save_split(path, ["Airport", "Beach"], splits, "relative/root")
    assert load_split(path) == ("relative/root", ["Airport", "Beach"], splits)
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temporary file left behind

    with pytest.raises(ValueError, match="label 2"):
        save_split(path, ["Airport", "Beach"], {"train": [Sample("Port/p.jpg", 2)]}, "r")
    assert load_split(path)[2] == splits  # a failed save leaves the previous file intact

    path.write_text(path.read_text()[:50])
    with pytest.raises(ValueError, match=r"split\.json is not valid JSON"):
        load_split(path)
    path.write_text(json.dumps({"format": "lemevit-split", "version": 1, "root": "r", "class_names": ["A"],
                                "splits": {"train": [{"path": "A/a.jpg", "label": 3}]}}))
    with pytest.raises(ValueError, match=r"split\.json .*entry 0 of subset \"train\""):
        load_split(path)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        load_split(tmp_path / "absent.json")


# --- reading images -----------------------------------------------------------------------------------


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
    monkeypatch.setattr(images_module, "_rasterio", lambda: None)
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
    has_rasterio = images_module._rasterio() is not None
    if has_rasterio:
        _write_geotiff(tmp_path / "s2.tif", np.zeros((5, 4, 4), np.uint16))
    monkeypatch.setattr(images_module, "_rasterio", lambda: None)
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
    if images_module._rasterio() is not None:
        _write_geotiff(tmp_path / "big.tif", np.ones((3, 64, 64), np.uint16))
        data = (tmp_path / "big.tif").read_bytes()
        (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageReadError, match=r"cut\.tif"):
            read_image(tmp_path / "cut.tif")


# --- checks and statistics ----------------------------------------------------------------------------


def test_check_images_band_count_and_corrupt_files(tmp_path):
    _make_dataset(tmp_path, {"Airport": 3, "Beach": 2})
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "Beach" / "gray.png")
    classes, samples = scan_class_folders(tmp_path)
    assert check_images(tmp_path, [s for s in samples if "gray" not in s.path], skip_bad=False)[1] == []

    with pytest.raises(ValueError, match=r"Beach/gray\.png has 1 band\(s\), expected 3"):
        check_images(tmp_path, samples, skip_bad=False)
    good, bad = check_images(tmp_path, samples, skip_bad=True)
    assert [b["path"] for b in bad] == ["Beach/gray.png"] and "1 band" in bad[0]["reason"]
    assert [s.path for s in good] == [s.path for s in samples if "gray" not in s.path]

    (tmp_path / "Airport" / "airport_1.png").write_bytes(b"broken")
    with pytest.raises(ImageReadError, match=r"airport_1\.png"):
        check_images(tmp_path, samples, skip_bad=False)
    good, bad = check_images(tmp_path, samples, skip_bad=True)
    assert [b["path"] for b in bad] == ["Airport/airport_1.png", "Beach/gray.png"]
    assert len(good) == len(samples) - 2


def test_band_statistics_match_numpy(tmp_path):
    rng = np.random.default_rng(4)
    (tmp_path / "A").mkdir()
    arrays = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((8, 8), (5, 9), (12, 3))]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / "A" / f"{i}.png")
    samples = [Sample(f"A/{i}.png", 0) for i in range(len(arrays))]
    pixels = np.concatenate([a.reshape(-1, 3) for a in arrays]).astype(np.float64)
    mean, std = band_statistics(tmp_path, samples)
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(0), rtol=1e-10)

    # 16-bit data with a large offset and a small spread: a raw sum of squares would lose it.
    arrays16 = [(60000 + rng.integers(0, 4, (7, 6))).astype(np.uint16) for _ in range(3)]
    for i, a in enumerate(arrays16):
        Image.fromarray(a).save(tmp_path / "A" / f"u{i}.png")
    mean, std = band_statistics(tmp_path, [Sample(f"A/u{i}.png", 0) for i in range(3)])
    values = np.concatenate([a.ravel() for a in arrays16]).astype(np.float64)
    np.testing.assert_allclose(mean, [values.mean()], rtol=1e-12)
    np.testing.assert_allclose(std, [values.std()], rtol=1e-9)


# --- transforms ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bands", [3, 5])
def test_transform_shapes(bands):
    torch.manual_seed(0)
    image = torch.rand(bands, 37, 23) * 255
    mean, std = [100.0] * bands, [50.0] * bands
    for transform in (train_transform(32, mean, std), eval_transform(32, mean, std)):
        out = transform(image)
        assert out.shape == (bands, 32, 32) and out.dtype == torch.float32
    # Evaluation keeps the whole scene: a constant image stays that constant, normalised.
    const = torch.full((bands, 37, 23), 150.0)
    torch.testing.assert_close(eval_transform(16, mean, std)(const), torch.full((bands, 16, 16), 1.0))


def test_train_transform_rotations_are_exact():
    torch.manual_seed(0)
    image = torch.arange(5 * 24 * 24, dtype=torch.float32).reshape(5, 24, 24)
    transform = train_transform(24, [0.0] * 5, [1.0] * 5, hflip=0.0, vflip=0.0, rot90=True, scale=(1.0, 1.0),
                                ratio=(1.0, 1.0))
    rotations = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    seen = set()
    for _ in range(40):
        out = transform(image)
        matches = [k for k, r in enumerate(rotations) if torch.equal(out, r)]
        assert len(matches) == 1, "a 90° rotation must move pixels exactly"
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_randaugment_and_argument_checks():
    torch.manual_seed(0)
    mean, std = IMAGENET_RGB_MEAN_STD
    image = torch.randint(0, 256, (3, 40, 40)).float()
    out = train_transform(32, mean, std, randaugment="rand-m9-n2")(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="3-band"):
        train_transform(32, [0.0] * 5, [1.0] * 5, randaugment="rand-m9-n2")
    with pytest.raises(ValueError, match="rand-m9-n2"):
        train_transform(32, mean, std, randaugment="augmix-m5")
    with pytest.raises(ValueError, match="0..255"):
        train_transform(32, mean, std, randaugment="rand")(image * 100)
    with pytest.raises(ValueError, match=r"band\(s\) \[1\]"):
        eval_transform(32, [0.0, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="same length"):
        eval_transform(32, [0.0, 0.0], [1.0])


# --- dataset and data module --------------------------------------------------------------------------


def test_scene_dataset_and_plot(tmp_path):
    _make_dataset(tmp_path / "data", {"Airport": 2, "Beach": 2})
    classes, samples = scan_class_folders(tmp_path / "data")
    dataset = SceneDataset(tmp_path / "data", samples, transform=None)
    image, label = dataset[3]
    expected = np.asarray(Image.open(tmp_path / "data" / samples[3].path)).transpose(2, 0, 1)
    assert label == 1 and image.dtype == torch.float32
    assert torch.equal(image, torch.from_numpy(expected.astype(np.float32)))  # 0..255, not rescaled
    dataset.plot([0, 3], classes, tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.format == "PNG" and grid.width > 100


def test_datamodule_batches(tmp_path):
    _make_dataset(tmp_path, {"Airport": 6, "Beach": 5, "Forest": 5}, size=20)
    classes, samples = scan_class_folders(tmp_path)
    splits = stratified_split(samples, 0.75, seed=0)
    dm = ClassificationDataModule(tmp_path, classes, splits, img_size=16, batch_size=4, num_workers=0,
                                  mean=[128.0] * 3, std=[64.0] * 3, augment={"randaugment": "rand-m5-n1"})
    assert (dm.num_classes, dm.num_bands) == (3, 3)
    assert len(splits["train"]) == 12 and len(splits["val"]) == 4
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    for images, labels in batches:
        assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
        assert labels.dtype == torch.int64
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(s.label for s in splits["train"])
    images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 3, 16, 16)
    assert labels.tolist() == [s.label for s in splits["val"]]
    assert [b[1].tolist() for b in dm.test_dataloader()] == [labels.tolist()]  # no "test": falls back to val

    with pytest.raises(ValueError, match="unknown key"):
        ClassificationDataModule(tmp_path, classes, splits, 16, 4, mean=[0.0] * 3, std=[1.0] * 3,
                                 augment={"mixup": 0.2})
    with pytest.raises(ValueError, match='no "val" images'):
        ClassificationDataModule(tmp_path, classes, {"train": splits["train"]}, 16, 4, mean=[0.0] * 3,
                                 std=[1.0] * 3)


def test_aid_sample():
    if not AID.is_dir():
        pytest.skip(f"sample data {AID} not present (it lives in ../shared, next to the clone)")
    classes, samples = scan_class_folders(AID)
    assert len(classes) == 30 and "Airport" in classes
    assert len(samples) == 1500
    splits = stratified_split(samples, 0.8, seed=0)
    assert len(splits["train"]) == 1200 and len(splits["val"]) == 300
    picked = [samples[0], samples[777], samples[-1]]
    for s in picked:
        image = read_image(AID / s.path)
        assert image.shape == (150, 150, 3) and image.dtype == np.uint8
    good, bad = check_images(AID, picked, skip_bad=False)
    assert bad == [] and good == picked
