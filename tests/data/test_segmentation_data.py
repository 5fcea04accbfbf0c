"""Segmentation data: label schemes and presets, mask decoding, folder pairs, splits, crops, GeoTIFF tiles."""
from __future__ import annotations

import pickle
import shutil
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lemevit.data.segmentation import (
    SegmentationCrops,
    TilePair,
    check_pairs,
    dataset_subsets,
    resolve_labels,
    scan_pairs,
    split_tiles,
)
from lemevit.data.splits import Split, load_split, save_split
from lemevit.errors import ConfigError, DataError
from lemevit.io.images import read_image
from lemevit.io.regions import RegionReader, read_region
from lemevit.labels import IGNORE_INDEX, PRESETS, LabelScheme

DEMO = Path(str(files("lemevit") / "demo_data"))
POTSDAM_MASK = DEMO / "potsdam_seg" / "ann_dir" / "2_10_0_0_512_512.png"
SCHEME = LabelScheme(("road", "roof", "grass"))


def write_pair(root: Path, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    for folder, array in (("img_dir", image), ("ann_dir", mask)):
        path = root / folder / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path)


def test_potsdam_and_loveda_presets_decode_the_shipped_masks_as_their_manifests_say():
    stored = np.asarray(Image.open(POTSDAM_MASK))
    decoded = PRESETS["potsdam"].decode(stored[..., None], POTSDAM_MASK)
    assert (decoded == IGNORE_INDEX).sum() == (stored == 0).sum() == 24696  # 0 = eroded boundary
    np.testing.assert_array_equal(decoded[stored > 0], stored[stored > 0] - 1)
    assert PRESETS["potsdam"].class_names[4] == "car" and PRESETS["vaihingen"].palette[1] == (0, 0, 255)

    mask = DEMO / "loveda_seg" / "ann_dir" / "0.png"
    loveda = PRESETS["loveda"].decode(np.asarray(Image.open(mask))[..., None], mask)
    assert sorted(np.unique(loveda).tolist()) == [0, 1, 2, 3, 6]  # stored 1, 2, 3, 4, 7
    assert PRESETS["loveda"].class_names[6] == "agricultural"


def test_isprs_colour_masks_decode_to_the_same_classes_as_their_converted_values():
    potsdam = PRESETS["potsdam"]
    stored = np.asarray(Image.open(POTSDAM_MASK))
    colours = np.array([(0, 0, 0), *potsdam.palette], dtype=np.uint8)[stored]  # 0 -> black boundary
    np.testing.assert_array_equal(potsdam.decode(colours, "rgb.png"), potsdam.decode(stored[..., None], "index.png"))


def test_a_mask_value_or_colour_that_is_neither_a_class_nor_ignored_is_an_error_naming_the_file():
    values = np.array([[0, 1], [2, 9]], np.uint8)[..., None]
    with pytest.raises(DataError, match=r"mask a/b\.png: value\(s\) \[9\] are neither a class \(0\.\.2\)"):
        SCHEME.decode(values, "a/b.png")
    np.testing.assert_array_equal(SCHEME.decode(np.where(values == 9, 255, values).astype(np.uint8), "ok"),
                                  [[0, 1], [2, IGNORE_INDEX]])
    colours = np.zeros((2, 2, 3), np.uint8)
    colours[0, 0] = (255, 255, 255)
    colours[1, 1] = (10, 20, 30)
    with pytest.raises(DataError, match=r"mask c\.tif: colour\(s\) \[\(10, 20, 30\)\]"):
        PRESETS["potsdam"].decode(colours, "c.tif")
    with pytest.raises(DataError, match="two bands|2 band"):
        SCHEME.decode(np.zeros((2, 2, 2), np.uint8), "d.png")


def test_label_schemes_reject_inconsistent_settings():
    with pytest.raises(DataError, match="ignore_value 1 is also the value of class 'roof'"):
        LabelScheme(("road", "roof"), ignore_value=1)
    with pytest.raises(DataError, match="palette has 1 colours for 2 classes"):
        LabelScheme(("road", "roof"), palette=((1, 2, 3),))
    with pytest.raises(DataError, match="duplicates"):
        LabelScheme(("road", "road"))
    assert LabelScheme.from_dict(PRESETS["loveda"].to_dict()) == PRESETS["loveda"]


