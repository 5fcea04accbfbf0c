"""COCO panoptic data: segment ids in PNG, the JSON, connected components, and `lemevit prepare panoptic`."""
from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lemevit.cli import main
from lemevit.data.panoptic import (
    ANNOTATIONS_FILE,
    PNG_DIR,
    connected_components,
    decode_ids,
    encode_ids,
    read_panoptic,
    semantic_to_panoptic,
    write_segment_ids,
)
from lemevit.errors import DataError
from lemevit.labels import IGNORE_INDEX, PRESETS

POTSDAM = Path(__file__).parents[2] / "src" / "lemevit" / "demo_data" / "potsdam_seg"


def flood_fill_components(mask: np.ndarray) -> list[set[tuple[int, int]]]:
    """4-connected components by breadth-first search: the reference."""
    seen, components = np.zeros_like(mask, bool), []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        seen[start], queue, component = True, deque([start]), set()
        while queue:
            r, c = queue.popleft()
            component.add((int(r), int(c)))
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= nr < mask.shape[0] and 0 <= nc < mask.shape[1] and mask[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    queue.append((nr, nc))
        components.append(component)
    return components


@pytest.mark.parametrize("density", [0.3, 0.55, 0.7])
def test_connected_components_agree_with_a_flood_fill(density):
    mask = np.random.default_rng(int(density * 100)).random((40, 37)) < density
    labels, n = connected_components(mask)
    reference = flood_fill_components(mask)
    assert n == len(reference) and labels[~mask].max() == 0
    assert sorted(map(sorted, reference)) == sorted(sorted(map(tuple, np.argwhere(labels == k).tolist()))
                                                    for k in range(1, n + 1))


def test_a_comb_is_one_component_and_diagonal_neighbours_are_not_joined():
    # teeth joined only at the bottom row: the union-find must join runs found apart
    comb = np.zeros((6, 9), bool)
    comb[:, ::2] = True
    comb[5] = True
    assert connected_components(comb)[1] == 1
    assert connected_components(np.eye(4, dtype=bool))[1] == 4
    assert connected_components(np.zeros((3, 3), bool))[1] == 0


def test_semantic_to_panoptic_makes_objects_of_things_and_regions_of_stuff():
    road, building, car = 0, 1, 2
    classes = np.array([[building, building, road, building],
                        [building, road, road, building],
                        [car, road, IGNORE_INDEX, road],
                        [road, road, road, car]], np.uint8)
    ids, segments = semantic_to_panoptic(classes, [building, car], min_area=2)
    info = {s["id"]: s for s in segments}
    assert sorted(s["category_id"] for s in segments) == [1, 2, 2]  # the road and two buildings; cars under 2 px
    assert ids[2, 2] == 0 and ids[2, 0] == 0 and ids[3, 3] == 0
    left, right = info[ids[0, 0]], info[ids[0, 3]]
    assert left["area"] == 3 and left["bbox"] == [0, 0, 2, 2]
    assert right["area"] == 2 and right["bbox"] == [3, 0, 1, 2]
    assert info[ids[1, 1]]["area"] == 8 and info[ids[1, 1]]["category_id"] == 1


def test_segment_ids_round_trip_through_png_colours(tmp_path):
    ids = np.array([[0, 1, 255], [256, 65793, 256**3 - 1]])
    assert encode_ids(ids)[1, 1].tolist() == [1, 1, 1]
    write_segment_ids(tmp_path / "ids.png", ids)
    assert (decode_ids(np.asarray(Image.open(tmp_path / "ids.png"))) == ids).all()


def test_prepare_panoptic_from_the_potsdam_tile(tmp_path, capsys):
    out = tmp_path / "pan"
    assert main(["prepare", "panoptic", "--data", str(POTSDAM), "--preset", "potsdam", "--output", str(out),
                 "--things", "building", "car", "--min-area", "16"]) == 0
    assert "segments:" in capsys.readouterr().out
    dataset = read_panoptic(out / ANNOTATIONS_FILE)
    assert dataset.thing_classes == ["building", "car"] and dataset.class_names == list(PRESETS["potsdam"].class_names)
    (image,) = dataset.images
    ids = dataset.segment_ids(image)
    mask = np.asarray(Image.open(POTSDAM / "ann_dir" / "2_10_0_0_512_512.png"))
    classes = PRESETS["potsdam"].decode(mask[..., None], "mask")
    # every labelled pixel is in a segment of its class, except thing fragments under 16 px; void is unlabelled
    for segment_id, index in image.segments.items():
        assert (classes[ids == segment_id] == index).all()
    assert (ids[classes == IGNORE_INDEX] == 0).all()
    lost = (ids == 0) & (classes != IGNORE_INDEX)
    assert lost.sum() < 16 * 20 and np.isin(classes[lost], [1, 4]).all()
    cars = [s for s, c in image.segments.items() if dataset.class_names[c] == "car"]
    assert len(cars) >= 2
    assert (dataset.image_dir / image.file_name).read_bytes() == (POTSDAM / "img_dir" / image.file_name).read_bytes()
    # an output that is not empty is refused, as are unknown classes
    assert main(["prepare", "panoptic", "--data", str(POTSDAM), "--preset", "potsdam", "--output", str(out),
                 "--things", "car"]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["prepare", "panoptic", "--data", str(POTSDAM), "--preset", "potsdam", "--output",
                 str(tmp_path / "other"), "--things", "ship"]) == 2
    assert "--things: unknown classes ['ship']" in capsys.readouterr().err


def test_subsets_keep_their_folders(tmp_path):
    data = tmp_path / "sem"
    for subset in ("train", "val"):
        (data / "img_dir" / subset).mkdir(parents=True)
        (data / "ann_dir" / subset).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "img_dir" / subset / "a.jpg")
        Image.fromarray(np.eye(8, dtype=np.uint8)).save(data / "ann_dir" / subset / "a.png")
    assert main(["prepare", "panoptic", "--data", str(data), "--class-names", "field", "tree", "--output",
                 str(tmp_path / "pan"), "--things", "tree"]) == 0
    dataset = read_panoptic(tmp_path / "pan" / ANNOTATIONS_FILE)
    assert [(i.file_name, i.png_name) for i in dataset.images] == [("train/a.jpg", "train/a.png"),
                                                                    ("val/a.jpg", "val/a.png")]
    assert all(len(i.segments) == 9 for i in dataset.images)  # the field and 8 diagonal trees


