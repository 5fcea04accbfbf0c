"""eval and predict on onnxruntime give what they give on torch: the same top-1 classes and scores, the same class
maps but for a few pixels; the export is made once and kept beside the checkpoint."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from sample_data import make_tiles

from lemevit.cli import main

pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")


def test_classification_on_onnxruntime_agrees_with_torch_and_caches_its_export(scene_run, tmp_path, capsys):
    data, run = scene_run
    checkpoint = tmp_path / "best.ckpt"
    shutil.copy(run / "best.ckpt", checkpoint)
    for runtime in ("torch", "onnxruntime"):
        assert main(["predict", "--checkpoint", str(checkpoint), str(data), "--output",
                     str(tmp_path / f"{runtime}.csv"), "--runtime", runtime]) == 0
        assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--output",
                     str(tmp_path / runtime), "--runtime", runtime]) == 0
    rows = {r: list(csv.DictReader((tmp_path / f"{r}.csv").open())) for r in ("torch", "onnxruntime")}
    assert [row["class_1"] for row in rows["torch"]] == [row["class_1"] for row in rows["onnxruntime"]]
    np.testing.assert_allclose([float(r["prob_1"]) for r in rows["torch"]],
                               [float(r["prob_1"]) for r in rows["onnxruntime"]], atol=1e-4)
    metrics = {r: json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("torch", "onnxruntime")}
    assert metrics["torch"]["confusion_matrix"] == metrics["onnxruntime"]["confusion_matrix"]

    cached = tmp_path / "best.onnx"
    assert cached.is_file()
    made = cached.stat().st_mtime_ns
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--output", str(tmp_path / "again"),
                 "--runtime", "onnxruntime"]) == 0
    assert cached.stat().st_mtime_ns == made

    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--output", str(tmp_path / "gpu"),
                 "--runtime", "onnxruntime", "--accelerator", "gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--runtime" in err and "--accelerator" in err


def test_segmentation_maps_on_onnxruntime_equal_torch_s(tmp_path):
    data = make_tiles(tmp_path / "tiles", size=96)
    run = tmp_path / "run"
    assert main(["train", "--task", "segmentation", "--data", str(data), "--output", str(run), "--model",
                 "lemevit_tiny", "--img-size", "32", "--epochs", "1", "--batch-size", "2", "--num-workers", "0",
                 "--decoder-channels", "16", "--split", "0.67"]) == 0
    scene = data / "img_dir" / "tile0.png"
    for runtime in ("torch", "onnxruntime"):
        assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(scene), "--output",
                     str(tmp_path / runtime), "--runtime", runtime]) == 0
    maps = [np.asarray(Image.open(tmp_path / r / "tile0.png")) for r in ("torch", "onnxruntime")]
    assert maps[0].shape == (96, 96)
    assert (maps[0] == maps[1]).mean() >= 0.999


def test_int8_is_an_export_format_and_a_runtime(scene_run, tmp_path, capsys):
    data, run = scene_run
    checkpoint = tmp_path / "best.ckpt"
    shutil.copy(run / "best.ckpt", checkpoint)
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx-int8", "--output",
                 str(tmp_path / "model")]) == 0
    assert "model.int8.onnx: onnxruntime against PyTorch" in capsys.readouterr().out
    assert {p.name for p in (tmp_path / "model").iterdir()} >= {"model.onnx", "model.int8.onnx"}
    for source in (checkpoint, tmp_path / "model"):
        out = tmp_path / f"int8_{source.name}"
        assert main(["eval", "--checkpoint", str(source), "--data", str(data), "--output", str(out),
                     "--runtime", "onnxruntime-int8"]) == 0
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["num_images"] == 18 and 0 <= metrics["top1"] <= 1
    assert (tmp_path / "best.int8.onnx").is_file() and (tmp_path / "best.onnx").is_file()