def test_labels_come_from_a_preset_the_options_or_classes_yaml_in_the_data(tmp_path):
    assert resolve_labels(tmp_path, preset="vaihingen") == PRESETS["vaihingen"]
    assert resolve_labels(tmp_path, preset="potsdam", ignore_value=255).ignore_value == 255
    assert resolve_labels(tmp_path, class_names=["a", "b"]).class_names == ("a", "b")
    with pytest.raises(DataError, match="classes.yaml"):
        resolve_labels(tmp_path)
    (tmp_path / "classes.yaml").write_text("class_names: [water, land]\nignore_value: 0\nfirst_class_value: 1\n")
    scheme = resolve_labels(tmp_path)
    assert scheme.class_names == ("water", "land") and scheme.ignore_value == 0 and scheme.first_class_value == 1
    (tmp_path / "classes.yaml").write_text("class_names: [water]\nignore: 0\n")
    with pytest.raises(DataError, match=r"classes\.yaml: unknown keys \['ignore'\]"):
        resolve_labels(tmp_path)
    with pytest.raises(ConfigError, match="unknown preset 'isprs'"):
        resolve_labels(tmp_path, preset="isprs")


def test_pairs_need_a_mask_of_the_same_name_and_size_with_valid_values(tmp_path):
    image, mask = np.zeros((8, 6, 3), np.uint8), np.zeros((8, 6), np.uint8)
    write_pair(tmp_path, "a", image, mask)
    (tmp_path / "img_dir" / "b.png").write_bytes((tmp_path / "img_dir" / "a.png").read_bytes())
    with pytest.raises(DataError, match=r"no mask for image .*img_dir/b\.png: expected .*ann_dir/b\.<png"):
        scan_pairs(tmp_path)
    write_pair(tmp_path, "b", image, np.zeros((8, 7), np.uint8))
    pairs = scan_pairs(tmp_path)
    assert pairs == [TilePair("img_dir/a.png", "ann_dir/a.png"), TilePair("img_dir/b.png", "ann_dir/b.png")]
    with pytest.raises(DataError, match=r"mask .*ann_dir/b\.png is 7x8 \(WxH\), its image .*b\.png is 6x8"):
        check_pairs(tmp_path, pairs, SCHEME)
    write_pair(tmp_path, "b", image, np.full((8, 6), 7, np.uint8))
    with pytest.raises(DataError, match=r"ann_dir/b\.png: value\(s\) \[7\]"):
        check_pairs(tmp_path, pairs, SCHEME)
    write_pair(tmp_path, "b", np.zeros((8, 6), np.uint8), mask)
    with pytest.raises(DataError, match=r"img_dir/b\.png has 1 band\(s\) of uint8, but .*a\.png has 3"):
        check_pairs(tmp_path, pairs, SCHEME)
    with pytest.raises(DataError, match="ann_dir"):
        scan_pairs(tmp_path / "img_dir")


def test_tiles_are_split_by_fraction_by_subfolders_or_not_at_all(tmp_path):
    flat = tmp_path / "flat"
    for name in ("t0", "t1", "t2", "t3"):
        write_pair(flat, name, np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))
    split = split_tiles(flat, 0.75, seed=0)
    assert len(split["train"]) == 3 and len(split["val"]) == 1
    assert split == split_tiles(flat, 0.75, seed=0)
    assert not {p.image for p in split["train"]} & {p.image for p in split["val"]}
    overfit = split_tiles(flat, 1.0, seed=0)
    assert overfit["train"] == overfit["val"] == scan_pairs(flat)
    with pytest.raises(DataError, match="`split` 1.0"):
        split_tiles(DEMO / "potsdam_seg", 0.8, seed=0)

    mmseg = tmp_path / "mmseg"
    for subset in ("train", "val"):
        write_pair(mmseg, f"{subset}/x", np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), np.uint8))
    split = split_tiles(mmseg, 0.5, seed=0)
    assert split == {"train": [TilePair("img_dir/train/x.png", "ann_dir/train/x.png")],
                     "val": [TilePair("img_dir/val/x.png", "ann_dir/val/x.png")]}
    save_split(tmp_path / "split.json", "segmentation", Split(mmseg, split, {"labels": PRESETS["loveda"].to_dict()}))
    loaded = load_split(tmp_path / "split.json", "segmentation", TilePair)
    assert (loaded.root, LabelScheme.from_dict(loaded.meta["labels"]), loaded.subsets) == (mmseg, PRESETS["loveda"],
                                                                                         split)


