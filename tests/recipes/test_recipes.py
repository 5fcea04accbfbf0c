"""Recipes: each one resolves, trains a few steps on fixture data of its layout, and holds its sources' values."""
from __future__ import annotations

import pytest
import yaml
from sample_data import make_scenes

from lemevit.cli import main
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


def _layout(tmp_path, name: str) -> list[str]:
    """Fixture data in the layout the recipe expects, and the options that point it there."""
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


@pytest.mark.parametrize("name", recipe_names())
def test_each_recipe_trains_a_few_steps_on_its_layout(tmp_path, name):
    run = tmp_path / "run"
    # The recipe's own model and settings, at a fixture's size and budget.
    assert main(["train", "--recipe", name, *_layout(tmp_path, name), "--output", str(run), "--img-size", "32",
                 "--batch-size", "2", "--iterations", "2", "--num-workers", "0", "--precision", "fp32"]) == 0
    assert (run / "last.ckpt").is_file() and (run / "best.ckpt").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"] == get_recipe(name).config["model"] and saved["iterations"] == 2


def test_unknown_recipe_lists_the_recipes(capsys):
    assert main(["train", "--recipe", "lemevit_tiny_mnist", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "--recipe: no recipe 'lemevit_tiny_mnist'" in err and "lemevit_tiny_imagenet" in err


def test_recipes_lists_name_task_result_and_compute(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("lemevit_tiny_imagenet"))
    assert "classification" in row and "top1 79.07" in row and "ImageNet-1k" in row
