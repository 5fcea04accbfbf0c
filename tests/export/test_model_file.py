"""The portable model file: a run exported to model.safetensors + config.json evaluates and predicts as its
checkpoint does, loads into timm and lemevit without unpickling, and starts other runs; bad uses are one line."""
from __future__ import annotations

import csv
import json

import pytest
import timm
import torch
from sample_data import CLASSES, make_tiles

import lemevit
from lemevit.cli import main
from lemevit.engine import load_task
from lemevit.tasks.base import initial_weights


def test_an_exported_run_evaluates_and_predicts_as_its_checkpoint(scene_run, tmp_path):
    data, run = scene_run
    exported = tmp_path / "model"
    assert main(["export", "--checkpoint", str(run / "best.ckpt"), "--output", str(exported)]) == 0
    config = json.loads((exported / "config.json").read_text())
    assert config["architecture"] == "lemevit_tiny" and config["lemevit"]["task"] == "classification"
    assert config["pretrained_cfg"]["label_names"] == list(CLASSES)
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]

    for name, checkpoint in (("ckpt", run / "best.ckpt"), ("file", exported)):
        assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--output",
                     str(tmp_path / f"eval_{name}")]) == 0
        assert main(["predict", "--checkpoint", str(checkpoint), str(data / "Forest"), "--output",
                     str(tmp_path / f"pred_{name}.csv")]) == 0
    metrics = [json.loads((tmp_path / f"eval_{n}" / "metrics.json").read_text()) for n in ("ckpt", "file")]
    assert metrics[0]["confusion_matrix"] == metrics[1]["confusion_matrix"]
    assert metrics[0]["top1"] == metrics[1]["top1"]
    rows = [list(csv.DictReader((tmp_path / f"pred_{n}.csv").open())) for n in ("ckpt", "file")]
    assert [r["class_1"] for r in rows[0]] == [r["class_1"] for r in rows[1]]


def test_timm_and_lemevit_load_an_exported_classifier(scene_run, tmp_path):
    _, run = scene_run
    assert main(["export", "--checkpoint", str(run / "best.ckpt"), "--output", str(tmp_path / "m")]) == 0
    trained = load_task(run / "best.ckpt").model
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = trained(x)
        # timm keeps a classifier whose size is the pretrained_cfg's num_classes: the overlay says it.
        overlay = timm.create_model("lemevit_tiny", pretrained=True, num_classes=len(CLASSES),
                                    pretrained_cfg_overlay=dict(file=str(tmp_path / "m" / "model.safetensors"),
                                                                num_classes=len(CLASSES)))
        from_folder = timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True)
        ours = lemevit.create_model("lemevit_tiny", num_classes=len(CLASSES), checkpoint=tmp_path / "m")
        for model in (overlay, from_folder, ours):
            torch.testing.assert_close(model.eval()(x), expected)
    assert from_folder.pretrained_cfg["label_names"] == list(CLASSES)


def test_a_dense_run_exports_with_onnx_and_gives_its_backbone_to_other_models(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")
    data = make_tiles(tmp_path / "tiles")
    run = tmp_path / "run"
    assert main(["train", "--task", "segmentation", "--data", str(data), "--output", str(run), "--model",
                 "lemevit_tiny", "--img-size", "32", "--epochs", "1", "--batch-size", "2", "--num-workers", "0",
                 "--decoder-channels", "16", "--split", "0.67"]) == 0
    exported = tmp_path / "model"
    assert main(["export", "--checkpoint", str(run / "best.ckpt"), "--format", "onnx", "--output",
                 str(exported)]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime against PyTorch at 32x32 (the graph's size is fixed: UPerNet's pyramid pooling)" in out
    assert (exported / "model.onnx").stat().st_size > 0

    trained = load_task(run / "best.ckpt").model.encoder
    backbone = lemevit.create_model("lemevit_tiny", features_only=True, checkpoint=exported)
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(backbone.state_dict()[key], value)
    # What --init-checkpoint gives a run of any task: the same backbone weights, from the file or the checkpoint.
    from_file, from_checkpoint = initial_weights(exported), initial_weights(run / "best.ckpt")
    assert from_file.keys() == from_checkpoint.keys()
    for key, value in from_checkpoint.items():
        torch.testing.assert_close(from_file[key], value)

    # The model file is also what another run starts from (its backbone), and what eval reads.
    assert main(["eval", "--checkpoint", str(exported), "--data", str(data), "--output", str(tmp_path / "e1")]) == 0
    assert main(["eval", "--checkpoint", str(run / "best.ckpt"), "--data", str(data), "--output",
                 str(tmp_path / "e2")]) == 0
    scores = [json.loads((tmp_path / e / "metrics.json").read_text())["miou"] for e in ("e1", "e2")]
    assert scores[0] == scores[1]


def test_bad_uses_of_export_and_of_model_files_are_one_line(scene_run, tmp_path, capsys):
    data, run = scene_run
    bare = tmp_path / "bare"
    assert main(["export", "--model", "lemevit_tiny", "--num-classes", "3", "--output", str(bare)]) == 0
    capsys.readouterr()
    not_ours = tmp_path / "hf"
    not_ours.mkdir()
    (not_ours / "config.json").write_text('{"architecture": "resnet18"}')
    cases = [
        (["export", "--checkpoint", str(run / "best.ckpt"), "--features-only", "--output", str(tmp_path / "x")],
         "--features-only"),
        (["eval", "--checkpoint", str(bare), "--data", str(data), "--output", str(tmp_path / "y")], "bare"),
        (["eval", "--checkpoint", str(tmp_path / "exported_later"), "--output", str(tmp_path / "y")], "does not"),
        (["eval", "--checkpoint", str(not_ours), "--data", str(data), "--output", str(tmp_path / "y")],
         "not a lemevit"),
    ]
    assert main(["export", "--checkpoint", str(run / "best.ckpt"), "--output", str(tmp_path / "exported")]) == 0
    cases.append((["eval", "--checkpoint", str(tmp_path / "exported"), "--output", str(tmp_path / "y")], "--data"))
    capsys.readouterr()
    for args, expected in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, (args, err)