def coded_tile(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A tile whose first band is 50 times its class, so that image and mask can be checked for alignment."""
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 3, (height, width)).astype(np.uint8)
    image = rng.integers(0, 255, (height, width, 3)).astype(np.uint8)
    image[..., 0] = mask * 50
    return image, mask


def test_random_crops_flips_and_rotations_keep_image_and_mask_aligned(tmp_path):
    image, mask = coded_tile(40, 56)
    write_pair(tmp_path, "tile", image, mask)
    pairs = scan_pairs(tmp_path)
    crops = SegmentationCrops(tmp_path, pairs, SCHEME, 16, mean=[0, 0, 0], std=[1, 1, 1], augment_seed=5)
    assert len(crops) == 3 * 4  # enough 16-px crops to cover 40x56 once
    plain = SegmentationCrops(tmp_path, pairs, SCHEME, 16, mean=[0, 0, 0], std=[1, 1, 1], flip=False,
                              rotate90=False, augment_seed=5)
    windows = {image[t:t + 16, s:s + 16, 1].tobytes() for t in range(25) for s in range(41)}
    transformed = 0
    for i in range(len(crops)):
        x, y = crops[i]
        assert x.shape == (3, 16, 16) and y.shape == (16, 16) and y.dtype == torch.int64
        torch.testing.assert_close(x[0], y.float() * 50)
        torch.testing.assert_close(crops[i][0], x)  # the same item is the same crop
        px, _ = plain[i]
        assert px[1].numpy().astype(np.uint8).tobytes() in windows  # an axis-aligned window of the tile
        transformed += x[1].numpy().astype(np.uint8).tobytes() not in windows
    assert transformed > 0


def test_region_reader_decodes_each_png_once_within_its_budget_and_drops_the_least_recently_used(
        tmp_path, monkeypatch):
    from lemevit.io import regions

    rng = np.random.default_rng(0)
    paths = []
    for name in "abc":  # 30x40x3 bytes = 3600 each
        paths.append(tmp_path / f"{name}.png")
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(paths[-1])
    decoded = []
    monkeypatch.setattr(regions, "read_image", lambda path: decoded.append(path.name) or read_image(path))
    reader = RegionReader(max_bytes=2 * 3600)
    for path, region in [(paths[0], (0, 0, 30, 40)), (paths[1], (5, 7, 9, 11)), (paths[0], (20, 30, 16, 16)),
                         (paths[2], (1, 2, 3, 4)), (paths[0], (0, 0, 2, 2)), (paths[1], (0, 0, 2, 2))]:
        np.testing.assert_array_equal(reader(path, *region), read_image(path)[region[0]:region[0] + region[2],
                                                                               region[1]:region[1] + region[3]])
    # a kept; b dropped when c came (a was used more recently), then decoded again.
    assert decoded == ["a.png", "b.png", "c.png", "b.png"]
    assert pickle.loads(pickle.dumps(reader))._images == {}  # spawned workers get the budget, not the images
    with pytest.raises(ValueError, match="max_bytes"):
        RegionReader(-1)


def test_crops_are_the_same_with_or_without_the_tile_cache(tmp_path):
    image, mask = coded_tile(40, 56)
    write_pair(tmp_path, "tile", image, mask)
    pairs = scan_pairs(tmp_path)
    cached, uncached = (SegmentationCrops(tmp_path, pairs, SCHEME, 16, mean=[0, 0, 0], std=[1, 1, 1],
                                          augment_seed=2, cache_bytes=budget) for budget in (2**20, 0))
    for i in range(len(cached)):
        for a, b in zip(cached[i], uncached[i], strict=True):
            torch.testing.assert_close(a, b)
    np.testing.assert_array_equal(read_region(tmp_path / "ann_dir" / "tile.png", 3, 4, 5, 6), mask[3:8, 4:10, None])


def test_class_balance_puts_a_rare_class_in_the_crops_it_asks_for(tmp_path):
    # Grass is a 3x3 patch near a corner of a 200x150 road tile (0.03 % of it), roofs a border strip.
    mask = np.zeros((200, 150), np.uint8)
    mask[190:193, 3:6] = 2
    mask[:, 140:] = 1
    image = np.repeat((mask * 50)[..., None], 3, axis=2)
    write_pair(tmp_path, "tile", image, mask)
    pairs = scan_pairs(tmp_path)

    def share_with_grass(class_balance: float) -> float:
        crops = SegmentationCrops(tmp_path, pairs, SCHEME, 32, mean=[0, 0, 0], std=[1, 1, 1], crops_per_tile=300,
                                  class_balance=class_balance, augment_seed=1)
        found = 0
        for i in range(len(crops)):
            x, y = crops[i]
            torch.testing.assert_close(x[0], y.float() * 50)
            found += bool((y == 2).any())
        return found / len(crops)

    assert share_with_grass(0.0) < 0.05
    # Half the crops are balanced, and a third of those go to grass (one class of three, drawn uniformly).
    assert 0.1 < share_with_grass(0.5) < 0.25
    assert 0.25 < share_with_grass(1.0) < 0.42
    with pytest.raises(ConfigError, match="class_balance"):
        SegmentationCrops(tmp_path, pairs, SCHEME, 32, mean=[0, 0, 0], std=[1, 1, 1], class_balance=1.5)


def test_tiles_smaller_than_a_crop_are_padded_with_ignored_pixels(tmp_path):
    image, mask = coded_tile(10, 12)
    write_pair(tmp_path, "small", image, mask)
    crops = SegmentationCrops(tmp_path, scan_pairs(tmp_path), SCHEME, 16, mean=[0, 0, 0], std=[1, 1, 1],
                              flip=False, rotate90=False, augment_seed=0)
    x, y = crops[0]
    assert (y[:10, :12].numpy() == mask).all() and (y[10:] == IGNORE_INDEX).all() and (y[:, 12:] == IGNORE_INDEX).all()
    assert (x[:, 10:] == 0).all()


def test_16_bit_multiband_geotiff_tiles_are_cropped_through_windows(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    rng = np.random.default_rng(1)
    bands = rng.integers(0, 60000, (4, 70, 90)).astype(np.uint16)
    mask = rng.integers(1, 4, (70, 90)).astype(np.uint8)
    for folder, array in (("img_dir", bands), ("ann_dir", mask[None])):
        (tmp_path / folder).mkdir()
        with rasterio.open(tmp_path / folder / "scene.tif", "w", driver="GTiff", width=90, height=70,
                           count=len(array), dtype=array.dtype.name, crs="EPSG:32632",
                           transform=Affine(0.5, 0, 500000, 0, -0.5, 5000000)) as ds:
            ds.write(array)
    scheme = LabelScheme(("a", "b", "c"), ignore_value=0, first_class_value=1)
    pairs = scan_pairs(tmp_path)
    assert check_pairs(tmp_path, pairs, scheme)["bands"] == 4
    crops = SegmentationCrops(tmp_path, pairs, scheme, 32, mean=[0] * 4, std=[1] * 4, flip=False, rotate90=False,
                              augment_seed=3)
    for i in range(len(crops)):
        x, y = crops[i]
        found = [(t, s) for t in range(39) for s in range(59) if np.array_equal(mask[t:t + 32, s:s + 32] - 1, y)]
        assert found, "the mask crop is a window of the mask"
        t, s = found[0]
        np.testing.assert_array_equal(x.numpy(), bands[:, t:t + 32, s:s + 32].astype(np.float32))


def test_the_five_class_isprs_presets_score_five_classes_and_ignore_clutter_and_boundaries():
    for name in ("potsdam5", "vaihingen5"):
        scheme = PRESETS[name]
        assert scheme.class_names == ("impervious_surface", "building", "low_vegetation", "tree", "car")
        # LeMeViT's masks: 0..4 the classes, 5 clutter.
        values = np.array([[0, 1, 2], [3, 4, 5]], np.uint8)[..., None]
        np.testing.assert_array_equal(scheme.decode(values, "m.png"), [[0, 1, 2], [3, 4, IGNORE_INDEX]])
        # The ISPRS colours: clutter red and the eroded boundaries black are unlabelled.
        colours = np.array([[(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0)],
                            [(255, 255, 0), (255, 0, 0), (0, 0, 0), (0, 0, 255)]], np.uint8)
        np.testing.assert_array_equal(scheme.decode(colours, "rgb.png"),
                                      [[0, 1, 2, 3], [4, IGNORE_INDEX, IGNORE_INDEX, 1]])
        # mmsegmentation's six-class values (clutter stored as 6) are refused, not read shifted by one.
        with pytest.raises(DataError, match=r"value\(s\) \[6\] are neither a class \(0\.\.4\) nor the ignore value 5"):
            scheme.decode(np.array([[1, 6]], np.uint8)[..., None], "mmseg.png")


def test_the_ade20k_preset_has_the_150_benchmark_classes_and_reduces_the_zero_label():
    ade = PRESETS["ade20k"]
    assert ade.num_classes == 150 and (ade.ignore_value, ade.first_class_value) == (0, 1)
    assert ade.class_names[:8] == ("wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed")
    assert ade.class_names[-3:] == ("glass", "clock", "flag") and ade.class_names.index("car") == 20
    values = np.array([[0, 1, 2], [21, 150, 0]], np.uint8)[..., None]
    np.testing.assert_array_equal(ade.decode(values, "ADE_val_1.png"),
                                  [[IGNORE_INDEX, 0, 1], [20, 149, IGNORE_INDEX]])
    assert resolve_labels(Path("."), preset="ade20k") == ade


def test_the_ade20k_release_layout_is_split_into_training_and_validation(tmp_path):
    ade = tmp_path / "ADEChallengeData2016"
    for folder, name in (("training", "ADE_train_00000001"), ("training", "ADE_train_00000002"),
                         ("validation", "ADE_val_00000001")):
        for kind, array, ext in (("images", np.zeros((6, 8, 3), np.uint8), "jpg"),
                                 ("annotations", np.full((6, 8), 3, np.uint8), "png")):
            path = ade / kind / folder / f"{name}.{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(path)
    assert dataset_subsets(ade) == ["train", "val"]
    split = split_tiles(ade, 0.8, seed=0)
    assert split["val"] == [TilePair("images/validation/ADE_val_00000001.jpg",
                                     "annotations/validation/ADE_val_00000001.png")]
    assert [p.mask for p in split["train"]] == ["annotations/training/ADE_train_00000001.png",
                                                "annotations/training/ADE_train_00000002.png"]
    stats = check_pairs(ade, split["train"], PRESETS["ade20k"])
    assert stats["pixels_per_class"]["sky"] == 2 * 48  # stored 3: the third class

    for kind in ("images", "annotations"):
        shutil.rmtree(ade / kind / "validation")
    with pytest.raises(DataError, match=r"images has subfolders \['training'\]; a split needs training/ and "
                                        r"validation/"):
        split_tiles(ade, 0.8, seed=0)
    (ade / "img_dir").mkdir()
    with pytest.raises(DataError, match="has both img_dir/ and images/"):
        scan_pairs(ade)
    with pytest.raises(DataError, match=r"img_dir/ .* or images/ \(images\) and annotations/"):
        scan_pairs(tmp_path)


def position_coded_tile(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """A tile whose first band is the column and second band the row of each pixel, and whose classes are
    vertical stripes 16 columns wide: a crop's scale and its alignment with the mask can be read off it."""
    rows, cols = np.mgrid[:height, :width]
    image = np.stack([cols, rows, np.zeros_like(rows)], axis=-1).astype(np.uint8)
    return image, ((cols // 16) % 3).astype(np.uint8)


def test_scale_jitter_cuts_crops_at_scales_in_the_range_aligned_with_their_masks(tmp_path):
    image, mask = position_coded_tile(200, 240)
    write_pair(tmp_path, "tile", image, mask)
    pairs = scan_pairs(tmp_path)

    def crops(scale_range, seed=4, **kwargs):
        return SegmentationCrops(tmp_path, pairs, SCHEME, 32, mean=[0, 0, 0], std=[1, 1, 1], flip=False,
                                 rotate90=False, crops_per_tile=20, augment_seed=seed, scale_range=scale_range,
                                 **kwargs)

    def pixels_per_step(x: torch.Tensor) -> tuple[float, float]:
        # Tile columns and rows per crop pixel, away from the borders where the resampling clamps.
        return float(x[0, 16, 27] - x[0, 16, 4]) / 23, float(x[1, 27, 16] - x[1, 4, 16]) / 23

    assert {pixels_per_step(crops(None)[i][0]) for i in range(20)} == {(1.0, 1.0)}
    x, y = crops([2.0, 2.0])[0]  # the tile twice as large: 32 pixels show 16 columns
    assert pixels_per_step(x) == pytest.approx((0.5, 0.5), abs=0.02)

    jittered = crops([0.5, 2.0])
    steps = []
    for i in range(len(jittered)):
        x, y = jittered[i]
        across, down = pixels_per_step(x)
        assert 0.49 <= across <= 2.01 and across == pytest.approx(down, abs=0.05)  # one factor for both axes
        steps.append(across)
        # Nearest-neighbour labels stay on the bilinear image: the class is that of the column shown.
        agree = (y == (x[0].round().long() // 16) % 3).float().mean()
        assert agree > 0.97, f"crop {i}: mask and image agree on {agree:.1%} of the pixels"
        for a, b in zip(jittered[i], crops([0.5, 2.0])[i], strict=True):
            torch.testing.assert_close(a, b)  # the same seed and index: the same crop
    assert min(steps) < 0.8 and max(steps) > 1.2  # enlarged and shrunk crops
    assert not torch.equal(jittered[0][0], crops([0.5, 2.0], seed=5)[0][0])

    small, small_mask = position_coded_tile(40, 40)
    write_pair(tmp_path / "small", "tile", small, small_mask)
    x, y = SegmentationCrops(tmp_path / "small", scan_pairs(tmp_path / "small"), SCHEME, 32, mean=[0, 0, 0],
                             std=[1, 1, 1], flip=False, rotate90=False, augment_seed=0, scale_range=[0.5, 0.5])[0]
    # The whole tile at half size, the rest padded.
    assert (y[:20, :20] != IGNORE_INDEX).all() and (y[20:] == IGNORE_INDEX).all() and (y[:, 20:] == IGNORE_INDEX).all()
    assert float(x[0, 0, 19] - x[0, 0, 0]) == pytest.approx(38, abs=1) and (x[:, 20:] == 0).all()
    for bad in ([0.5], [2.0, 0.5], [0.0, 1.0], [1, float("nan")]):
        with pytest.raises(ConfigError, match="scale_range"):
            SegmentationCrops(tmp_path, pairs, SCHEME, 32, mean=[0, 0, 0], std=[1, 1, 1], scale_range=bad)


def test_cat_max_ratio_keeps_a_crop_where_no_class_dominates_when_the_tries_find_one(tmp_path):
    # Roofs are the 24 left columns of a 96x96 road tile: a 32-px crop that starts in columns 1..15 holds both
    # classes with neither on 75 % of it, a quarter of the positions.
    mask = np.zeros((96, 96), np.uint8)
    mask[:, :24] = 1
    write_pair(tmp_path, "tile", np.repeat((mask * 50)[..., None], 3, axis=2), mask)
    pairs = scan_pairs(tmp_path)

    def balanced(crops: SegmentationCrops) -> float:
        found = 0
        for i in range(len(crops)):
            x, y = crops[i]
            torch.testing.assert_close(x[0], y.float() * 50)
            counts = torch.bincount(y.flatten(), minlength=2)
            found += bool(counts.min() > 0 and counts.max() < 0.75 * counts.sum())
        return found / len(crops)

    def crops(**kwargs) -> SegmentationCrops:
        return SegmentationCrops(tmp_path, pairs, SCHEME, 32, mean=[0, 0, 0], std=[1, 1, 1], crops_per_tile=60,
                                 augment_seed=3, **kwargs)

    assert balanced(crops()) < 0.4
    chosen = crops(cat_max_ratio=0.75)
    assert balanced(chosen) > 0.85  # ten tries miss a quarter of the positions 6 % of the time
    for a, b in zip(chosen[7], crops(cat_max_ratio=0.75)[7], strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="cat_max_ratio"):
        crops(cat_max_ratio=0.0)


def test_photometric_distortion_changes_the_pixels_not_the_geometry_and_is_refused_for_four_bands(tmp_path):
    image, mask = coded_tile(64, 64)
    write_pair(tmp_path, "tile", image, mask)
    pairs = scan_pairs(tmp_path)

    def crops(**kwargs) -> SegmentationCrops:
        return SegmentationCrops(tmp_path, pairs, SCHEME, 32, mean=[0, 0, 0], std=[1, 1, 1], crops_per_tile=12,
                                 augment_seed=8, **kwargs)

    plain, distorted = crops(), crops(photometric=True)
    state = torch.get_rng_state()
    changed = 0
    for i in range(len(plain)):
        (x, y), (dx, dy) = plain[i], distorted[i]
        assert torch.equal(y, dy)  # the same crop, flips and turns
        assert dx.min() >= 0 and dx.max() <= 255 and dx.eq(dx.round()).all()  # still 8-bit pixels
        changed += not torch.equal(x, dx)
        torch.testing.assert_close(distorted[i][0], dx)  # the same seed and index: the same distortion
    assert changed >= len(plain) // 2
    assert torch.equal(torch.get_rng_state(), state)  # torch's own generator is left as it was
    with pytest.raises(ConfigError, match=r"photometric: .*3-band .* these have 4 band"):
        SegmentationCrops(tmp_path, pairs, SCHEME, 32, mean=[0] * 4, std=[1] * 4, photometric=True)
