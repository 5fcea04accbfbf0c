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