def _write_set(root: Path, segments: list[dict], ids: np.ndarray) -> Path:
    write_segment_ids(root / PNG_DIR / "a.png", ids)
    doc = {"categories": [{"id": 7, "name": "road", "isthing": 0}, {"id": 9, "name": "car", "isthing": 1}],
           "images": [{"id": 1, "file_name": "a.png"}],
           "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": segments}]}
    (root / ANNOTATIONS_FILE).write_text(json.dumps(doc))
    return root / ANNOTATIONS_FILE


def test_bad_annotations_are_refused_naming_the_file(tmp_path):
    ids = np.array([[1, 2], [2, 0]])
    path = _write_set(tmp_path, [{"id": 1, "category_id": 7}, {"id": 2, "category_id": 9, "iscrowd": 1}], ids)
    dataset = read_panoptic(path)
    assert dataset.class_names == ["road", "car"] and dataset.images[0].segments == {1: 0, 2: 1}
    assert dataset.images[0].crowd == {2}
    assert (dataset.segment_ids(dataset.images[0]) == ids).all()

    path = _write_set(tmp_path, [{"id": 1, "category_id": 7}], ids)
    with pytest.raises(DataError, match=r"panoptic PNG .*a\.png: segment id\(s\) \[2\] are not among"):
        read_panoptic(path).segment_ids(read_panoptic(path).images[0])
    path = _write_set(tmp_path, [{"id": 1, "category_id": 8}], ids)
    with pytest.raises(DataError, match=rf"{path}: annotation of image 1: segment 1 has category 8, which is not"):
        read_panoptic(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match=f"cannot read panoptic annotations {path}"):
        read_panoptic(path)


