"""Semantic segmentation through the CLI: train, resume, evaluate, predict (a PNG, and a GeoTIFF scene into a COG
with its probabilities and polygons); metrics on a hand-made case."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sample_data import NAMES, POTSDAM, make_tiles

from lemevit.cli import main
from lemevit.engine import training_minutes


def train_args(data: Path, out: Path, epochs: int = 1, **extra) -> list[str]:
    args = ["train", "--task", "segmentation", "--data", str(data), "--output", str(out), "--model", "lemevit_tiny",
            "--img-size", "32", "--epochs", str(epochs), "--batch-size", "2", "--num-workers", "0", "--seed", "1",
            "--decoder-channels", "16", "--split", "0.67"]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def test_train_resume_evaluate_and_predict_a_scene_through_the_cli(tmp_path, capsys):
    data = make_tiles(tmp_path / "tiles")
    run = tmp_path / "run"
    assert main(train_args(data, run, class_balance=0.5, dice_weight=0.5)) == 0
    for name in ("best.ckpt", "last.ckpt", "split.json", "config.yaml", "logs/metrics.csv"):
        assert (run / name).is_file(), name
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["class_balance"], config["dice_weight"]) == (0.5, 0.5)
    split = json.loads((run / "split.json").read_text())
    assert len(split["splits"]["train"]) == 2 and len(split["splits"]["val"]) == 1
    assert split["meta"]["labels"]["class_names"] == list(NAMES)
    logged = (run / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "val/miou" in logged and "val/oa" in logged

    # --resume finds the task and the settings in the run's config.yaml, and carries on its training time: say
    # the first epoch took an hour.
    last = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)
    first_epoch = training_minutes(run / "last.ckpt")
    assert 0 < first_epoch < 5
    last["callbacks"]["Timer"]["time_elapsed"]["train"] = 3600.0
    torch.save(last, run / "last.ckpt")
    assert main(["train", "--output", str(run), "--resume", "--epochs", "2"]) == 0
    resumed = torch.load(run / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 2 * last["global_step"]
    assert 60 < training_minutes(run / "last.ckpt") < 65
    with open(run / "logs" / "metrics.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f) if r["val/miou"]] == [0, 1]

    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(run / "best.ckpt"), "--data", str(data), "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == set(NAMES) and metrics["num_tiles"] == 3
    labelled = sum(int((np.asarray(Image.open(p)) > 0).sum()) for p in (data / "ann_dir").iterdir())
    assert metrics["num_pixels"] == labelled == np.array(metrics["confusion_matrix"]).sum()
    assert 0 <= metrics["miou"] <= 1 and 0 <= metrics["oa"] <= 1 and 0 <= metrics["mf1"] <= 1
    assert (metrics["window"], metrics["stride"]) == (32, 24)  # the run's crop size, 3/4 of it
    assert (out / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert "mIoU" in capsys.readouterr().out

    assert main(["eval", "--checkpoint", str(run / "best.ckpt"), "--output", str(tmp_path / "own")]) == 0
    assert json.loads((tmp_path / "own" / "metrics.json").read_text())["num_tiles"] == 1  # the held-out tile

    scene = tmp_path / "scene.png"
    Image.fromarray(np.asarray(Image.open(POTSDAM / "img_dir" / "2_10_0_0_512_512.png"))[:90, :77]).save(scene)
    target = tmp_path / "scene_classes.png"
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(scene), "--output", str(target),
                 "--window", "48", "--stride", "40", "--html"]) == 0
    classes = np.asarray(Image.open(target))
    assert classes.shape == (90, 77) and classes.max() < len(NAMES)
    assert Image.open(tmp_path / "scene_classes_preview.png").mode == "P"
    # The page (tests/io/test_webmap.py opens such pages in a browser): the scene and the class map over it.
    page = tmp_path / "scene_classes.html"
    assert f"page {page}" in capsys.readouterr().out
    shown = json.loads(re.search(r'id="lemevit-data">(.*?)</script>', page.read_text()).group(1))
    assert shown["size"] == [90, 77] and [o["name"] for o in shown["overlays"]] == ["classes"]
    assert [name for name, _ in shown["legend"]] == list(NAMES)

    rasterio = pytest.importorskip("rasterio")
    pytest.importorskip("pyogrio")
    from rasterio.transform import from_origin

    pixels = np.asarray(Image.open(scene)).transpose(2, 0, 1)
    tif = tmp_path / "scene.tif"
    transform = from_origin(368000.0, 5810000.0, 0.5, 0.5)
    with rasterio.open(tif, "w", driver="GTiff", width=77, height=90, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=transform) as ds:
        ds.write(pixels)
    predict = ["predict", "--checkpoint", str(run / "best.ckpt"), str(tif), "--window", "48", "--stride", "40"]
    cog, gpkg = tmp_path / "geo" / "classes.tif", tmp_path / "geo" / "classes.gpkg"
    outputs = ["--output", str(cog), "--probabilities", "--vector", str(gpkg)]
    assert main(predict + outputs + ["--min-area", "0.5"]) == 0
    assert "polygons in" in capsys.readouterr().out
    with rasterio.open(cog) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.crs.to_string() == "EPSG:32633"
        assert ds.transform == transform and ds.nodata == 255
        assert ds.descriptions == (", ".join(f"{i}={name}" for i, name in enumerate(NAMES)),)
        classes = ds.read(1)
    with rasterio.open(tmp_path / "geo" / "classes_probabilities.tif") as ds:
        assert ds.count == len(NAMES) and ds.descriptions == tuple(NAMES) and ds.dtypes[0] == "uint8"
        stored = ds.read()
    np.testing.assert_array_equal(np.take_along_axis(stored, classes[None].astype(np.int64), 0)[0], stored.max(0))
    import pyogrio

    info = pyogrio.read_info(gpkg)
    assert info["crs"] == "EPSG:32633"
    assert {"class", "value", "area_m2", "mean_probability"} <= set(info["fields"])
    _, _, _, fields = pyogrio.raw.read(gpkg)
    by_name = dict(zip(info["fields"], fields, strict=True))
    assert by_name["area_m2"].min() >= 0.5
    assert ((by_name["mean_probability"] > 0) & (by_name["mean_probability"] <= 1)).all()
    # Rerun: the map, its probabilities and its polygons are there, so the scene is kept.
    assert main(predict + outputs) == 0
    assert "1 kept from an earlier run" in capsys.readouterr().out

    assert main(predict + ["--output", str(tmp_path / "x.tif"), "--min-area", "5"]) == 2
    assert "--min-area: applies to the polygons of --vector" in capsys.readouterr().err
    assert main(predict + ["--output", str(tmp_path / "x.png"), "--vector", "gpkg"]) == 2
    assert "--vector: polygons are read from GeoTIFF maps" in capsys.readouterr().err
    assert main(predict + ["--output", str(tmp_path / "x.tif"), "--vector", str(tmp_path / "x.shp")]) == 2
    assert "--vector: vectors are written as .geojson or .gpkg" in capsys.readouterr().err
    assert not (tmp_path / "x.tif").exists() and not (tmp_path / "x.png").exists()


def test_bad_segmentation_input_is_one_line_naming_the_file_or_option(tmp_path, capsys):
    data = make_tiles(tmp_path / "tiles", corners=((0, 0), (64, 64)))
    (data / "ann_dir" / "tile1.png").unlink()
    assert main(train_args(data, tmp_path / "a")) == 2
    assert "no mask for image" in capsys.readouterr().err and not (tmp_path / "a" / "last.ckpt").exists()

    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(data / "ann_dir" / "tile1.png")
    assert main(train_args(data, tmp_path / "b")) == 2
    assert "tile1.png: value(s) [9] are neither a class (1..6) nor the ignore value 0" in capsys.readouterr().err

    (data / "classes.yaml").unlink()
    assert main(train_args(data, tmp_path / "c")) == 2
    assert "classes.yaml" in capsys.readouterr().err

    assert main(train_args(data, tmp_path / "d", preset="potsdam", mixup=0.2)) == 2
    assert "--mixup do(es) not apply to --task segmentation" in capsys.readouterr().err


def test_train_with_the_augmentations_of_mmsegmentation_recipes(tmp_path, capsys):
    data = make_tiles(tmp_path / "tiles")
    run = tmp_path / "run"
    augmented = train_args(data, run, cat_max_ratio=0.75) + ["--scale-range", "0.5", "2.0", "--photometric"]
    assert main(augmented) == 0
    assert (run / "best.ckpt").is_file()
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["scale_range"], config["cat_max_ratio"], config["photometric"]) == ([0.5, 2.0], 0.75, True)
    assert main(train_args(data, tmp_path / "bad") + ["--scale-range", "2.0", "0.5"]) == 2
    assert "--scale-range: must be two positive factors LOW HIGH with LOW <= HIGH" in capsys.readouterr().err
