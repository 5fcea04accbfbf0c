"""Scene classification data: class folders, split files, image checks, the scene dataset; the data module every
task trains with."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED
from PIL import Image

from lemevit.data import (
    Sample,
    SceneDataset,
    SeededDataModule,
    check_images,
    eval_transform,
    is_label_list,
    read_label_lists,
    read_split_file,
    scan_class_folders,
    train_transform,
)
from lemevit.data.splits import hashed_split
from lemevit.errors import ConfigError, DataError
from lemevit.io.images import ImageReadError, read_image
from lemevit.tasks.classification import ClassificationConfig, ClassificationTask

# The sample data sets live next to the repository in ../shared (as the parity fixtures do, see conftest).
AID = SHARED / "data" / "aid_150px"


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
    with pytest.raises(DataError, match="missing does not exist"):
        scan_class_folders(tmp_path / "missing")
    with pytest.raises(DataError, match="no class folders"):
        scan_class_folders(tmp_path)
    _make_dataset(tmp_path, {"Beach": 2})
    (tmp_path / "Desert").mkdir()
    (tmp_path / "Desert" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=r"empty class folder .*Desert"):
        scan_class_folders(tmp_path)


def test_read_split_file(tmp_path):
    _make_dataset(tmp_path / "data", {"Airport": 2, "Beach": 2})
    classes = ["Airport", "Beach"]
    split = tmp_path / "val.txt"
    split.write_text("# validation images\n\nBeach/beach_1.png\n  Airport/airport_0.png  \n")
    assert read_split_file(split, tmp_path / "data", classes) == [Sample("Beach/beach_1.png", 1),
                                                                  Sample("Airport/airport_0.png", 0)]

    split.write_text("Beach/beach_1.png\n# comment\nForest/forest_0.png\n")
    with pytest.raises(DataError, match=r"val\.txt, line 3: 'Forest/forest_0\.png': unknown class"):
        read_split_file(split, tmp_path / "data", classes)
    split.write_text("\nBeach/beach_9.png\n")
    with pytest.raises(DataError, match=r"val\.txt, line 2: 'Beach/beach_9\.png': file .* not found"):
        read_split_file(split, tmp_path / "data", classes)
    split.write_text("Beach/beach_1.png\nBeach/beach_1.png\n")
    with pytest.raises(DataError, match=r"line 2.*listed twice \(first on line 1\)"):
        read_split_file(split, tmp_path / "data", classes)
    with pytest.raises(DataError, match="nope.txt"):
        read_split_file(tmp_path / "nope.txt", tmp_path / "data", classes)


def test_check_images_band_count_and_corrupt_files(tmp_path):
    _make_dataset(tmp_path, {"Airport": 3, "Beach": 2})
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "Beach" / "gray.png")
    classes, samples = scan_class_folders(tmp_path)
    assert check_images(tmp_path, [s for s in samples if "gray" not in s.path], skip_bad=False)[1] == []

    with pytest.raises(DataError, match=r"Beach/gray\.png has 1 band\(s\), expected 3"):
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


def test_the_data_module_draws_epoch_seeded_batches_and_evaluates_in_order(tmp_path):
    _make_dataset(tmp_path, {"Airport": 6, "Beach": 5, "Forest": 5}, size=20)
    classes, samples = scan_class_folders(tmp_path)
    splits = hashed_split(samples, 0.75, 0, key=lambda s: s.path, group=lambda s: s.label)
    augment = train_transform(16, [128.0] * 3, [64.0] * 3, randaugment="rand-m5-n1")
    dm = SeededDataModule(SceneDataset(tmp_path, splits["train"], augment),
                          {"val": SceneDataset(tmp_path, splits["val"], eval_transform(16, [128.0] * 3, [64.0] * 3))},
                          batch_size=4, num_workers=0, seed=0)
    assert len(splits["train"]) == 12 and len(splits["val"]) == 4
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    for images, labels in batches:
        assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
        assert labels.dtype == torch.int64
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == sorted(s.label for s in splits["train"])
    again = list(dm.train_dataloader())  # the same epoch: the same order and the same augmentations
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    index, images, labels = next(iter(dm.val_dataloader()))
    assert images.shape == (4, 3, 16, 16) and index.tolist() == [0, 1, 2, 3]
    assert labels.tolist() == [s.label for s in splits["val"]]
    assert [b[2].tolist() for b in dm.test_dataloader()] == [labels.tolist()]  # no "test": falls back to val
    with pytest.raises(ConfigError, match="batch_size: must be a positive integer"):
        SeededDataModule(dm.train_set, {}, batch_size=0, num_workers=0, seed=0)


def test_aid_sample():
    if not AID.is_dir():
        pytest.skip(f"sample data {AID} not present (it lives in ../shared, next to the clone)")
    classes, samples = scan_class_folders(AID)
    assert len(classes) == 30 and "Airport" in classes
    assert len(samples) == 1500
    splits = hashed_split(samples, 0.8, 0, key=lambda s: s.path, group=lambda s: s.label)
    assert len(splits["train"]) == 1200 and len(splits["val"]) == 300
    picked = [samples[0], samples[777], samples[-1]]
    for s in picked:
        image = read_image(AID / s.path)
        assert image.shape == (150, 150, 3) and image.dtype == np.uint8
    good, bad = check_images(AID, picked, skip_bad=False)
    assert bad == [] and good == picked


def _rsp_release(root: Path, lines: dict[str, list[str]]) -> None:
    """An RSP-style release: every image in all_img/, label lists beside it."""
    rng = np.random.default_rng(0)
    (root / "all_img").mkdir(parents=True)
    for file, entries in lines.items():
        for entry in entries:
            if not entry.startswith("#"):
                Image.fromarray(_rgb(rng)).save(root / "all_img" / entry.split()[0])
        (root / file).write_text("\n".join(entries) + "\n")


def test_rsp_label_lists_name_the_classes_by_index(tmp_path):
    _rsp_release(tmp_path, {"train_labels.txt": ["# MillionAID", "P01.jpg dry_field 1", "P02.jpg apron 0",
                                                 "P03.jpg apron 0"],
                            "valid_labels.txt": ["P04.jpg dry_field 1"]})
    assert is_label_list(tmp_path / "train_labels.txt") and not is_label_list(_ours(tmp_path))
    names, subsets = read_label_lists({"train": tmp_path / "train_labels.txt", "val": tmp_path / "valid_labels.txt"},
                                      tmp_path)
    # By index, not alphabetically, as the published models' heads were trained.
    assert names == ["apron", "dry_field"]
    assert subsets["train"] == [Sample("all_img/P01.jpg", 1), Sample("all_img/P02.jpg", 0),
                                Sample("all_img/P03.jpg", 0)]
    assert subsets["val"] == [Sample("all_img/P04.jpg", 1)]

    # A root holding the two lists is an RSP release: `lemevit train --data ROOT` finds them.
    cfg = ClassificationConfig(data=str(tmp_path), output=str(tmp_path / "run"))
    split, bad = ClassificationTask.prepare(cfg)
    assert split.meta["class_names"] == ["apron", "dry_field"] and not bad
    assert split.subsets["val"] == [Sample("all_img/P04.jpg", 1)]


def _ours(root: Path) -> Path:
    path = root / "ours.txt"
    path.write_text("apron/P02.jpg\n")
    return path


@pytest.mark.parametrize(("train", "message"), [
    (["P01.jpg apron 0", "P02.jpg apron 1"], "class index 1 is 'dry_field'"),
    (["P01.jpg apron 0", "P02.jpg dry_field 0"], "class index 0 is 'apron'"),
    (["P01.jpg apron 0", "P02.jpg beach 3"], "none is [2]"),
    (["P01.jpg apron"], "expected '<image> <class name> <class index>'"),
    (["P01.jpg apron 0", "P01.jpg apron 0"], "listed twice"),
])
def test_rsp_label_list_errors_name_the_file_and_line(tmp_path, train, message):
    _rsp_release(tmp_path, {"valid_labels.txt": ["P09.jpg dry_field 1"], "train_labels.txt": train})
    with pytest.raises(DataError, match=r"train_labels\.txt") as info:
        read_label_lists({"val": tmp_path / "valid_labels.txt", "train": tmp_path / "train_labels.txt"}, tmp_path)
    assert message in str(info.value)
