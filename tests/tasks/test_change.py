"""Change detection through the CLI: train, evaluate (dispatched on the checkpoint's task), predict pairs of
any size with the georeference kept; metrics on a hand-computed case; a trained model finds a changed square."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import FIXTURES
from PIL import Image

from lemevit.cli import main
from lemevit.errors import ConfigError
from lemevit.tasks.change import ChangeConfig

LEVIR = FIXTURES / "levir_cd"


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--task", "change", "--data", str(data), "--output", str(out), "--model", "lemevit_tiny",
            "--img-size", "64", "--window", "128", "--epochs", "1", "--batch-size", "4", "--num-workers", "0",
            *extra]


@pytest.fixture(scope="module")
def levir_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("change") / "run"
    assert main(train_args(LEVIR, run, "--split", "0.75", "--crops-per-pair", "1")) == 0
    return run


def test_train_writes_the_run_and_eval_dispatches_on_the_checkpoint(levir_run, tmp_path):
    for name in ("best.ckpt", "last.ckpt", "split.json", "config.yaml", "logs/metrics.csv"):
        assert (levir_run / name).is_file(), name
    assert "task: change" in (levir_run / "config.yaml").read_text()
    split = json.loads((levir_run / "split.json").read_text())["splits"]
    assert len(split["train"]) == 8 and len(split["val"]) == 3

    assert main(["eval", "--checkpoint", str(levir_run / "best.ckpt"), "--output", str(tmp_path / "own")]) == 0
    own = json.loads((tmp_path / "own" / "metrics.json").read_text())
    assert own["num_pairs"] == 3 and own["window"] == 128 and own["stride"] == 96
    assert main(["eval", "--checkpoint", str(levir_run / "best.ckpt"), "--data", str(LEVIR),
                 "--output", str(tmp_path / "all")]) == 0
    metrics = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert metrics["num_pairs"] == 11 and metrics["num_pixels"] == 11 * 256 * 256
    for key in ("precision", "recall", "f1", "iou"):
        assert metrics[key] is None or 0.0 <= metrics[key] <= 1.0, key
    assert 0.0 <= metrics["oa"] <= 1.0
    assert np.array(metrics["confusion_matrix"]).sum() == metrics["num_pixels"]
    assert metrics["changed_pixels"] == sum(p["changed_pixels"] for p in metrics["per_pair"])
    assert metrics["threshold"] == 0.5 and 0 < metrics["best_threshold"] < 1
    assert metrics["best_f1"] >= (metrics["f1"] or 0.0) - 1e-9  # the threshold grid holds 0.5
    assert main(["eval", "--checkpoint", str(levir_run / "best.ckpt"), "--data", str(LEVIR), "--threshold",
                 str(metrics["best_threshold"]), "--output", str(tmp_path / "best")]) == 0
    at_best = json.loads((tmp_path / "best" / "metrics.json").read_text())
    assert at_best["threshold"] == metrics["best_threshold"]
    assert at_best["f1"] == pytest.approx(metrics["best_f1"], abs=1e-6)


def test_predict_writes_a_change_map_and_a_preview(levir_run, tmp_path):
    out = tmp_path / "change.png"
    assert main(["predict", "--checkpoint", str(levir_run / "best.ckpt"), "--pair",
                 str(LEVIR / "A" / "test_2_0000_0000.png"), str(LEVIR / "B" / "test_2_0000_0000.png"),
                 "--output", str(out)]) == 0
    change = np.asarray(Image.open(out))
    assert change.shape == (256, 256) and set(np.unique(change)) <= {0, 255}
    preview = Image.open(tmp_path / "change_preview.png")
    assert preview.height == 256 and preview.width > 3 * 256  # A | B | overlay


def test_predict_over_a_folder_of_pairs_maps_each_as_a_single_pair(levir_run, tmp_path, capsys):
    pairs = tmp_path / "pairs"
    names = ["test_2_0000_0000.png", "test_7_0256_0512.png"]
    for date in ("A", "B"):
        (pairs / date).mkdir(parents=True)
        for name in names:
            shutil.copy(LEVIR / date / name, pairs / date / name)
    predict = ["predict", "--checkpoint", str(levir_run / "best.ckpt")]
    assert main(predict + ["--pairs", str(pairs), "--output", str(tmp_path / "maps")]) == 0
    assert "2 pair(s) predicted" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(
        [*names, *(n.replace(".png", "_preview.png") for n in names)])
    assert main(predict + ["--pair", str(pairs / "A" / names[1]), str(pairs / "B" / names[1]), "--output",
                           str(tmp_path / "one.png")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "maps" / names[1])),
                                  np.asarray(Image.open(tmp_path / "one.png")))
    assert main(predict + ["--pairs", str(pairs), "--output", str(tmp_path / "maps")]) == 0
    assert "2 kept from an earlier run" in capsys.readouterr().out

    (pairs / "B" / names[0]).unlink()
    assert main(predict + ["--pairs", str(pairs), "--output", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and names[0] in err and "B" in err
    assert main(predict + ["--pairs", str(pairs), "--pair", "a.png", "b.png", "--output", str(tmp_path / "x")]) == 2
    assert "--pair" in capsys.readouterr().err


def _write_geotiff(path: Path, image: np.ndarray, transform, crs: str = "EPSG:32633") -> None:
    import rasterio

    with rasterio.open(path, "w", driver="GTiff", height=image.shape[0], width=image.shape[1],
                       count=image.shape[2], dtype=image.dtype.name, crs=crs, transform=transform) as ds:
        ds.write(image.transpose(2, 0, 1))


def test_geotiff_pairs_of_any_size_give_a_georeferenced_change_map(levir_run, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    transform = from_origin(500000.0, 4200000.0, 0.5, 0.5)
    a = np.asarray(Image.open(LEVIR / "A" / "test_7_0256_0512.png"))[:150, :200]
    b = np.asarray(Image.open(LEVIR / "B" / "test_7_0256_0512.png"))[:150, :200]
    _write_geotiff(tmp_path / "a.tif", a, transform)
    _write_geotiff(tmp_path / "b.tif", b, transform)
    out = tmp_path / "change.tif"
    assert main(["predict", "--checkpoint", str(levir_run / "best.ckpt"), "--pair", str(tmp_path / "a.tif"),
                 str(tmp_path / "b.tif"), "--output", str(out), "--probabilities", "--vector", "geojson"]) == 0
    with rasterio.open(out) as ds:
        assert (ds.height, ds.width, ds.count, ds.dtypes[0]) == (150, 200, 1, "uint8")
        assert ds.crs.to_string() == "EPSG:32633" and ds.transform.almost_equals(transform)
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG" and ds.nodata == 128
        assert ds.descriptions == ("0=no change, 255=change",)
        assert (ds.colormap(1)[0], ds.colormap(1)[255]) == ((0, 0, 0, 255), (255, 255, 255, 255))
        change = ds.read(1)
    assert set(np.unique(change)) <= {0, 255}
    assert (tmp_path / "change_preview.png").is_file()
    with rasterio.open(tmp_path / "change_probabilities.tif") as ds:
        assert ds.count == 1 and ds.descriptions == ("change probability",) and ds.transform.almost_equals(transform)
        probability = ds.read(1)
    # Changed where the change is the more probable: over 0.5, stored as 128..255.
    assert (probability[change == 255] >= 128).all() and (probability[change == 0] <= 128).all()
    collection = json.loads((tmp_path / "change.geojson").read_text())
    assert "crs" not in collection
    assert {(f["properties"]["class"], f["properties"]["value"]) for f in collection["features"]} <= {("change", 255)}
    area = sum(f["properties"]["area_m2"] for f in collection["features"])
    assert area == pytest.approx((change == 255).sum() * 0.25, abs=1e-6)  # 0.5 m pixels
    for feature in collection["features"]:
        assert 0.5 <= feature["properties"]["mean_probability"] <= 1
        for x, y in feature["geometry"]["coordinates"][0]:
            assert 14.9 < x < 15.1 and 37.9 < y < 38.0  # longitude, latitude, near (500000 E, 4200000 N) in zone 33


def test_mismatched_pairs_are_rejected_with_the_files_named(levir_run, tmp_path, capsys):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "b.png")
    predict = ["predict", "--checkpoint", str(levir_run / "best.ckpt"), "--output", str(tmp_path / "c.png"), "--pair"]
    assert main(predict + [str(tmp_path / "a.png"), str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err
    assert "a.png is 64x64" in err and "b.png is 64x48" in err and "Traceback" not in err
    assert main(predict + [str(tmp_path / "a.png"), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()

    pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    image = np.zeros((64, 64, 3), np.uint8)
    _write_geotiff(tmp_path / "a.tif", image, from_origin(500000.0, 4200000.0, 0.5, 0.5))
    _write_geotiff(tmp_path / "b.tif", image, from_origin(500100.0, 4200000.0, 0.5, 0.5))
    assert main(predict + [str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) == 2
    assert "not co-registered" in capsys.readouterr().err


def test_options_of_other_tasks_are_refused(tmp_path, capsys):
    assert main(train_args(LEVIR, tmp_path / "run", "--mixup", "0.2")) == 2
    assert "--mixup" in capsys.readouterr().err
    assert main(train_args(LEVIR, tmp_path / "run", "--head", "upernet")) == 2
    assert "--head: invalid choice: 'upernet' (choose from 'bit', 'siamunet')" in capsys.readouterr().err


def test_a_run_starts_from_the_pretrained_backbone_unless_told_otherwise(tmp_path):
    # On pairs never trained on, the AID-pretrained backbone is what finds change (benchmarks/change_heldout.py).
    run = dict(data=str(LEVIR), output=str(tmp_path / "run"))
    assert ChangeConfig(**run).starting_weights == "lemevit_tiny.aid150"
    assert ChangeConfig(**run, model="lemevit_tiny").starting_weights is None
    assert ChangeConfig(**run, init_checkpoint="backbone.safetensors").starting_weights == "backbone.safetensors"
    with pytest.raises(ConfigError, match="lemevit_small has no pretrained weights"):
        ChangeConfig(**run, model="lemevit_small", pretrained=True)


def square_pair(rng: np.random.Generator, height: int, width: int, top: int, left: int, side: int):
    """A blocky random scene, the same at both dates up to sensor noise, except a square of new content."""
    blocks = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3))
    a = np.kron(blocks, np.ones((8, 8, 1)))[:height, :width]
    b = np.clip(a + rng.normal(0, 6, a.shape), 0, 255)
    b[top:top + side, left:left + side] = rng.integers(0, 256, (side // 4 + 1, side // 4 + 1, 3)).repeat(
        4, axis=0).repeat(4, axis=1)[:side, :side]
    label = np.zeros((height, width), np.uint8)
    label[top:top + side, left:left + side] = 255
    return a.astype(np.uint8), b.astype(np.uint8), label


def square_pairs(folder, rng, count: int, size: int, sides: tuple[int, int]):
    """``count`` pairs of ``size`` px in LEVIR-CD's layout, each with a changed square of a side in ``sides``
    (high exclusive) at a random place."""
    for name in ("A", "B", "label"):
        (folder / name).mkdir(parents=True)
    for i in range(count):
        side = int(rng.integers(*sides))
        top, left = (int(v) for v in rng.integers(0, size - side, 2))
        for name, image in zip(("A", "B", "label"), square_pair(rng, size, size, top, left, side), strict=True):
            Image.fromarray(image).save(folder / name / f"s{i}.png")
    return folder


def held_out_square_iou(checkpoint, tmp_path, height: int, width: int, top: int, left: int,
                        side: int) -> tuple[float, int]:
    """The IoU with its changed square of the change map ``lemevit predict`` makes of a new pair, and the pixels it
    maps as change."""
    a, b, label = square_pair(np.random.default_rng(1), height, width, top=top, left=left, side=side)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    out = tmp_path / "change.png"
    assert main(["predict", "--checkpoint", str(checkpoint), "--pair", str(tmp_path / "a.png"),
                 str(tmp_path / "b.png"), "--output", str(out), "--no-preview"]) == 0
    found, truth = np.asarray(Image.open(out)) > 0, label > 0
    return (found & truth).sum() / max((found | truth).sum(), 1), int(found.sum())


def test_a_trained_model_finds_a_changed_square(tmp_path):
    # The siamese difference UNet: at 64 px BIT's stride-8 token map is 8x8, too coarse to outline a square
    # within seconds of training (IoU 0.25 after 6 epochs, 0.59 after 12; this head: 0.84 after 6).
    data = square_pairs(tmp_path / "squares", np.random.default_rng(0), count=12, size=64, sides=(16, 33))
    run = tmp_path / "run"
    assert main(["train", "--task", "change", "--data", str(data), "--output", str(run), "--model", "resnet10t",
                 "--head", "siamunet", "--img-size", "64", "--epochs", "6", "--batch-size", "6",
                 "--crops-per-pair", "3", "--split", "0.9", "--lr", "2e-3", "--num-workers", "0", "--seed", "0"]) == 0

    iou, _ = held_out_square_iou(run / "last.ckpt", tmp_path, 96, 128, top=40, left=70, side=28)
    assert iou > 0.5, f"IoU with the changed square {iou:.2f}"
    shutil.rmtree(run)


def test_small_changes_are_found_on_a_pair_never_trained_on(tmp_path):
    # About 1 % of each pair changed (a square of 8-12 px in 96 px). Cross-entropy alone on uniform crops learns
    # that nothing changes and maps no pixel of the held-out pair as change; the defaults (a Dice loss, half the
    # crops placed on changed pixels) find its square.
    data = square_pairs(tmp_path / "small", np.random.default_rng(0), count=8, size=96, sides=(8, 13))
    run = tmp_path / "run"
    assert main(["train", "--task", "change", "--data", str(data), "--output", str(run), "--model", "resnet10t",
                 "--head", "siamunet", "--img-size", "48", "--epochs", "10", "--batch-size", "8", "--split", "0.875",
                 "--lr", "2e-3", "--num-workers", "0", "--seed", "0"]) == 0

    iou, mapped = held_out_square_iou(run / "last.ckpt", tmp_path, 96, 96, top=30, left=50, side=12)
    assert iou > 0.4, f"IoU with the changed square {iou:.2f} ({mapped} pixels mapped as change)"
    shutil.rmtree(run)


def test_train_on_the_cdd_release_layout_with_scale_jitter_and_photometric_distortion(tmp_path):
    rng = np.random.default_rng(2)
    data = tmp_path / "cdd"
    for subset, count in (("train", 3), ("val", 1)):
        for i in range(count):
            a, b, label = square_pair(rng, 64, 64, top=16, left=20, side=24)
            for folder, image in zip(("A", "B", "OUT"), (a, b, label), strict=True):
                (data / subset / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(data / subset / folder / f"{i:05d}.jpg", quality=95)
    run = tmp_path / "run"
    assert main(["train", "--task", "change", "--data", str(data), "--output", str(run), "--model", "lemevit_tiny",
                 "--img-size", "32", "--window", "64", "--epochs", "1", "--batch-size", "3", "--num-workers", "0",
                 "--scale-range", "0.5", "2.0", "--photometric"]) == 0
    assert (run / "best.ckpt").is_file()
    split = json.loads((run / "split.json").read_text())["splits"]
    assert len(split["train"]) == 3 and [p["label"] for p in split["val"]] == ["val/OUT/00000.jpg"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["scale_range"], config["photometric"]) == ([0.5, 2.0], True)
