"""Detection through the command line: train, eval (metrics.json) and predict (Task-1 files, PNG, GeoJSON)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lemevit.cli import main


@pytest.fixture(scope="module")
def dota_folder(tmp_path_factory):
    """A 180x128 scene (two 128 windows) with a plane and a ship drawn in, DOTA layout."""
    root = tmp_path_factory.mktemp("dota")
    (root / "images").mkdir()
    (root / "labelTxt").mkdir()
    picture = np.full((128, 180, 3), 40, np.uint8)
    picture[30:50, 20:70] = 220
    picture[80:120, 120:140] = (30, 200, 30)
    Image.fromarray(picture).save(root / "images" / "S1.png")
    (root / "labelTxt" / "S1.txt").write_text(
        "imagesource:synthetic\ngsd:1.0\n20 30 70 30 70 50 20 50 plane 0\n120 80 140 80 140 120 120 120 ship 1\n")
    return root


@pytest.fixture(scope="module")
def run(dota_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "det"
    code = main(["train", "--task", "detection", "--data", str(dota_folder), "--model", "resnet10t",
                 "--img-size", "128", "--overlap", "32", "--epochs", "1", "--batch-size", "2", "--split", "1.0",
                 "--fpn-channels", "32", "--rpn-proposals", "100", "--test-proposals", "50", "--num-workers", "0",
                 "--accelerator", "cpu", "--output", str(out)])
    assert code == 0
    return out


def test_train_writes_a_detection_run(run):
    for name in ("best.ckpt", "last.ckpt", "split.json", "config.yaml"):
        assert (run / name).is_file()
    assert json.loads((run / "split.json").read_text())["images"]["train"] == ["images/S1.png"]


def test_eval_writes_map_and_per_class_ap(run, dota_folder, tmp_path):
    assert main(["eval", "--checkpoint", str(run / "last.ckpt"), "--data", str(dota_folder),
                 "--output", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0.0 <= metrics["map50"] <= 1.0
    assert metrics["per_class"]["plane"]["num_gt"] == 1
    assert metrics["per_class"]["ship"]["num_gt"] == 0  # its only ship is difficult
    assert metrics["per_class"]["harbor"]["ap"] is None


def test_predict_writes_task1_files_png_and_geojson(run, dota_folder, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    picture = np.asarray(Image.open(dota_folder / "images" / "S1.png")).transpose(2, 0, 1)
    tif = tmp_path / "scene.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=180, height=128, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 4600000, 0.5, 0.5)) as dst:
        dst.write(picture)
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(run / "last.ckpt"), str(tif), "--output", str(out)]) == 0
    assert (out / "scene.png").is_file()
    assert Image.open(out / "scene.png").size == (180, 128)
    assert len(list(out.glob("Task1_*.txt"))) == 15
    rows = [line.split() for f in out.glob("Task1_*.txt") for line in f.read_text().splitlines()]
    assert all(len(r) == 10 and r[0] == "scene" for r in rows)
    collection = json.loads((out / "scene.geojson").read_text())
    assert collection["crs"]["properties"]["name"] == "EPSG:32633"
    assert len(collection["features"]) == len(rows)
    for feature in collection["features"]:
        for x, y in feature["geometry"]["coordinates"][0]:
            assert 500000 - 100 <= x <= 500000 + 200 and 4600000 - 180 <= y <= 4600000 + 100


def test_malformed_label_is_one_line_naming_file_and_line(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "labelTxt").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "images" / "A.png")
    (tmp_path / "labelTxt" / "A.txt").write_text("1 2 3 4 5 6 7 8 plane 0\n1 2 3 4 5 6 7 8 blimp 0\n")
    code = main(["train", "--task", "detection", "--data", str(tmp_path), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "A.txt:2:" in err[0] and "blimp" in err[0]
