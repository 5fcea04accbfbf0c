"""Small data sets the tests of several tasks train on, made from shipped samples or drawn."""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("Farmland", "Forest", "Port")


def make_scenes(root: Path, per_class: int = 6, size: int = 40) -> Path:
    """Tiny class-per-folder set whose classes differ in colour, so a model can learn them."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            image[..., c] += 150
            Image.fromarray(image).save(root / name / f"{name.lower()}_{i}.png")
    return root


POTSDAM = Path(str(files("lemevit") / "demo_data" / "potsdam_seg"))
NAMES = ("impervious_surface", "building", "low_vegetation", "tree", "car", "clutter")


def make_tiles(root: Path, size: int = 64, corners=((0, 0), (200, 120), (380, 300))) -> Path:
    """Crops of the shipped Potsdam tile, stored as in its MANIFEST (1..6 classes, 0 unlabelled), with the
    label scheme in the data folder's classes.yaml."""
    image = np.asarray(Image.open(POTSDAM / "img_dir" / "2_10_0_0_512_512.png"))
    mask = np.asarray(Image.open(POTSDAM / "ann_dir" / "2_10_0_0_512_512.png"))
    for folder in ("img_dir", "ann_dir"):
        (root / folder).mkdir(parents=True)
    for i, (top, left) in enumerate(corners):
        Image.fromarray(image[top:top + size, left:left + size]).save(root / "img_dir" / f"tile{i}.png")
        Image.fromarray(mask[top:top + size, left:left + size]).save(root / "ann_dir" / f"tile{i}.png")
    (root / "classes.yaml").write_text(f"class_names: {list(NAMES)}\nignore_value: 0\nfirst_class_value: 1\n")
    return root


def make_pairs(root: Path, names=("p0", "p1", "p2"), size=(40, 56), seed=0) -> Path:
    """Pairs whose second date is the negative of the first and whose mask is ``first date's red > 127``:
    relations that any crop, flip or rotation applied alike to the three must keep."""
    rng = np.random.default_rng(seed)
    for folder in ("A", "B", "label"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in names:
        a = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(a).save(root / "A" / f"{name}.png")
        Image.fromarray(255 - a).save(root / "B" / f"{name}.png")
        Image.fromarray(np.where(a[..., 0] > 127, 255, 0).astype(np.uint8)).save(root / "label" / f"{name}.png")
    return root


def synthetic_dota(root: Path, count: int, seed: int = 0, name: str = "S") -> Path:
    """``count`` 160x160 scenes ``<name><i>.png`` with two to four bright upright boxes each (planes and ships),
    DOTA layout."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    for i in range(count):
        picture = rng.integers(20, 60, (160, 160, 3)).astype(np.uint8)
        lines = ["imagesource:synthetic", "gsd:1.0"]
        for _ in range(int(rng.integers(2, 5))):
            w, h = int(rng.integers(24, 48)), int(rng.integers(12, 24))
            x, y = int(rng.integers(0, 160 - w)), int(rng.integers(0, 160 - h))
            plane = bool(rng.integers(2))
            picture[y:y + h, x:x + w] = (230, 230, 230) if plane else (30, 210, 30)
            lines.append(f"{x} {y} {x + w} {y} {x + w} {y + h} {x} {y + h} {'plane' if plane else 'ship'} 0")
        Image.fromarray(picture).save(root / "images" / f"{name}{i}.png")
        (root / "labelTxt" / f"{name}{i}.txt").write_text("\n".join(lines) + "\n")
    return root