def _tiny_set(root: Path) -> Path:
    """A 12x10 image whose first band is 10 x the segment id, with a crowd (id 3) and void."""
    ids = np.zeros((12, 10), np.int64)
    ids[:, :5], ids[:6, 5:], ids[6:11, 5:] = 1, 2, 3
    (root / "img_dir").mkdir(parents=True)
    Image.fromarray(np.stack([ids * 10, ids, ids], -1).astype(np.uint8)).save(root / "img_dir" / "a.png")
    return _write_set(root, [{"id": 1, "category_id": 7}, {"id": 2, "category_id": 9},
                             {"id": 3, "category_id": 9, "iscrowd": 1}], ids)


def test_crops_carry_ids_and_classes_through_their_augmentation(tmp_path):
    from lemevit.data.panoptic import PanopticCrops, PanopticTiles, check_panoptic

    dataset = read_panoptic(_tiny_set(tmp_path))
    assert check_panoptic(dataset) == {"road": 1, "car": 2}
    crops = PanopticCrops(dataset, dataset.images, 8, mean=[0, 0, 0], std=[1, 1, 1], crops_per_image=6,
                          augment_seed=3)
    assert len(crops) == 6
    for i in range(len(crops)):
        x, ids, classes = crops[i]
        assert x.shape == (3, 8, 8) and ids.shape == classes.shape == (8, 8)
        assert (x[0] == ids.abs() * 10).all()  # the image turned and flipped with its labels
        assert (classes[ids == 1] == 0).all() and (classes[ids.abs() >= 2] == 1).all()
        assert (classes[ids == 0] == IGNORE_INDEX).all() and (ids != 3).all()  # the crowd is negated
        assert all((a == b).all() for a, b in zip(crops[i], crops[i], strict=True))  # seeded
    big = PanopticCrops(dataset, dataset.images, 16, mean=[0, 0, 0], std=[1, 1, 1])
    x, ids, classes = big[0]
    assert x.shape == (3, 16, 16) and int((classes == IGNORE_INDEX).sum()) == 16 * 16 - 12 * 10 + 5 * 1
    x, ids, classes = PanopticTiles(dataset, dataset.images, [0, 0, 0], [1, 1, 1])[0]
    assert ids.shape == (12, 10) and sorted(torch.unique(ids).tolist()) == [-3, 0, 1, 2]


def test_scale_jitter_resizes_the_labels_with_the_image(tmp_path):
    from lemevit.data.panoptic import PanopticCrops

    dataset = read_panoptic(_tiny_set(tmp_path))
    crops = PanopticCrops(dataset, dataset.images, 8, mean=[0, 0, 0], std=[1, 1, 1], crops_per_image=4,
                          flip=False, rotate90=False, augment_seed=1, scale_range=(2.0, 2.0))
    for i in range(len(crops)):
        x, ids, classes = crops[i]
        assert x.shape == (3, 8, 8) and ids.shape == classes.shape == (8, 8)
        # a 4x4 region enlarged twice: each label a 2x2 block, the image's band of ids under it
        assert (ids == ids[::2, ::2].repeat_interleave(2, 0).repeat_interleave(2, 1)).all()
        assert (classes[ids == 1] == 0).all() and (classes[ids.abs() >= 2] == 1).all()
        # where a label's 3x3 neighbourhood is one segment, the bilinear image is exactly that segment's value
        padded = torch.nn.functional.pad(ids[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
        windows = padded.unfold(0, 3, 1).unfold(1, 3, 1)
        inside = (windows == ids[..., None, None]).flatten(-2).all(-1)
        assert inside.sum() >= 16 and torch.allclose(x[0][inside], 10 * ids.abs()[inside].float())


def test_panoptic_runs_take_the_shared_crop_training_options():
    from lemevit.tasks.dense import CropTrainingConfig
    from lemevit.tasks.panoptic import PanopticConfig

    assert issubclass(PanopticConfig, CropTrainingConfig)
    cfg = PanopticConfig(data="d", output="o", model="lemevit_tiny", scale_range=[0.5, 2.0], photometric=True)
    assert cfg.scale_range == [0.5, 2.0] and cfg.photometric
