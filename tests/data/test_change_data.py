"""Change-detection data: the LEVIR-CD layout, splits, masks, joint crops and bad pairs named in errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from PIL import Image
from sample_data import make_pairs

from lemevit.data.change import (
    IGNORE_INDEX,
    ChangeCrops,
    check_pairs,
    find_change_splits,
    read_change_label,
    read_list_file,
    scan_change_folder,
)
from lemevit.errors import ConfigError, DataError

LEVIR = FIXTURES / "levir_cd"


def test_the_levir_cd_samples_are_read_as_pairs():
    pairs = scan_change_folder(LEVIR)
    assert len(pairs) == 11
    assert pairs[0].a == "A/test_102_0512_0000.png" and pairs[0].label == "label/test_102_0512_0000.png"
    demo = read_list_file(LEVIR / "list" / "demo.txt", pairs)
    assert len(demo) == 7 and all(p in pairs for p in demo)
    assert check_pairs(LEVIR, pairs) == (3, "uint8")
    masks = {p.name: read_change_label(LEVIR / p.label) for p in pairs}
    assert masks["train_386_0512_0768"].max() == 0  # the one mask without change
    assert all(set(np.unique(m)) <= {0, 1} for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) > 0


def test_splits_from_list_files_subfolders_or_at_random(tmp_path):
    root = make_pairs(tmp_path / "listed", names=[f"p{i}" for i in range(6)])
    (root / "list").mkdir()
    (root / "list" / "train.txt").write_text("p0.png\np1.png\np2\np3.png\n")
    (root / "list" / "val.txt").write_text("# held out\np4.png\np5.png\n")
    splits = find_change_splits(root)
    assert [p.name for p in splits["train"]] == ["p0", "p1", "p2", "p3"]
    assert [p.name for p in splits["val"]] == ["p4", "p5"]

    release = tmp_path / "release"
    make_pairs(release / "train", names=["t0", "t1"])
    make_pairs(release / "val", names=["v0"])
    splits = find_change_splits(release)
    assert [p.a for p in splits["val"]] == ["val/A/v0.png"] and len(splits["train"]) == 2

    plain = make_pairs(tmp_path / "plain", names=[f"p{i}" for i in range(10)])
    first, again = find_change_splits(plain, 0.8, seed=1), find_change_splits(plain, 0.8, seed=1)
    assert first == again and len(first["train"]) == 8 and len(first["val"]) == 2
    assert not {p.name for p in first["train"]} & {p.name for p in first["val"]}
    assert first != find_change_splits(plain, 0.8, seed=2)


def test_a_pair_missing_a_file_is_named(tmp_path):
    root = make_pairs(tmp_path / "data")
    (root / "B" / "p1.png").unlink()
    with pytest.raises(DataError, match=r"pair 'p1' is incomplete: .*A/p1\.png has no counterpart in .*B/"):
        scan_change_folder(root)
    (root / "A" / "p1.png").unlink()
    with pytest.raises(DataError, match=r"label/p1\.png has no counterpart in .*A/, .*B/"):
        scan_change_folder(root)


def test_dates_of_different_sizes_are_named(tmp_path):
    root = make_pairs(tmp_path / "data")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(root / "B" / "p2.png")
    pairs = scan_change_folder(root)
    with pytest.raises(DataError, match=r"A/p2\.png is 56x40, .*B/p2\.png is 50x40"):
        check_pairs(root, pairs)
    with pytest.raises(DataError, match=r"pair 'p2' must have the same size: .*A/p2\.png is 56x40, .*B/p2\.png"):
        ChangeCrops(root, pairs, img_size=32, mean=[0, 0, 0], std=[1, 1, 1])


def test_masks_are_binary_or_refused(tmp_path):
    zero_one = tmp_path / "zero_one.png"
    Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8)).save(zero_one)
    assert read_change_label(zero_one).tolist() == [[0, 1], [1, 0]]
    jpeg = tmp_path / "cdd.jpg"
    Image.fromarray(np.kron(np.array([[0, 255], [255, 0]], np.uint8), np.ones((8, 8), np.uint8))).save(jpeg)
    decoded = read_change_label(jpeg)
    assert decoded[:8, :8].max() == 0 and decoded[:8, 8:].min() == 1
    classes = tmp_path / "classes.png"
    Image.fromarray(np.array([[0, 1], [2, 0]], np.uint8)).save(classes)
    with pytest.raises(DataError, match=r"classes\.png holds the values 0, 1, 2; expected a binary mask"):
        read_change_label(classes)


def test_anti_aliased_masks_are_binarised_at_the_threshold_given(tmp_path):
    path = tmp_path / "drawn.png"
    Image.fromarray(np.array([[0, 40, 128], [200, 255, 0]], np.uint8)).save(path)
    with pytest.raises(DataError, match=r"drawn\.png holds the values 0, 40, 128, 200, 255; .*--mask-threshold"):
        read_change_label(path)
    assert read_change_label(path, threshold=128).tolist() == [[0, 0, 1], [1, 1, 0]]
    # Exact 0/1 masks stay what they are whatever the threshold.
    Image.fromarray(np.array([[0, 1]], np.uint8)).save(tmp_path / "zero_one.png")
    assert read_change_label(tmp_path / "zero_one.png", threshold=128).tolist() == [[0, 1]]
    root = make_pairs(tmp_path / "data", names=("p0",))
    mask = np.asarray(Image.open(root / "label" / "p0.png")).copy()
    mask[0, :4] = (1, 90, 160, 254)
    Image.fromarray(mask).save(root / "label" / "p0.png")
    pairs = scan_change_folder(root)
    with pytest.raises(DataError, match="p0.png holds the values"):
        check_pairs(root, pairs)
    check_pairs(root, pairs, mask_threshold=128)
    crops = ChangeCrops(root, pairs, img_size=64, mean=[0, 0, 0], std=[1, 1, 1], flip=False, rotate90=False,
                        mask_threshold=128, change_balance=1.0)
    assert crops[0][2][0, :4].tolist() == [0, 0, 1, 1]


def test_change_balance_puts_changed_pixels_in_the_crops_it_asks_for(tmp_path):
    root = tmp_path / "data"
    for folder in ("A", "B", "label"):
        (root / folder).mkdir(parents=True)
    image = np.zeros((128, 128, 3), np.uint8)
    label = np.zeros((128, 128), np.uint8)
    label[100:108, 12:20] = 255  # 0.4 % of the pair
    for folder, array in (("A", image), ("B", image), ("label", label)):
        Image.fromarray(array).save(root / folder / "p.png")
    pairs = scan_change_folder(root)

    def with_change(change_balance: float) -> float:
        crops = ChangeCrops(root, pairs, img_size=32, mean=[0, 0, 0], std=[1, 1, 1], crops_per_pair=200,
                            change_balance=change_balance, augment_seed=1)
        return np.mean([bool((crops[i][2] == 1).any()) for i in range(len(crops))])

    assert with_change(0.0) < 0.15
    assert 0.4 < with_change(0.5) < 0.65
    assert with_change(1.0) == 1.0
    with pytest.raises(ConfigError, match="change_balance"):
        ChangeCrops(root, pairs, img_size=32, mean=[0, 0, 0], std=[1, 1, 1], change_balance=1.5)


def test_crops_flips_and_rotations_are_the_same_for_both_dates_and_the_mask(tmp_path):
    root = make_pairs(tmp_path / "data")
    pairs = scan_change_folder(root)
    crops = ChangeCrops(root, pairs, img_size=32, mean=[0, 0, 0], std=[1, 1, 1], crops_per_pair=8, augment_seed=5)
    assert len(crops) == 3 * 8
    originals = [np.asarray(Image.open(root / p.a)) for p in pairs]
    moved = 0
    for index in range(len(crops)):
        a, b, label = crops[index]
        assert a.shape == b.shape == (3, 32, 32) and label.shape == (32, 32)
        torch.testing.assert_close(b, 255 - a)
        assert torch.equal(label, (a[0] > 127).long())
        # The crop is a window of its pair's first date, flipped and turned: no pixel is resampled.
        window = a.permute(1, 2, 0).numpy().astype(np.uint8)
        source = originals[index // 8]
        views = [np.rot90(v, k) for v in (window, window[::-1], window[:, ::-1], window[::-1, ::-1]) for k in range(4)]
        found = [(v, y, x) for v in views for y in range(source.shape[0] - 31) for x in range(source.shape[1] - 31)
                 if np.array_equal(source[y:y + 32, x:x + 32], v)]
        assert found, f"crop {index} is not a window of its pair"
        moved += not np.array_equal(found[0][0], window)
    assert moved > 0  # some crops were flipped or turned
    for first, second in zip(crops[3], crops[3], strict=True):
        assert torch.equal(first, second)  # a crop is a function of (augment_seed, index)


def test_pairs_smaller_than_the_crop_are_padded_with_the_ignored_label(tmp_path):
    root = make_pairs(tmp_path / "data", names=["small"], size=(20, 24))
    crops = ChangeCrops(root, scan_change_folder(root), img_size=32, mean=[0, 0, 0], std=[1, 1, 1],
                        flip=False, rotate90=False, augment_seed=0)
    assert len(crops) == 1
    a, b, label = crops[0]
    assert (label[20:] == IGNORE_INDEX).all() and (label[:, 24:] == IGNORE_INDEX).all()
    assert set(label[:20, :24].unique().tolist()) <= {0, 1}
    assert (a[:, 20:] == 0).all() and (b[:, :, 24:] == 0).all()


def test_the_cdd_release_layout_with_out_masks_is_split_by_its_subfolders(tmp_path):
    cdd = tmp_path / "ChangeDetectionDataset" / "Real" / "subset"
    for subset, names in (("train", ["00000", "00001"]), ("val", ["00002"]), ("test", ["00003"])):
        make_pairs(cdd / subset, names=names)
        shutil.move(cdd / subset / "label", cdd / subset / "OUT")
    splits = find_change_splits(cdd)
    assert sorted(splits) == ["test", "train", "val"]
    assert [p.label for p in splits["train"]] == ["train/OUT/00000.png", "train/OUT/00001.png"]
    assert splits["test"][0].a == "test/A/00003.png" and splits["val"][0].label == "val/OUT/00002.png"
    assert check_pairs(cdd, splits["train"]) == (3, "uint8")

    (cdd / "val" / "label").mkdir()
    with pytest.raises(DataError, match=r"val has both label/ and OUT/"):
        find_change_splits(cdd)
    (cdd / "val" / "label").rmdir()
    shutil.rmtree(cdd / "val" / "OUT")
    with pytest.raises(DataError, match=r"val has no label/ folder; .* label/ or OUT/"):
        find_change_splits(cdd)


def column_coded_pair(root: Path, size=(64, 80)) -> Path:
    """One pair whose dates are the same image, the column of each pixel in its first band, with a mask that
    changes every 16 columns: a crop's scale and its alignment with the mask can be read off it."""
    cols = np.broadcast_to(np.arange(size[1]), size)
    image = np.stack([cols, cols[::-1], np.full(size, 128)], axis=-1).astype(np.uint8)
    for folder, array in (("A", image), ("B", image), ("label", np.where(cols // 16 % 2, 255, 0).astype(np.uint8))):
        (root / folder).mkdir(parents=True)
        Image.fromarray(array).save(root / folder / "pair.png")
    return root


def test_scale_jitter_and_photometric_distortion_of_change_crops(tmp_path):
    root = column_coded_pair(tmp_path / "data")
    pairs = scan_change_folder(root)

    def crops(**kwargs) -> ChangeCrops:
        return ChangeCrops(root, pairs, img_size=32, mean=[0, 0, 0], std=[1, 1, 1], crops_per_pair=12, flip=False,
                           rotate90=False, augment_seed=6, **kwargs)

    jittered, distorted = crops(scale_range=[0.5, 2.0]), crops(scale_range=[0.5, 2.0], photometric=True)
    steps, differing_dates = set(), 0
    for i in range(len(jittered)):
        a, b, label = jittered[i]
        assert torch.equal(a, b)  # one geometry for both dates
        inside = label != IGNORE_INDEX
        assert torch.equal(label[inside], (a[0].round().long() // 16 % 2)[inside])  # and for the mask
        steps.add(round(float(a[0, 0, 27] - a[0, 0, 4]) / 23, 2))
        da, db, dlabel = distorted[i]
        assert torch.equal(dlabel, label)  # the distortion moves no pixel
        differing_dates += not torch.equal(da, db)  # each date is distorted on its own
        for first, second in zip(distorted[i], crops(scale_range=[0.5, 2.0], photometric=True)[i], strict=True):
            assert torch.equal(first, second)
    assert len(steps) > 5 and min(steps) < 0.8 and max(steps) > 1.2
    assert differing_dates >= len(jittered) // 2
    with pytest.raises(ConfigError, match="scale_range"):
        crops(scale_range=[2.0, 1.0])
    with pytest.raises(ConfigError, match="photometric: .*4 band"):
        ChangeCrops(root, pairs, img_size=32, mean=[0] * 4, std=[1] * 4, photometric=True)
