"""Recipes: each one resolves, trains a few steps on fixture data of its layout, and holds its sources' values."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sample_data import make_scenes, make_tiles

from lemevit.cli import main
from lemevit.data.panoptic import prepare_panoptic
from lemevit.recipes import get_recipe, recipe_names

# Written from the sources (the papers and the published configs and scripts named in each recipe), not from the
# recipes: epochs (total), cooldown, lr and the batch it is given for, weight decay, warm-up epochs, drop path, EMA
# decay, gradient clip, and the augmentations.
_TIMM = dict(interpolation="bicubic", randaugment="rand-m9-mstd0.5-inc1", color_jitter=0.4, random_erasing=0.25,
             label_smoothing=0.1, crop_scale=[0.08, 1.0], img_size=224)
_LEMEVIT = dict(_TIMM, lr=5e-4, lr_batch=512, weight_decay=0.05, drop_path_rate=0.15, ema_decay=0.996, mixup=0.8,
                cutmix=1.0, repeated_augmentation=3, gradient_clip=None)
SOURCE_VALUES = {
    **{f"lemevit_{s}_imagenet": dict(_LEMEVIT, model=f"lemevit_{s}", epochs=300, cooldown_epochs=20, warmup_epochs=5,
                                     warmup_lr_factor=1e-6 / 5e-4, min_lr_factor=5e-6 / 5e-4)
       for s in ("tiny", "small", "base")},
    **{f"lemevit_{s}_millionaid": dict(_LEMEVIT, model=f"lemevit_{s}", epochs=100, cooldown_epochs=0, warmup_epochs=0,
                                       min_lr_factor=1e-5 / 5e-4)
       for s in ("tiny", "small", "base")},
    "lvt_imagenet": dict(_TIMM, model="lvt", epochs=310, cooldown_epochs=10, lr=1.6e-3, lr_batch=8 * 128,
                         weight_decay=0.05, warmup_epochs=20, warmup_lr_factor=1e-6 / 1.6e-3,
                         min_lr_factor=1e-5 / 1.6e-3, drop_path_rate=0.1, mixup=0.0, cutmix=0.0, ema_decay=None,
                         gradient_clip=None),
    **{f"vvt_{s}_imagenet": dict(_TIMM, model=f"vvt_{s}", epochs=300, lr=5e-4, lr_batch=512, weight_decay=0.05,
                                 warmup_epochs=5, warmup_lr_factor=1e-6 / 5e-4, min_lr_factor=1e-5 / 5e-4,
                                 drop_path_rate=dp, gradient_clip=clip, mixup=0.8, cutmix=1.0,
                                 repeated_augmentation=3)
       for s, dp, clip in (("tiny", 0.1, None), ("small", 0.3, 1.0), ("medium", 0.3, 1.0), ("large", 0.3, 1.0))},
    # The dense tasks: iterations or epochs, the rate and its global batch, the schedule, the crops and augmentations.
    **{f"oriented_rcnn_lemevit_{s}_dota": dict(model=f"lemevit_{s}", trainval=True, epochs=12, lr=1e-3, lr_batch=16,
                                               weight_decay=0.05, schedule="multistep", milestones=[8, 11],
                                               decay_rate=0.1, warmup_iterations=500, warmup_lr_factor=0.001,
                                               gradient_clip=35.0, img_size=1024, overlap=200, nms_iou=0.1,
                                               rpn_proposals=2000, drop_path_rate=0.0)
       for s in ("tiny", "small", "base")},
    **{f"upernet_lemevit_{s}_potsdam": dict(model=f"lemevit_{s}", head="upernet", preset="potsdam5", iterations=80000,
                                            lr=4e-4, lr_batch=40, weight_decay=0.05, schedule="poly", poly_power=1.0,
                                            warmup_iterations=1500, warmup_lr_factor=1e-6, min_lr_factor=0.0,
                                            img_size=512, scale_range=[0.5, 2.0], cat_max_ratio=0.75,
                                            photometric=True, aux_weight=0.4, window=512, stride=384, sync_bn=True)
       for s in ("tiny", "small", "base")},
    **{f"bit_lemevit_{s}_cdd": dict(model=f"lemevit_{s}", head="bit", epochs=200, lr=2.4e-4, lr_batch=16,
                                    batch_size=16, weight_decay=0.01, schedule="poly", poly_power=1.0,
                                    warmup_epochs=0, min_lr_factor=0.0, img_size=256, flip=True, rotate90=True)
       for s in ("tiny", "small", "base")},
    "segformer_lvt_ade20k": dict(model="lvt_backbone", head="segformer", preset="ade20k", iterations=160000, lr=6e-5,
                                 lr_batch=16, weight_decay=0.01, lr_multipliers={"decoder": 10.0, "classifier": 10.0},
                                 schedule="poly", poly_power=1.0, warmup_iterations=1500, warmup_lr_factor=1e-6,
                                 min_lr_factor=0.0, img_size=512, scale_range=[0.5, 2.0], cat_max_ratio=0.75,
                                 photometric=True, decoder_channels=256),
    "panoptic_fpn_lvt_coco": dict(model="lvt_backbone", epochs=36, lr=3e-4, lr_batch=64, weight_decay=1e-4,
                                  schedule="multistep", milestones=[24, 33], decay_rate=0.1, warmup_iterations=500,
                                  warmup_lr_factor=0.001, gradient_clip=None, img_size=800, flip=True, rotate90=False,
                                  fpn_channels=96, box_channels=160, box_layers=2, mask_channels=96, mask_layers=4,
                                  semantic_channels=48, semantic_groups=12, rpn_proposals=1000, score_threshold=0.6,
                                  stuff_area=4096),
}


def test_every_published_experiment_has_a_recipe():
    assert set(SOURCE_VALUES) <= set(recipe_names())


@pytest.mark.parametrize("name", sorted(SOURCE_VALUES))
def test_the_printed_configuration_holds_the_sources_values(name, capsys):
    assert main(["train", "--recipe", name, "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    for key, value in SOURCE_VALUES[name].items():
        assert printed[key] == (pytest.approx(value) if isinstance(value, float) else value), key
    recipe = get_recipe(name)
    assert recipe.sources and recipe.result and recipe.gpu_hours > 0


@pytest.mark.parametrize(("name", "devices", "rates"), [
    # DOTA: 1e-3 at 16 images; warm-up from 0.001 of it; two drops of x0.1.
    ("oriented_rcnn_lemevit_tiny_dota", 2, dict(global_batch=16, peak_lr=1e-3, warmup_start_lr=1e-6, min_lr=1e-5)),
    # Potsdam on one device: a quarter of 4e-4 at 40 crops, poly to 0.
    ("upernet_lemevit_tiny_potsdam", 1, dict(global_batch=10, peak_lr=1e-4, warmup_start_lr=1e-10, min_lr=0.0)),
    # LeMeViT on ImageNet at 8 x 256: 5e-4 per 512 images, warm-up from 1e-6 and minimum 5e-6 per 512.
    ("lemevit_tiny_imagenet", 8, dict(global_batch=2048, peak_lr=2e-3, warmup_start_lr=4e-6, min_lr=2e-5)),
])
def test_print_config_resolves_the_rates_of_the_global_batch(name, devices, rates, capsys):
    assert main(["train", "--recipe", name, "--print-config", "--devices", str(devices)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert {key: printed[key] for key in rates} == pytest.approx(rates)


def _dota(root: Path) -> None:
    """DOTA as released: train/ and val/ labelled, test/ images only."""
    rng = np.random.default_rng(0)
    for subset in ("train", "val", "test"):
        (root / subset / "images").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)).save(root / subset / "images" / "P1.png")
        if subset != "test":
            (root / subset / "labelTxt").mkdir()
            (root / subset / "labelTxt" / "P1.txt").write_text("10 10 40 10 40 30 10 30 plane 0\n")


def _potsdam5(root: Path) -> None:
    """ISPRS Potsdam cut into train/ and val/, masks 0..4 with clutter 5 (the 5-class protocol)."""
    tiles = make_tiles(root / "tiles")
    for subset, index in (("train", 0), ("val", 1)):
        for folder in ("img_dir", "ann_dir"):
            (root / folder / subset).mkdir(parents=True)
        shutil.copy(tiles / "img_dir" / f"tile{index}.png", root / "img_dir" / subset / "t.png")
        stored = np.asarray(Image.open(tiles / "ann_dir" / f"tile{index}.png")).astype(np.int16)
        Image.fromarray(np.where(stored == 0, 5, stored - 1).astype(np.uint8)).save(root / "ann_dir" / subset / "t.png")


def _ade20k(root: Path) -> None:
    rng = np.random.default_rng(0)
    for subset in ("training", "validation"):
        (root / "images" / subset).mkdir(parents=True)
        (root / "annotations" / subset).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "images" / subset / "a.jpg")
        Image.fromarray(rng.integers(0, 4, (48, 64), dtype=np.uint8)).save(root / "annotations" / subset / "a.png")


def _cdd(root: Path) -> None:
    rng = np.random.default_rng(0)
    for subset in ("train", "val", "test"):
        for folder in ("A", "B", "OUT"):
            (root / subset / folder).mkdir(parents=True)
        for name in ("00001", "00002"):
            for folder in ("A", "B"):
                image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                Image.fromarray(image).save(root / subset / folder / f"{name}.jpg")
            change = np.zeros((64, 64), np.uint8)
            change[16:40, 8:30] = 255
            Image.fromarray(change).save(root / subset / "OUT" / f"{name}.jpg")


def _coco_panoptic(root: Path) -> None:
    """A panoptic data set split in train/ and val/ folders, derived from two Potsdam crops."""
    tiles = make_tiles(root.parent / "tiles")
    semantic = root.parent / "semantic"
    for subset, index in (("train", 0), ("val", 1)):
        for folder in ("img_dir", "ann_dir"):
            (semantic / folder / subset).mkdir(parents=True)
            shutil.copy(tiles / folder / f"tile{index}.png", semantic / folder / subset / "t.png")
    shutil.copy(tiles / "classes.yaml", semantic)
    prepare_panoptic(semantic, root, ["building", "car"])


def _layout(tmp_path, name: str) -> list[str]:
    """Fixture data in the layout the recipe expects, and the options that point it there."""
    dense = {"dota": _dota, "potsdam": _potsdam5, "ade20k": _ade20k, "cdd": _cdd, "coco": _coco_panoptic}
    for dataset, make in dense.items():
        if name.endswith(f"_{dataset}"):
            make(tmp_path / "data")
            return ["--data", str(tmp_path / "data")]
    if "imagenet" in name:
        make_scenes(tmp_path / "data" / "train", per_class=3)
        make_scenes(tmp_path / "data" / "val", per_class=1)
        return ["--data", str(tmp_path / "data")]
    # MillionAID's RSP release: every image in all_img/, the classes named in the label lists.
    data = make_scenes(tmp_path / "scenes", per_class=3)
    release = tmp_path / "data"
    (release / "all_img").mkdir(parents=True)
    lines = []
    for index, folder in enumerate(sorted(p for p in data.iterdir() if p.is_dir())):
        for image in sorted(folder.glob("*.png")):
            image.rename(release / "all_img" / image.name)
            lines.append(f"{image.name} {folder.name} {index}")
    (release / "train_labels.txt").write_text("\n".join(lines[1::3] + lines[2::3]) + "\n")
    (release / "valid_labels.txt").write_text("\n".join(lines[::3]) + "\n")
    return ["--data", str(release)]


# Crops, windows and overlaps of the fixtures' size.
_FIXTURE_SIZES = {"classification": ["--img-size", "32"], "segmentation": ["--img-size", "32", "--window", "32",
                                                                          "--stride", "24"],
                  "change": ["--img-size", "32", "--window", "32", "--stride", "24"],
                  "detection": ["--img-size", "64", "--overlap", "16", "--rpn-proposals", "100",
                                "--test-proposals", "50"],
                  "panoptic": ["--img-size", "64", "--window", "64", "--rpn-proposals", "100", "--test-proposals",
                               "50"]}


@pytest.mark.parametrize("name", recipe_names())
def test_each_recipe_trains_a_few_steps_on_its_layout(tmp_path, name):
    run = tmp_path / "run"
    # The recipe's own model and settings, at a fixture's size and budget.
    assert main(["train", "--recipe", name, *_layout(tmp_path, name), "--output", str(run),
                 *_FIXTURE_SIZES[get_recipe(name).task], "--batch-size", "2", "--iterations", "2", "--num-workers", "0",
                 "--precision", "fp32"]) == 0
    assert (run / "last.ckpt").is_file() and (run / "best.ckpt").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"] == get_recipe(name).config["model"] and saved["iterations"] == 2
    # The largest recipes write checkpoints of about 1 GB each: 22 runs kept by pytest would fill a CI disk.
    shutil.rmtree(run)


def test_unknown_recipe_lists_the_recipes(capsys):
    assert main(["train", "--recipe", "lemevit_tiny_mnist", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "--recipe: no recipe 'lemevit_tiny_mnist'" in err and "lemevit_tiny_imagenet" in err


def test_recipes_lists_name_task_result_and_compute(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("lemevit_tiny_imagenet"))
    assert "classification" in row and "top1 79.07" in row and "ImageNet-1k" in row
