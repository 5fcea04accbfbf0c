"""DOTA / DIOR-R parsing, windows cut and merged back, and box-correct flips and quarter turns."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from lemevit.data.detection import (
    DOTA_V1_CLASSES,
    ImageLabels,
    LabelError,
    PatchDataset,
    flip_boxes,
    parse_dota_txt,
    patch_objects,
    rot90_boxes,
    scan_detection_folder,
)
from lemevit.errors import DataError
from lemevit.inference.detection import detection_windows, merge_window_detections
from lemevit.ops import box_to_quad, rotated_box_iou


def test_scan_dota_and_dior_r_samples():
    names, images = scan_detection_folder(FIXTURES / "dota_v1_samples")
    assert names == list(DOTA_V1_CLASSES)
    by_stem = {i.image.stem: i for i in images}
    assert sorted(by_stem) == ["P0075", "P1888"]
    p0075 = by_stem["P0075"]
    assert [names[c] for c in p0075.labels] == ["swimming-pool", "roundabout"]
    np.testing.assert_array_equal(p0075.quads[1], [[119, 270], [340, 270], [340, 526], [119, 526]])
    assert len(by_stem["P1888"].quads) == 64
    names, images = scan_detection_folder(FIXTURES / "dior_r_sample")
    assert len(images) == 1 and names[images[0].labels[0]] == "golffield"
    np.testing.assert_array_equal(images[0].quads[0], [[133, 237], [684, 237], [684, 672], [133, 672]])


@pytest.mark.parametrize(("line", "message"), [
    ("1 2 3 4 5 6 7 plane", "expected"),
    ("1 2 3 4 5 6 7 x plane 0", "must be numbers"),
    ("1 2 3 4 5 6 7 8 aeroplane 0", "unknown category 'aeroplane'"),
    ("1 2 3 4 5 6 7 8 plane 2", "difficult flag"),
    ("nan 2 3 4 5 6 7 8 plane 0", "finite numbers"),
])
def test_malformed_dota_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "P9.txt"
    path.write_text(f"imagesource:GoogleEarth\ngsd:0.1\n0 0 4 0 4 4 0 4 ship 1\n{line}\n")
    with pytest.raises(LabelError, match=rf"P9.txt:4: .*{message}"):
        parse_dota_txt(path, DOTA_V1_CLASSES)


def test_split_and_merge_recover_a_box_straddling_a_patch_border():
    # Windows of 100 px with overlap 40 start at 0 and 60 along x; the object spans x 50..90.
    quad = np.array([[[50, 20], [90, 20], [90, 40], [50, 40]]], np.float32)
    labels = ImageLabels(Path("scene.png"), quad, np.array([3]), np.array([False]))
    windows = detection_windows(160, 100, size=100, overlap=40)
    assert windows == [(0, 0), (60, 0)]
    left, _, _ = patch_objects(labels, (0, 0), 100)
    right, right_labels, _ = patch_objects(labels, (60, 0), 100)
    np.testing.assert_allclose(left, [[70, 30, 40, 20, 0]], atol=1e-5)
    # 75 % of the object lies in the right window: kept, cut to the part inside (x 60..90 -> 0..30).
    np.testing.assert_allclose(right, [[15, 30, 30, 20, 0]], atol=1e-5)
    assert right_labels.tolist() == [3]
    assert len(patch_objects(labels, (60, 0), 100, keep_ratio=0.8)[0]) == 0
    # The detector sees both; merging puts both into full-image coordinates and keeps the better one.
    boxes, scores, classes = merge_window_detections(
        [torch.tensor(left), torch.tensor(right)], [torch.tensor([0.9]), torch.tensor([0.6])],
        [torch.tensor([3]), torch.tensor([3])], windows)
    assert classes.tolist() == [3] and scores.tolist() == [pytest.approx(0.9)]
    assert rotated_box_iou(boxes, torch.tensor([[70.0, 30, 40, 20, 0]]))[0, 0] > 0.999


def hot_pixel_image(x: int, y: int, size: tuple[int, int]) -> torch.Tensor:
    image = torch.zeros(1, *size)
    image[0, y, x] = 1
    return image


@pytest.mark.parametrize("transform", ["hflip", "vflip", "rot1", "rot2", "rot3"])
def test_flips_and_quarter_turns_move_boxes_with_the_pixels(transform):
    size = (40, 60)  # height, width
    box = torch.tensor([[20.5, 10.5, 12.0, 4.0, 0.4]])
    corner = box_to_quad(box)[0, 0]
    image = hot_pixel_image(int(corner[0]), int(corner[1]), size)  # marks the first corner's pixel
    if transform == "hflip":
        image, moved = image.flip(-1), flip_boxes(box, size, horizontal=True)
    elif transform == "vflip":
        image, moved = image.flip(-2), flip_boxes(box, size, horizontal=False)
    else:
        k = int(transform[-1])
        image, moved = torch.rot90(image, k, dims=(-2, -1)), rot90_boxes(box, size, k)
    y, x = (image[0] == 1).nonzero()[0].tolist()
    # One corner of the moved box lies in the marked pixel; the box keeps its size and le90 form.
    corners = box_to_quad(moved)[0]
    distance = (corners - torch.tensor([x + 0.5, y + 0.5])).norm(dim=1).min()
    assert distance < 1.0
    assert moved[0, 2:4].tolist() == pytest.approx([12.0, 4.0])
    assert -math.pi / 2 <= moved[0, 4] < math.pi / 2


def test_patch_dataset_yields_normalised_windows_with_boxes():
    _, images = scan_detection_folder(FIXTURES / "dota_v1_samples")
    dataset = PatchDataset(images, size=512, overlap=100, augment=True)
    image, target = dataset[0]
    assert image.shape == (3, 512, 512)
    assert target["boxes"].shape[1] == 5 and len(target["boxes"]) == len(target["labels"]) > 0
    assert len(dataset) == sum(1 for i, _ in dataset.items)


def test_patch_augmentation_is_a_function_of_the_seed_and_the_item():
    _, images = scan_detection_folder(FIXTURES / "dota_v1_samples")
    dataset = PatchDataset(images, size=512, overlap=100, augment=True, augment_seed=7)
    first, again = dataset[3], dataset[3]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    dataset.augment_seed = 8
    draws = {tuple(dataset[3][1]["boxes"][0].tolist()) for dataset.augment_seed in range(8)}
    assert len(draws) > 1  # other seeds, other flips and turns


def test_a_data_set_without_objects_is_refused_naming_the_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labelTxt").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "images" / "A.png")
    (tmp_path / "labelTxt" / "A.txt").write_text("imagesource:x\ngsd:1\n")
    with pytest.raises(DataError, match=rf"{tmp_path}: the label files of its 1 image\(s\) hold no objects"):
        scan_detection_folder(tmp_path)
