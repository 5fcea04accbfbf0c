"""What a new user runs into, driven through the command line (issue 29, items 8 to 15): refusals that say what is
wrong before anything is written, and outputs and help that say what they are. Each test names its item."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli_hardening import POTSDAM, TINY, error_of, scenes

from lemevit.cli import main


# 12 ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("task", "data", "model", "message"), [
    ("classification", None, "no_such_model", "--model: unknown model 'no_such_model'"),
    ("segmentation", POTSDAM, "vit_tiny_patch16_224", "--model: vit_tiny_patch16_224 has feature maps at strides"),
])
def test_12_a_bad_model_is_refused_before_the_run_writes_anything(task, data, model, message, tmp_path, capsys):
    data = data or scenes(tmp_path / "scenes")
    out = tmp_path / "run"
    extra = ["--preset", "potsdam", "--split", "1.0"] if task == "segmentation" else []
    assert main(["train", "--task", task, "--data", str(data), "--output", str(out), "--img-size", "32", *extra,
                 *TINY[2:], "--model", model]) == 2
    assert message in error_of(capsys)
    assert not any(out.iterdir()) if out.exists() else True


# 9 ----------------------------------------------------------------------------------------------------------
def test_9_an_unsafe_or_damaged_checkpoint_is_told_as_what_it_is_not_without_torch_s_advice(tmp_path, capsys):
    import torch

    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": {}, "where": Path("/x")}, unsafe)
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(4096)}, "hyper_parameters": {}}, whole)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(whole.read_bytes()[:3000])
    text = tmp_path / "notes.ckpt"
    text.write_text("not weights")
    expected = {unsafe: "holds Python objects besides tensors and plain values (pathlib.PosixPath), which could run "
                        "code when loaded, and lemevit loads no code from a file",
                truncated: "it is truncated: a torch file whose end is missing",
                text: "it is not a torch file (nor a safetensors file)"}
    for path, reason in expected.items():
        assert main(["eval", "--checkpoint", str(path), "--output", str(tmp_path / "e")]) == 2
        line = error_of(capsys)
        assert f"{path} is not a lemevit checkpoint that can be read safely: " in line and reason in line, line
        assert "weights_only" not in line and "trust" not in line
    data = scenes(tmp_path / "scenes")
    fake = tmp_path / "weights.safetensors"
    fake.write_text("not weights")
    for path, reason in ((fake, f"{fake} is not a safetensors file, or it is truncated"),
                         (unsafe.rename(tmp_path / "unsafe.pth"), "holds Python objects besides tensors")):
        assert main(["train", "--data", str(data), "--output", str(tmp_path / "run"), "--img-size", "32",
                     "--init-checkpoint", str(path), *TINY]) == 2
        line = error_of(capsys)
        assert reason in line and "weights_only" not in line, line


# 11 ---------------------------------------------------------------------------------------------------------
def test_11_eval_of_another_task_s_data_names_the_layout_found_and_the_one_needed(cls_run, seg_run, tmp_path,
                                                                                  capsys):
    from conftest import FIXTURES

    cases = [(cls_run, POTSDAM, "is laid out as segmentation data (img_dir/ (images) and ann_dir/"),
             (cls_run, FIXTURES / "levir_cd", "is laid out as change data (A/, B/ and label/"),
             (cls_run, FIXTURES / "dota_v1_samples", "is laid out as detection data (DOTA's images/ and labelTxt/"),
             (seg_run, cls_run.parent / "scenes", "is laid out as classification data (a folder per class")]
    for run, data, found in cases:
        assert main(["eval", "--checkpoint", str(run / "best.ckpt"), "--data", str(data), "--output",
                     str(tmp_path / "e")]) == 2
        line = error_of(capsys)
        task = "classification" if run == cls_run else "segmentation"
        needed = "a folder per class holding its images" if run == cls_run else "img_dir/ (images) and ann_dir/"
        assert f"--data: {data} {found}" in line and f"a {task} model needs {needed}" in line, line
    # Its own layout is evaluated as before.
    assert main(["eval", "--checkpoint", str(seg_run / "best.ckpt"), "--data", str(POTSDAM), "--output",
                 str(tmp_path / "e")]) == 0


# 13 ---------------------------------------------------------------------------------------------------------
def _predict(run: Path, scenes_folder: Path, output: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lemevit.cli", "predict", "--checkpoint", str(run / "best.ckpt"),
                             str(scenes_folder), "--output", str(output), "--accelerator", "cpu", "--no-preview"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})


def _tiles(folder: Path, count: int) -> Path:
    tile = next((POTSDAM / "img_dir").iterdir())
    folder.mkdir()
    for i in range(count):
        shutil.copy(tile, folder / f"tile{i}.png")
    return folder


@pytest.mark.slow
def test_13_predicts_into_one_folder_share_the_maps_out(seg_run, tmp_path):
    from lemevit.io.lock import OutputLock

    tiles = _tiles(tmp_path / "tiles", 2)
    out = tmp_path / "maps"
    out.mkdir()
    # This process writes tile0's map: the predict started beside it leaves that map to it.
    lock = OutputLock(out / "tile0.png")
    assert lock.try_acquire() is None
    try:
        done = _predict(seg_run, tiles, out)
        stdout, stderr = done.communicate(timeout=300)
    finally:
        lock.release()
    assert done.returncode == 0, stderr
    assert not (out / "tile0.png").exists() and (out / "tile1.png").is_file()
    assert f"1 scene(s) predicted, 1 left to another predict writing them (process {os.getpid()} on" in stdout
    assert not list(out.glob(".*.lock"))
    # Two predicts at once write each map once between them.
    tiles = _tiles(tmp_path / "more", 4)
    both = [_predict(seg_run, tiles, tmp_path / "shared") for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in both]
    assert all(p.returncode == 0 for p in both), [err for _, err in outputs]
    written = [line.split()[1].rstrip(":") for stdout, _ in outputs for line in stdout.splitlines()
               if line.startswith("wrote ")]
    assert sorted(written) == sorted(str(tmp_path / "shared" / f"tile{i}.png") for i in range(4)), outputs


# 15 ---------------------------------------------------------------------------------------------------------
def test_15_resume_of_a_finished_run_says_it_is_complete_without_training(cls_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    before = (run / "last.ckpt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", "--output", str(run), "--num-workers", "0"]) == 0
    out = capsys.readouterr().out
    assert f"{run} is complete: it trained the 1 epochs of --epochs 1; give more to train on" in out
    assert (run / "last.ckpt").read_bytes() == before
    assert main(["train", "--resume", "--output", str(run), "--num-workers", "0", "--epochs", "2"]) == 0
    assert "is complete" not in capsys.readouterr().out and (run / "last.ckpt").read_bytes() != before


@pytest.mark.parametrize("command", [[], ["train"], ["train", "--task", "panoptic"], ["export"], ["demo"],
                                     ["predict"], ["prepare", "panoptic"]])
def test_15_help_is_plain_text_and_demo_names_its_folder(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "`" not in text, [line for line in text.splitlines() if "`" in line]
    if command == ["demo"]:
        assert "default lemevit-demo" in text and "run/, eval/" in text
    if command == ["train"]:
        assert "the global batch --lr is given for" in text  # a field named in help is its flag


def test_15_prepare_panoptic_copies_the_images_unless_asked_to_link_them(tmp_path, capsys):
    for link, same in (([], False), (["--link"], True)):
        out = tmp_path / f"panoptic{len(link)}"
        assert main(["prepare", "panoptic", "--data", str(POTSDAM), "--preset", "potsdam", "--output", str(out),
                     "--things", "building", "car", "--min-area", "16", *link]) == 0
        said = capsys.readouterr().out
        source = next((POTSDAM / "img_dir").iterdir())
        assert (source.stat().st_ino == (out / "img_dir" / source.name).stat().st_ino) is same
        assert ("hard-linked" in said) is same and ("copied" in said) is not same


def test_15_summaries_count_what_they_predicted(tmp_path):
    from lemevit.tasks.change import ChangeTask
    from lemevit.tasks.detection import DetectionPredictOptions, DetectionTask

    detector = DetectionTask("resnet10t", num_classes=2, class_names=["plane", "ship"], img_size=64, fpn_channels=16,
                             rpn_proposals=10, test_proposals=10)
    options = DetectionPredictOptions(checkpoint="run/best.ckpt", output=str(tmp_path / "boxes"), inputs=["a.png"])
    record = {"image": "a.png", "quads": np.zeros((3, 4, 2)), "scores": np.array([0.9, 0.2, 0.1]),
              "labels": np.array([0, 1, 1]), "png": "boxes/a.png", "drawn": 1, "pixels": 64 * 64, "seconds": {},
              "vector": None, "no_data_pixels": 0}
    lines = detector.finish_prediction([record], options)
    assert "a.png: 3 objects (1 drawn in boxes/a.png, 2 under --draw-threshold 0.3)" in lines
    change = ChangeTask("resnet10t", "siamunet", img_size=64)
    change._kept, change._prediction_seconds = [], 0.0
    assert change.prediction_summary([]).startswith("0 pair(s) predicted")


def test_15_panoptic_predict_draws_a_preview_and_says_what_it_lacks(tmp_path, capsys):
    import torch

    from lemevit.data.splits import Split
    from lemevit.data.statistics import Normalisation
    from lemevit.io.checkpoint import TASK_KEY
    from lemevit.tasks.panoptic import PanopticConfig, PanopticTask

    cfg = PanopticConfig(data=str(tmp_path), output=str(tmp_path / "run"), model="resnet10t", img_size=64,
                         fpn_channels=16, box_channels=16, mask_channels=16, semantic_channels=16, semantic_groups=4,
                         stuff_area=16)
    categories = [{"id": 1, "name": "road", "isthing": 0, "color": [255, 255, 255]},
                  {"id": 2, "name": "car", "isthing": 1, "color": [255, 255, 0]}]
    module = PanopticTask.from_config(cfg, Split(tmp_path, {"train": ["a"], "val": ["b"]}, {"categories": categories}),
                                      Normalisation(3, (120.0,) * 3, (60.0,) * 3, "uint8"))
    checkpoint = tmp_path / "panoptic.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), TASK_KEY: "panoptic"},
               checkpoint)
    tile = next((POTSDAM / "img_dir").iterdir())
    assert main(["predict", "--checkpoint", str(checkpoint), str(tile), "--output", str(tmp_path / "out")]) == 0
    preview = tmp_path / "out" / f"{tile.stem}_preview.png"
    assert str(preview) in capsys.readouterr().out
    assert Image.open(preview).size == Image.open(tile).size
    for lacking in (["--runtime", "onnxruntime"], ["--html"]):
        assert main(["predict", "--checkpoint", str(checkpoint), str(tile), "--output", str(tmp_path / "o"),
                     *lacking]) == 2
        assert "panoptic" in error_of(capsys)
    with pytest.raises(SystemExit):
        main(["predict", "--checkpoint", str(checkpoint), "--help"])
    assert "Every task but panoptic, which has no ONNX export" in " ".join(capsys.readouterr().out.split())
