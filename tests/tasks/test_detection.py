"""Detection through the command line: train, eval (metrics.json) and predict (Task-1 files, their zip, PNG,
GeoJSON or GeoPackage), on one DOTA folder and on DOTA's released train/, val/, test/ layout."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from resumption import check_kill_and_resume
from sample_data import synthetic_dota

from lemevit.cli import main
from lemevit.data.detection import DOTA_V1_CLASSES
from lemevit.engine.eval_predict import load_task
from lemevit.tasks.detection import DetectionConfig, DetectionTask


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


#: ``(sanity check, windows)`` of each batch of windows the fixture ``run``'s validation detected.
VALIDATED_WINDOWS: list[tuple[bool, int]] = []


@pytest.fixture(scope="module")
def run(dota_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "det"
    original = DetectionTask.forward

    def counting(self, images):
        VALIDATED_WINDOWS.append((self.trainer.sanity_checking, len(images)))
        return original(self, images)

    DetectionTask.forward = counting
    try:
        code = main(["train", "--task", "detection", "--data", str(dota_folder), "--model", "resnet10t",
                     "--img-size", "128", "--overlap", "32", "--epochs", "1", "--batch-size", "2", "--split", "1.0",
                     "--fpn-channels", "32", "--rpn-proposals", "100", "--test-proposals", "50", "--num-workers",
                     "0", "--accelerator", "cpu", "--output", str(out)])
    finally:
        DetectionTask.forward = original
    assert code == 0
    return out


def test_train_writes_a_detection_run(run):
    for name in ("best.ckpt", "last.ckpt", "split.json", "config.yaml"):
        assert (run / name).is_file()
    assert json.loads((run / "split.json").read_text())["splits"]["train"] == [{"image": "images/S1.png"}]


def test_the_sanity_check_detects_one_window_and_validation_every_window(run):
    # The scene is two windows wide: Lightning's check of the validation path runs one, validation both.
    assert sum(n for sanity, n in VALIDATED_WINDOWS if sanity) == 1
    assert sum(n for sanity, n in VALIDATED_WINDOWS if not sanity) == 2


@pytest.mark.parametrize(("img_size", "given", "expected"), [
    (1024, {}, (2000, 2000)),  # the published setting
    (512, {}, (500, 500)),
    (256, {}, (125, 125)),
    (256, {"rpn_proposals": 300, "test_proposals": 2000}, (300, 2000)),  # what the user gives wins
])
def test_proposal_budgets_follow_the_window_area(img_size, given, expected):
    cfg = DetectionConfig(data="d", output="o", img_size=img_size, **given)
    module = DetectionTask("resnet10t", num_classes=3, img_size=img_size, fpn_channels=16,
                           rpn_proposals=cfg.rpn_proposals, test_proposals=cfg.test_proposals)
    assert (module.model.rpn_proposals, module.model.test_proposals) == expected


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
    assert "crs" not in collection  # RFC 7946: WGS84 longitude/latitude, always
    assert len(collection["features"]) == len(rows)
    from rasterio.warp import transform

    (lon,), (lat,) = transform("EPSG:32633", "EPSG:4326", [500000], [4600000])  # the scene's top-left corner
    assert abs(lon - 15.0) < 1e-9  # the central meridian of UTM zone 33
    for feature in collection["features"]:
        for x, y in feature["geometry"]["coordinates"][0]:
            assert lon - 0.002 <= x <= lon + 0.003 and lat - 0.002 <= y <= lat + 0.001  # within ~100 m of it

    pyogrio = pytest.importorskip("pyogrio")
    assert main(["predict", "--checkpoint", str(run / "last.ckpt"), str(tif), "--output", str(tmp_path / "gpkg"),
                 "--vector", "gpkg", "--html"]) == 0
    info = pyogrio.read_info(tmp_path / "gpkg" / "scene.gpkg")
    assert info["crs"] == "EPSG:32633" and info["features"] == len(rows)
    assert not (tmp_path / "gpkg" / "scene.geojson").exists()
    page = (tmp_path / "gpkg" / "scene.html").read_text()
    data = json.loads(page.split('id="lemevit-data">', 1)[1].split("</script>", 1)[0])
    assert data["size"] == [128, 180]
    drawn = sum(float(r[1]) >= 0.3 for r in rows)  # --draw-threshold's default
    assert len(data["polygons"]["shapes"] if data["polygons"] else []) == drawn


def test_detection_on_onnxruntime_finds_what_torch_finds(run, dota_folder, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")
    assert main(["export", "--checkpoint", str(run / "last.ckpt"), "--format", "onnx", "--output",
                 str(tmp_path / "model")]) == 0
    printed = capsys.readouterr().out
    assert "model.onnx: onnxruntime against PyTorch" in printed and "model.box_head.onnx: onnxruntime" in printed
    metrics = {}
    for runtime, source in (("torch", run / "last.ckpt"), ("onnxruntime", tmp_path / "model")):
        assert main(["eval", "--checkpoint", str(source), "--data", str(dota_folder), "--output",
                     str(tmp_path / runtime), "--runtime", runtime, "--num-workers", "0"]) == 0
        metrics[runtime] = json.loads((tmp_path / runtime / "metrics.json").read_text())
    assert abs(metrics["torch"]["map50"] - metrics["onnxruntime"]["map50"]) <= 0.005
    detections = {r: {c: v["num_det"] for c, v in m["per_class"].items()} for r, m in metrics.items()}
    assert detections["torch"] == detections["onnxruntime"]
    assert sum(detections["torch"].values()) > 0


def test_malformed_label_is_one_line_naming_file_and_line(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "labelTxt").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "images" / "A.png")
    (tmp_path / "labelTxt" / "A.txt").write_text("1 2 3 4 5 6 7 8 plane 0\n1 2 3 4 5 6 7 8 blimp 0\n")
    code = main(["train", "--task", "detection", "--data", str(tmp_path), "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "A.txt:2:" in err[0] and "blimp" in err[0]


DETECTION_ARGS = ["--task", "detection", "--model", "resnet10t", "--img-size", "128", "--overlap", "32",
                  "--batch-size", "2", "--fpn-channels", "32", "--rpn-proposals", "100", "--test-proposals", "50",
                  "--num-workers", "0", "--accelerator", "cpu", "--lr", "1e-3"]


def test_a_killed_detection_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    data = synthetic_dota(tmp_path / "dota", 3)
    args = ["train", "--data", str(data), *DETECTION_ARGS, "--epochs", "3", "--split", "0.67", "--seed", "2"]
    check_kill_and_resume(args, tmp_path, epochs=3, monitor="val/map50")


@pytest.mark.slow
def test_validation_map_on_two_processes_is_that_of_one_process_over_all_images(tmp_path):
    data = synthetic_dota(tmp_path / "dota", 5, seed=1)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), *DETECTION_ARGS, "--epochs", "4", "--split", "1.0",
                 "--output", str(run)]) == 0
    results = {}
    for devices in ("1", "2"):  # 5 images: the ranks hold 3 and 2 (one repeated to even them out)
        out = tmp_path / f"eval{devices}"
        done = subprocess.run([sys.executable, "-m", "lemevit.cli", "eval", "--checkpoint", str(run / "last.ckpt"),
                               "--data", str(data), "--output", str(out), "--accelerator", "cpu", "--devices",
                               devices, "--num-workers", "0"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        results[devices] = json.loads((out / "metrics.json").read_text())
    one, two = results["1"], results["2"]
    assert one["num_images"] == two["num_images"] == 5
    assert sum(c["num_det"] for c in one["per_class"].values()) > 0, "the model detects nothing: a vacuous test"
    for name, scores in one["per_class"].items():  # every class's AP, count of detections and of objects
        assert two["per_class"][name].keys() == scores.keys(), name
        for key, value in scores.items():
            assert two["per_class"][name][key] == (value if value is None else pytest.approx(value)), (name, key)
    assert two["map50"] == pytest.approx(one["map50"]) and one["map50"] > 0


@pytest.fixture(scope="module")
def dota_release(tmp_path_factory):
    """DOTA as released: train/ and val/ each a DOTA folder (one scene), test/images two unlabelled scenes."""
    root = tmp_path_factory.mktemp("dota_release")
    synthetic_dota(root / "train", 1, seed=3, name="T")
    synthetic_dota(root / "val", 1, seed=4, name="V")
    test_images = root / "test" / "images"
    test_images.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for name in ("E0", "E1"):
        Image.fromarray(rng.integers(20, 230, (160, 160, 3)).astype(np.uint8)).save(test_images / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def trainval_run(dota_release, tmp_path_factory):
    out = tmp_path_factory.mktemp("trainval") / "det"
    assert main(["train", "--data", str(dota_release), *DETECTION_ARGS, "--epochs", "1", "--trainval",
                 "--nms-iou", "0.3", "--output", str(out)]) == 0
    return out


def test_dota_release_folders_are_the_split_and_test_images_stay_out(dota_release, tmp_path):
    # `split` does not apply: the data's own folders are the split.
    cfg = DetectionConfig(data=str(dota_release), output=str(tmp_path / "run"), split=0.5)
    split, bad = DetectionTask.prepare(cfg)
    assert bad == [] and split.meta["class_names"] == list(DOTA_V1_CLASSES)
    assert {name: [item.image for item in items] for name, items in split.subsets.items()} == {
        "train": ["train/images/T0.png"], "val": ["val/images/V0.png"]}


def test_trainval_trains_on_train_and_val_and_validates_on_val(trainval_run):
    subsets = json.loads((trainval_run / "split.json").read_text())["splits"]
    assert subsets == {"train": [{"image": "train/images/T0.png"}, {"image": "val/images/V0.png"}],
                       "val": [{"image": "val/images/V0.png"}]}


def test_eval_of_a_dota_release_folder_scores_its_val_images(trainval_run, dota_release, tmp_path):
    assert main(["eval", "--checkpoint", str(trainval_run / "last.ckpt"), "--data", str(dota_release),
                 "--output", str(tmp_path), "--num-workers", "0"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    val_objects = len((dota_release / "val" / "labelTxt" / "V0.txt").read_text().splitlines()) - 2
    assert metrics["num_images"] == 1
    assert sum(c["num_gt"] for c in metrics["per_class"].values()) == val_objects


def test_predict_over_dota_test_images_writes_the_task1_zip_for_the_server(trainval_run, dota_release, tmp_path,
                                                                            capsys):
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(trainval_run / "last.ckpt"), str(dota_release / "test" / "images"),
                 "--output", str(out)]) == 0
    assert f"wrote {out / 'Task1.zip'}" in capsys.readouterr().out
    with zipfile.ZipFile(out / "Task1.zip") as archive:
        # The 15 class files at the top level, empty ones too: what DOTA's evaluation server takes.
        assert sorted(archive.namelist()) == sorted(f"Task1_{name}.txt" for name in DOTA_V1_CLASSES)
        texts = {name: archive.read(name).decode() for name in archive.namelist()}
    assert texts == {name: (out / name).read_text() for name in texts}
    rows = [line.split() for text in texts.values() for line in text.splitlines()]
    assert rows, "the model detects nothing: the line format goes unchecked"
    for row in rows:  # imgname score x1 y1 x2 y2 x3 y3 x4 y4, the name without its extension
        assert len(row) == 10 and row[0] in ("E0", "E1")
        score, *corners = map(float, row[1:])
        assert 0.05 <= score <= 1 and len(corners) == 8


@pytest.mark.parametrize(("layout", "extra", "message"), [
    ("train_without_labels", [], "{root}/train: images/ has no labelTxt/"),
    ("train_without_val", [], "{root}: has train/ but no val/"),
    ("one_folder", ["--trainval"], "--trainval: trains on the train/ and val/ folders"),
])
def test_a_bad_dota_release_layout_is_one_error_naming_the_folder(tmp_path, capsys, layout, extra, message):
    root = tmp_path / "data"
    if layout == "one_folder":
        synthetic_dota(root, 2)
    else:
        synthetic_dota(root / "train", 1)
        if layout == "train_without_labels":
            synthetic_dota(root / "val", 1)
            shutil.rmtree(root / "train" / "labelTxt")
    code = main(["train", "--task", "detection", "--data", str(root), *extra, "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert message.format(root=root) in err[0]


def test_nms_iou_reaches_the_detector_and_old_checkpoints_keep_the_papers(trainval_run, tmp_path):
    assert load_task(trainval_run / "last.ckpt").model.nms_threshold == 0.3
    # A checkpoint written before the option existed predicts as it did: at Oriented R-CNN's IoU 0.1.
    content = torch.load(trainval_run / "last.ckpt", map_location="cpu", weights_only=True)
    del content["hyper_parameters"]["nms_iou"]
    torch.save(content, tmp_path / "old.ckpt")
    assert load_task(tmp_path / "old.ckpt").model.nms_threshold == 0.1
