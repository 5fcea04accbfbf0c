"""Panoptic segmentation through the CLI (prepare, train, eval, predict), and the merge of objects that windows
cut."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sample_data import NAMES, POTSDAM, make_tiles

from lemevit.cli import main
from lemevit.data.panoptic import decode_ids
from lemevit.inference.panoptic import Instance, merge_window_instances, window_instances


def train_args(data: Path, out: Path, **extra) -> list[str]:
    args = ["train", "--task", "panoptic", "--data", str(data), "--output", str(out), "--model", "resnet10t",
            "--img-size", "64", "--epochs", "1", "--batch-size", "2", "--num-workers", "0", "--seed", "1",
            "--split", "0.67", "--fpn-channels", "32", "--semantic-channels", "32", "--rpn-proposals", "64",
            "--test-proposals", "64", "--detections", "20", "--stuff-area", "16"]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def test_prepare_train_evaluate_and_predict_through_the_cli(tmp_path, capsys):
    semantic = make_tiles(tmp_path / "tiles")
    data = tmp_path / "panoptic"
    assert main(["prepare", "panoptic", "--data", str(semantic), "--output", str(data), "--things", "building",
                 "car"]) == 0
    run = tmp_path / "run"
    assert main(train_args(data, run)) == 0
    for name in ("best.ckpt", "last.ckpt", "split.json", "config.yaml", "logs/metrics.csv"):
        assert (run / name).is_file(), name
    split = json.loads((run / "split.json").read_text())
    assert split["task"] == "panoptic" and len(split["splits"]["train"]) == 2 and len(split["splits"]["val"]) == 1
    assert [(c["name"], c["isthing"]) for c in split["meta"]["categories"]] == [
        (name, name in ("building", "car")) for name in NAMES]
    logged = (run / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert all(f"val/{key}" in logged for key in ("pq", "sq", "rq")) and "train/loss_mask" in logged

    out = tmp_path / "eval"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run / "best.ckpt"), "--data", str(data), "--output", str(out),
                 "--window", "48", "--stride", "32", "--score-threshold", "0.1"]) == 0
    assert "PQ" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == set(NAMES) and metrics["num_images"] == 3
    assert metrics["thing_classes"] == ["building", "car"]
    assert (metrics["window"], metrics["stride"], metrics["fusion"]["score_threshold"]) == (48, 32, 0.1)
    for key in ("pq", "sq", "rq"):
        assert 0 <= metrics[key] <= 1 and key in metrics["things"] and key in metrics["stuff"]
    # the ground truth's segments are all counted: each is matched or missed
    truth = json.loads((data / "panoptic.json").read_text())["annotations"]
    per_class = metrics["per_class"]
    assert sum(c["tp"] + c["fn"] for c in per_class.values()) == sum(len(a["segments_info"]) for a in truth)

    scene = tmp_path / "scene.png"
    Image.fromarray(np.asarray(Image.open(POTSDAM / "img_dir" / "2_10_0_0_512_512.png"))[:90, :77]).save(scene)
    predictions = tmp_path / "predictions"
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(scene), "--output", str(predictions),
                 "--window", "48", "--stride", "40", "--score-threshold", "0"]) == 0
    assert "stuff regions in" in capsys.readouterr().out
    ids = decode_ids(np.asarray(Image.open(predictions / "scene_panoptic.png")))
    segments = json.loads((predictions / "scene_segments.json").read_text())
    assert ids.shape == (90, 77) and (segments["height"], segments["width"]) == (90, 77)
    info = {s["id"]: s for s in segments["segments_info"]}
    assert any(s["isthing"] for s in info.values()) and not all(s["isthing"] for s in info.values())
    assert set(np.unique(ids)) - {0} == set(info)
    categories = {c["name"]: c for c in split["meta"]["categories"]}
    for segment_id, s in info.items():
        assert s["area"] == int((ids == segment_id).sum()) and categories[s["category"]]["id"] == s["category_id"]
        assert s["isthing"] == categories[s["category"]]["isthing"] and (s["score"] is None) != s["isthing"]
        x, y, w, h = s["bbox"]
        rows, cols = np.nonzero(ids == segment_id)
        assert (x, y, x + w, y + h) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)

    # A georeferenced GeoTIFF also gets its segment ids as a GeoTIFF with its CRS and transform, and the segments'
    # polygons.
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    tif = tmp_path / "scene.tif"
    transform = from_origin(368000.0, 5810000.0, 0.5, 0.5)
    with rasterio.open(tif, "w", driver="GTiff", width=77, height=90, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=transform) as ds:
        ds.write(np.asarray(Image.open(scene)).transpose(2, 0, 1))
    geo = tmp_path / "geo"
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(tif), "--output", str(geo), "--window", "48",
                 "--stride", "40", "--score-threshold", "0", "--vector", "geojson"]) == 0
    assert "scene_segments.geojson" in capsys.readouterr().out
    with rasterio.open(geo / "scene_panoptic.tif") as ds:
        assert ds.crs.to_string() == "EPSG:32633" and ds.transform == transform and ds.nodata == 0
        np.testing.assert_array_equal(ds.read(1), ids)  # the same segments as the PNG's
    polygons = json.loads((geo / "scene_segments.geojson").read_text())["features"]
    assert {f["properties"]["value"] for f in polygons} == set(info)
    assert all(f["properties"]["class"] == info[f["properties"]["value"]]["category"] for f in polygons)


def test_prepare_refuses_data_without_things(tmp_path):
    from lemevit.data.panoptic import ANNOTATIONS_FILE
    from lemevit.errors import DataError
    from lemevit.tasks.panoptic import PanopticConfig, PanopticTask

    semantic = make_tiles(tmp_path / "tiles")
    data = tmp_path / "panoptic"
    assert main(["prepare", "panoptic", "--data", str(semantic), "--output", str(data), "--things", "car"]) == 0
    doc = json.loads((data / ANNOTATIONS_FILE).read_text())
    for category in doc["categories"]:
        category["isthing"] = 0
    (data / ANNOTATIONS_FILE).write_text(json.dumps(doc))
    with pytest.raises(DataError, match="no category is a thing"):
        PanopticTask.prepare(PanopticConfig(data=str(data), output=str(tmp_path / "run")))


def square(top: int, left: int, size: int, score: float = 0.9, label: int = 1) -> Instance:
    return Instance(score, label, top, left, torch.ones(size, size, dtype=torch.bool))


def test_an_object_cut_by_a_window_border_is_merged_into_one():
    # Windows of 32 px at x 0 and 24 share columns 24..31. An object over columns 20..43 is cut by the first
    # window's right border (it sees columns 20..31) and found whole by the second.
    corners = [(0, 0), (0, 24)]
    cut = Instance(0.8, 1, 10, 20, torch.ones(6, 12, dtype=torch.bool))
    whole = Instance(0.9, 1, 10, 24, torch.ones(6, 20, dtype=torch.bool))
    other_class = Instance(0.7, 2, 10, 24, torch.ones(6, 4, dtype=torch.bool))
    apart = square(0, 26, 4)  # in the shared band too, but not over the object
    merged = merge_window_instances(corners, [[cut], [whole, other_class, apart]], window=32)
    assert len(merged) == 3
    (obj,) = [m for m in merged if m.label == 1 and m.mask.sum() > 16]
    assert (obj.top, obj.left, obj.bottom, obj.right) == (10, 20, 16, 44) and obj.mask.all() and obj.score == 0.9
    # Pieces that disagree on the shared band stay apart; pieces of one window are never merged.
    assert len(merge_window_instances(corners, [[square(0, 24, 8)], [square(4, 28, 8)]], window=32)) == 2
    assert len(merge_window_instances(corners, [[square(0, 24, 8), square(0, 24, 8)], []], window=32)) == 2


def test_an_object_over_four_windows_is_one():
    corners = [(0, 0), (0, 24), (24, 0), (24, 24)]
    # a 16 px square over the band all four windows share, each window seeing the part of it within its bounds
    pieces = [[Instance(0.6, 0, 20, 20, torch.ones(12, 12, dtype=torch.bool))],
              [Instance(0.7, 0, 20, 24, torch.ones(12, 12, dtype=torch.bool))],
              [Instance(0.8, 0, 24, 20, torch.ones(12, 12, dtype=torch.bool))],
              [Instance(0.5, 0, 24, 24, torch.ones(12, 12, dtype=torch.bool))]]
    (merged,) = merge_window_instances(corners, pieces, window=32)
    assert (merged.top, merged.left, merged.bottom, merged.right) == (20, 20, 36, 36) and merged.score == 0.8
    assert merged.mask.all()


def test_window_instances_are_clipped_to_the_scene_and_cropped():
    masks = torch.zeros(2, 16, 16)
    masks[0, 4:8, 10:16] = 0.9  # reaches into the padding of a scene 13 px wide
    masks[1, 0:2, 0:2] = 0.9
    found = window_instances({"scores": torch.tensor([0.8, 0.2]), "classes": torch.tensor([3, 3]), "masks": masks},
                             top=100, left=200, height=120, width=213, score_threshold=0.5)
    (instance,) = found
    assert (instance.top, instance.left, instance.bottom, instance.right) == (104, 210, 108, 213)


def test_head_widths_are_the_models_own_and_runs_saved_before_them_rebuild_as_they_were(tmp_path):
    from dataclasses import asdict, replace

    from lemevit.data.splits import Split
    from lemevit.data.statistics import Normalisation
    from lemevit.errors import ConfigError
    from lemevit.models.panoptic_fpn import LVT_HEADS, PanopticHeads
    from lemevit.tasks.panoptic import PanopticConfig, PanopticItem, PanopticTask

    def config(**given) -> PanopticConfig:
        return PanopticConfig(data=str(tmp_path), output=str(tmp_path / "run"), **given)

    assert config(model="resnet10t").heads() == PanopticHeads()  # Detectron2's
    assert config(model="lvt_backbone", mask_layers=2).heads() == replace(LVT_HEADS, mask_layers=2)
    with pytest.raises(ConfigError, match=r"semantic_channels: must be a multiple of semantic_groups \(12"):
        config(model="lvt", semantic_channels=64)
    with pytest.raises(ConfigError, match="box_channels: must be a positive integer"):
        config(model="lvt", box_channels=0)
    categories = [{"id": 1, "name": "road", "isthing": 0}, {"id": 2, "name": "car", "isthing": 1}]
    split = Split(tmp_path, {"train": [PanopticItem("a.png")], "val": [PanopticItem("b.png")]},
                  {"categories": categories})
    task = PanopticTask.from_config(config(model="lvt_backbone"), split,
                                    Normalisation(3, (0.0,) * 3, (1.0,) * 3, "uint8"))
    assert task.model.heads == LVT_HEADS
    assert {name: task.hparams[name] for name in asdict(LVT_HEADS)} == asdict(LVT_HEADS)  # saved with the run
    # A run saved before the widths were settings holds only semantic_channels: it rebuilds with the widths it had.
    saved = {k: v for k, v in task.hparams.items() if k not in asdict(LVT_HEADS)}
    assert PanopticTask(**saved, semantic_channels=128).model.heads == PanopticHeads()
