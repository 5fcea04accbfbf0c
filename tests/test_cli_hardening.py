"""What users do, driven through the command line: nothing overwritten, nothing mixed up, one line and exit 2 for
bad input. Each test names the item of the hardening issue (#16) it holds to."""
from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import FIXTURES
from PIL import Image

from lemevit.cli import main

TINY = ["--model", "resnet10t", "--epochs", "1", "--num-workers", "0", "--accelerator", "cpu"]
POTSDAM = Path(__file__).parents[1] / "src" / "lemevit" / "demo_data" / "potsdam_seg"
LEVIR = FIXTURES / "levir_cd"
DOTA = FIXTURES / "dota_v1_samples"


def scenes(root: Path, classes=("Farmland", "Forest"), per_class: int = 4, size: int = 32) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            image[..., c % 3] += 150
            Image.fromarray(image).save(root / name / f"{i}.png")
    return root


def error_of(capsys) -> str:
    """The one line a failed command printed (and that it is one line, without a traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def read_only_folder(tmp_path: Path) -> Path:
    """A folder no file can be written into: a read-only one, or for root (whom permissions do not stop) a
    place under /proc."""
    if os.geteuid() == 0:
        return Path("/proc/lemevit-read-only")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return folder


@pytest.fixture(scope="module")
def change_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("change") / "run"
    assert main(["train", "--task", "change", "--data", str(LEVIR), "--output", str(run), "--img-size", "64",
                 "--batch-size", "4", "--crops-per-pair", "1", "--window", "128", "--split", "0.8", *TINY]) == 0
    return run


@pytest.fixture(scope="module")
def det_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("det") / "run"
    assert main(["train", "--task", "detection", "--data", str(DOTA), "--output", str(run), "--img-size", "256",
                 "--batch-size", "2", "--split", "1.0", "--fpn-channels", "16", "--rpn-proposals", "50",
                 "--test-proposals", "20", *TINY]) == 0
    return run


# 1 ----------------------------------------------------------------------------------------------------------
def test_1_predict_refuses_outputs_that_would_replace_its_inputs(seg_run, change_run, det_run, tmp_path, capsys):
    victim = tmp_path / "victim.png"
    shutil.copy(POTSDAM / "img_dir" / "2_10_0_0_512_512.png", victim)
    before = victim.read_bytes()
    predict = ["predict", "--checkpoint", str(seg_run / "best.ckpt")]
    assert main(predict + [str(victim), "--output", str(victim)]) == 2
    assert "would overwrite the input" in error_of(capsys)
    folder = tmp_path / "scenes"
    folder.mkdir()
    shutil.copy(victim, folder / "a.png")
    assert main(predict + [str(folder), "--output", str(folder)]) == 2  # a.png's map would be folder/a.png
    assert "would overwrite the input" in error_of(capsys)

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    shutil.copy(LEVIR / "A" / "test_2_0000_0000.png", a)
    shutil.copy(LEVIR / "B" / "test_2_0000_0000.png", b)
    b_before = b.read_bytes()
    assert main(["predict", "--checkpoint", str(change_run / "best.ckpt"), "--pair", str(a), str(b), "--output",
                 str(b)]) == 2
    assert "would overwrite the input" in error_of(capsys)

    images = tmp_path / "det" / "images"
    shutil.copytree(DOTA / "images", images)
    det_before = {p.name: p.read_bytes() for p in images.iterdir()}
    assert main(["predict", "--checkpoint", str(det_run / "best.ckpt"), str(images), "--output", str(images)]) == 2
    assert "would overwrite the input" in error_of(capsys)
    assert victim.read_bytes() == before and b.read_bytes() == b_before
    assert {p.name: p.read_bytes() for p in images.iterdir()} == det_before and len(list(folder.iterdir())) == 1


# 2 ----------------------------------------------------------------------------------------------------------
def test_2_a_run_directory_in_use_is_refused_and_a_dead_run_s_lock_taken_over(tmp_path, capsys):
    data = scenes(tmp_path / "scenes")
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lemevit.lock").write_text(f"{os.uname().nodename} {holder.pid}")
        args = ["train", "--data", str(data), "--output", str(run), "--img-size", "32", "--batch-size", "4", *TINY]
        assert main(args) == 2
        assert f"is in use by process {holder.pid}" in error_of(capsys)
        assert sorted(p.name for p in run.iterdir()) == [".lemevit.lock"]  # nothing written before the lock
    finally:
        holder.kill()
        holder.wait()
    assert main(args) == 0  # the holder is gone: its lock is stale
    assert not (run / ".lemevit.lock").exists()


def test_2_resume_refuses_contradicting_options_and_records_the_ones_it_may_change(cls_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    assert main(["train", "--output", str(run), "--resume", "--model", "lemevit_tiny"]) == 2
    assert "--model: 'lemevit_tiny' contradicts the run being resumed, which has 'resnet10t'" in error_of(capsys)
    assert main(["train", "--output", str(run), "--resume", "--epochs", "2"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 2


def test_2_eval_checks_that_the_run_s_split_is_the_checkpoint_s(cls_run, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["train", "--data", str(scenes(tmp_path / "other-scenes", ("Beach", "Desert", "Port"))),
                 "--output", str(other), "--img-size", "32", "--batch-size", "4", "--split", "0.5", *TINY]) == 0
    mixed = tmp_path / "mixed"
    shutil.copytree(cls_run, mixed)
    shutil.copy(other / "split.json", mixed / "split.json")
    assert main(["eval", "--checkpoint", str(mixed / "best.ckpt"), "--output", str(tmp_path / "eval")]) == 2
    assert "is not the split of" in error_of(capsys)


# 3 ----------------------------------------------------------------------------------------------------------
def test_3_detection_predict_refuses_images_named_alike(det_run, tmp_path, capsys):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        shutil.copy(DOTA / "images" / "P0075.png", tmp_path / folder / "P0075.png")
    assert main(["predict", "--checkpoint", str(det_run / "best.ckpt"), str(tmp_path / "x"), str(tmp_path / "y"),
                 "--output", str(tmp_path / "out")]) == 2
    assert "inputs named alike" in error_of(capsys)
    assert not list((tmp_path / "out").glob("Task1_*"))


# 4 ----------------------------------------------------------------------------------------------------------
def test_4_predict_refuses_a_scene_of_another_data_type(cls_run, seg_run, tmp_path, capsys):
    picture = np.asarray(Image.open(next((cls_run.parent / "scenes" / "Forest").iterdir())))
    rgb16 = tmp_path / "rgb16.tif"
    pytest.importorskip("rasterio")
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(rgb16, "w", driver="GTiff", width=32, height=32, count=3, dtype="uint16") as ds:
            ds.write(picture.transpose(2, 0, 1).astype(np.uint16) * 257)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(cls_run / "best.ckpt"), str(rgb16), "--output",
                 str(tmp_path / "p.csv"), "--num-workers", "0"]) == 2
    assert "rgb16.tif holds uint16 values, the model was trained on uint8 images" in error_of(capsys)
    assert main(["predict", "--checkpoint", str(seg_run / "best.ckpt"), str(rgb16), "--output",
                 str(tmp_path / "map.tif")]) == 2
    assert "holds uint16 values" in error_of(capsys)


# 5 ----------------------------------------------------------------------------------------------------------
def test_5_runs_keep_absolute_paths_so_eval_and_resume_work_from_anywhere(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scenes(Path("scenes"))
    assert main(["train", "--data", "scenes", "--output", "run", "--img-size", "32", "--batch-size", "4",
                 "--split", "0.5", *TINY]) == 0
    assert yaml.safe_load(Path("run/config.yaml").read_text())["data"] == str(tmp_path / "scenes")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "best.ckpt"), "--output", "eval",
                 "--num-workers", "0"]) == 0
    assert main(["train", "--output", str(tmp_path / "run"), "--resume", "--epochs", "2"]) == 0
    capsys.readouterr()
    (tmp_path / "scenes").rename(tmp_path / "moved")
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "best.ckpt"), "--output", "eval"]) == 2
    assert f"the data folder {tmp_path / 'scenes'} of" in error_of(capsys)


# 6 ----------------------------------------------------------------------------------------------------------
def test_6_predict_names_a_bad_image_or_skips_it_and_lists_inputs_as_train_does(cls_run, tmp_path, capsys):
    folder = tmp_path / "inputs"
    shutil.copytree(cls_run.parent / "scenes" / "Forest", folder)
    (folder / "truncated.png").write_bytes((folder / "0.png").read_bytes()[:60])
    (folder / "._0.png").write_bytes(b"macOS resource fork")
    (folder / ".ipynb_checkpoints").mkdir()
    shutil.copy(folder / "0.png", folder / ".ipynb_checkpoints" / "0-checkpoint.png")
    out = tmp_path / "p.csv"
    predict = ["predict", "--checkpoint", str(cls_run / "best.ckpt"), str(folder), "--output", str(out),
               "--num-workers", "0"]
    assert main(predict) == 2
    assert "truncated.png" in error_of(capsys) and not out.exists()
    assert main(predict + ["--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed and "truncated.png" in printed
    assert [Path(r["path"]).name for r in csv.DictReader(out.open())] == ["0.png", "1.png", "2.png", "3.png"]


# 7 ----------------------------------------------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["LEMEVIT_TEST_MARKER"]),))


def test_7_checkpoints_are_read_without_running_what_they_pickle(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("LEMEVIT_TEST_MARKER", str(marker))
    crafted = tmp_path / "crafted.ckpt"
    with crafted.open("wb") as f:
        pickle.dump({"state_dict": {}, "hyper_parameters": {}, "payload": _Payload()}, f)
    assert main(["predict", "--checkpoint", str(crafted), str(tmp_path), "--output", str(tmp_path / "p.csv")]) == 2
    assert "is not a lemevit checkpoint that can be read safely" in error_of(capsys)
    assert not marker.exists()


# 8 ----------------------------------------------------------------------------------------------------------
def test_8_outputs_honour_the_umask_and_killed_runs_temporaries_are_removed(cls_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = run / f".last.ckpt.{os.uname().nodename}-{dead.pid}.x1y2z3.ckpt"
    leftover.write_bytes(b"half a checkpoint")
    previous = os.umask(0o022)
    try:
        assert main(["train", "--output", str(run), "--resume", "--epochs", "2"]) == 0
        assert main(["eval", "--checkpoint", str(run / "best.ckpt"), "--output", str(tmp_path / "eval"),
                     "--num-workers", "0"]) == 0
    finally:
        os.umask(previous)
    assert not leftover.exists()
    for path in (run / "last.ckpt", run / "config.yaml", tmp_path / "eval" / "metrics.json"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# 9, 10 ------------------------------------------------------------------------------------------------------
def test_9_10_data_that_cannot_teach_and_zero_epochs_are_refused_before_training(tmp_path, capsys):
    one = scenes(tmp_path / "one", ("Forest",))
    assert main(["train", "--data", str(one), "--output", str(tmp_path / "a"), *TINY]) == 2
    assert "a classifier needs two classes or more" in error_of(capsys)
    tiles = tmp_path / "tiles"
    for folder in ("img_dir", "ann_dir"):
        (tiles / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tiles / "img_dir" / "t.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tiles / "ann_dir" / "t.png")
    assert main(["train", "--task", "segmentation", "--data", str(tiles), "--preset", "potsdam", "--split", "1.0",
                 "--output", str(tmp_path / "b"), *TINY]) == 2
    assert "every pixel of the training masks is unlabelled" in error_of(capsys)
    assert main(["train", "--data", str(scenes(tmp_path / "two")), "--output", str(tmp_path / "c"), "--epochs",
                 "0"]) == 2
    assert "--epochs: must be a positive integer, got 0" in error_of(capsys)
    for name in "abc":
        assert not (tmp_path / name / "last.ckpt").exists()


# 11 ---------------------------------------------------------------------------------------------------------
def test_11_a_window_given_alone_brings_its_own_stride_and_detection_windows_their_overlap(seg_run, tmp_path):
    assert main(["eval", "--checkpoint", str(seg_run / "best.ckpt"), "--output", str(tmp_path / "e"),
                 "--window", "64", "--num-workers", "0"]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert (metrics["window"], metrics["stride"]) == (64, 48)  # not the run's stride of 96
    from lemevit.inference.detection import default_overlap
    from lemevit.tasks.detection import DetectionConfig

    assert DetectionConfig(data="d", output="o", img_size=16).overlap is None and default_overlap(16) == 3
    assert default_overlap(1024) == 200 and default_overlap(512) == 100


def test_11_a_stride_larger_than_the_window_names_the_option_given(seg_run, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(seg_run / "best.ckpt"), "--output", str(tmp_path / "e"),
                 "--stride", "300"]) == 2
    assert error_of(capsys) == ("lemevit eval: error: --stride: 300 is larger than the run's window (128)")


# 12 ---------------------------------------------------------------------------------------------------------
def test_12_upernet_trains_with_a_batch_of_one(tmp_path):
    assert main(["train", "--task", "segmentation", "--data", str(POTSDAM), "--preset", "potsdam", "--output",
                 str(tmp_path / "run"), "--img-size", "32", "--batch-size", "1", "--crops-per-tile", "1",
                 "--split", "1.0", "--decoder-channels", "8", "--window", "128", *TINY]) == 0


# 13 ---------------------------------------------------------------------------------------------------------
def test_13_a_run_s_own_config_can_be_given_back_to_train(seg_run, tmp_path):
    assert main(["train", "--config", str(seg_run / "config.yaml"), "--output", str(tmp_path / "again")]) == 0
    again = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())
    assert again["task"] == "segmentation" and again["output"] == str(tmp_path / "again")


# 14 ---------------------------------------------------------------------------------------------------------
def test_14_a_restart_after_a_kill_before_the_first_checkpoint_starts_a_clean_log(tmp_path):
    data = scenes(tmp_path / "scenes")
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "logs" / "metrics.csv").write_text("epoch,step,train/loss_step\n0,0,9.99\n0,1,9.98\n")
    (run / "config.yaml").write_text("task: classification\n")
    assert main(["train", "--data", str(data), "--output", str(run), "--img-size", "32", "--batch-size", "4",
                 "--split", "0.5", *TINY]) == 0
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    assert "9.99" not in {r.get("train/loss_step") for r in rows}
    assert [r["step"] for r in rows if r.get("train/loss_step")] == ["0"]


# 15 ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["--model", "nosuchnet"], "--model: unknown model 'nosuchnet'"),
    (["--accelerator", "gpu"], "--accelerator: gpu: this machine has no CUDA GPU"),
    (["--devices", "0"], "--devices: must be a positive number of devices or 'auto', got 0"),
])
def test_15_bad_training_options_are_one_line(args, message, tmp_path, capsys):
    if "gpu" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["train", "--data", str(scenes(tmp_path / "s")), "--output", str(tmp_path / "r"), "--img-size",
                 "32", "--num-workers", "0", "--epochs", "1", *args]) == 2
    assert message in error_of(capsys)


def test_15_data_of_the_wrong_kind_is_one_line_naming_it(tmp_path, capsys):
    afile = tmp_path / "a.txt"
    afile.write_text("not a folder")
    for task in ("classification", "segmentation", "change", "detection"):
        assert main(["train", "--task", task, "--data", str(afile), "--output", str(tmp_path / task)]) == 2
        assert str(afile) in error_of(capsys)
    nan_labels = tmp_path / "nan"
    (nan_labels / "images").mkdir(parents=True)
    (nan_labels / "labelTxt").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(nan_labels / "images" / "A.png")
    (nan_labels / "labelTxt" / "A.txt").write_text("nan 2 3 4 5 6 7 8 plane 0\n")
    assert main(["train", "--task", "detection", "--data", str(nan_labels), "--output", str(tmp_path / "n")]) == 2
    assert "A.txt:1:" in error_of(capsys)
    (nan_labels / "labelTxt" / "A.txt").write_text("imagesource:x\n")
    assert main(["train", "--task", "detection", "--data", str(nan_labels), "--output", str(tmp_path / "n")]) == 2
    assert f"{nan_labels}: the label files of its 1 image(s) hold no objects" in error_of(capsys)


def test_15_bad_prediction_options_are_refused_before_any_work(cls_run, tmp_path, capsys):
    predict = ["predict", "--checkpoint", str(cls_run / "best.ckpt"), str(cls_run.parent / "scenes")]
    for topk in ("-2", "0"):
        assert main(predict + ["--output", str(tmp_path / "p.csv"), "--topk", topk]) == 2
        assert "--topk: must be a positive integer" in error_of(capsys)
    locked = read_only_folder(tmp_path)
    assert main(predict + ["--output", str(locked / "p.csv")]) == 2
    assert "--output: cannot write into" in error_of(capsys)
    assert main(["eval", "--checkpoint", str(cls_run / "best.ckpt"), "--output", str(locked / "eval")]) == 2
    assert "--output: cannot write into" in error_of(capsys)
    assert main(["train", "--data", str(cls_run.parent / "scenes"), "--output", str(locked / "run")]) == 2
    assert "--output: cannot write into" in error_of(capsys)
    assert main(["benchmark", "--models", "resnet10t", "--output", str(locked / "bench")]) == 2
    assert "--output: cannot write into" in error_of(capsys)
    not_a_checkpoint = tmp_path / "x.ckpt"
    not_a_checkpoint.write_bytes(b"no checkpoint")
    assert main(["eval", "--checkpoint", str(not_a_checkpoint), "--output", str(tmp_path / "e")]) == 2
    assert "x.ckpt is not a lemevit checkpoint" in error_of(capsys)


def test_15_init_checkpoint_of_another_architecture_is_refused_and_another_task_s_backbone_is_used(
        cls_run, det_run, tmp_path, capsys):
    data = cls_run.parent / "scenes"
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "a"), "--img-size", "32",
                 "--init-checkpoint", str(cls_run / "best.ckpt"), *TINY[:1], "lemevit_tiny", *TINY[2:]]) == 2
    assert "does not fit LeMeViT" in error_of(capsys)
    # The backbone of a detection run starts a scene classifier (its classifier is initialised afresh).
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "b"), "--img-size", "32", "--split", "0.5",
                 "--batch-size", "4", "--init-checkpoint", str(det_run / "best.ckpt"), *TINY]) == 0
    started = torch.load(tmp_path / "b" / "last.ckpt", weights_only=True)["state_dict"]
    assert set(started) >= {"model.conv1.0.weight", "model.fc.weight"}


# 16 ---------------------------------------------------------------------------------------------------------
def test_16_messages_say_what_is_wrong(cls_run, seg_run, change_run, det_run, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    scene = POTSDAM / "img_dir" / "2_10_0_0_512_512.png"
    assert main(["predict", "--checkpoint", str(seg_run / "best.ckpt"), str(scene), "--output",
                 str(a_file / "map.png")]) == 2
    assert f"{a_file} is a file, so {a_file} cannot be a folder" in error_of(capsys)
    assert main(["predict", "--checkpoint", str(seg_run / "best.ckpt"), str(scene), "--output",
                 str(tmp_path / "map.jpg")]) == 2
    assert "the map of one scene is written as .tif, .tiff, .png, got" in error_of(capsys)
    assert main(["predict", "--checkpoint", str(change_run / "best.ckpt"), "--pair", str(LEVIR / "A"),
                 str(LEVIR / "B"), "--output", str(tmp_path / "c.png")]) == 2
    assert "is a folder; give the two image files of the pair" in error_of(capsys)
    assert main(["explain", "--checkpoint", str(cls_run / "best.ckpt"), str(scene), "--output",
                 str(tmp_path / "x.jpg")]) == 2
    assert "--output: is a PNG picture: it must end in .png" in error_of(capsys)
    assert main(["predict", "--checkpoint", str(det_run / "best.ckpt"), str(DOTA / "images"), "--output",
                 str(tmp_path / "x.png")]) == 2
    assert "--output: is a folder for several files" in error_of(capsys) and not (tmp_path / "x.png").exists()
    upper = tmp_path / "P.CSV"
    assert main(["predict", "--checkpoint", str(cls_run / "best.ckpt"), str(cls_run.parent / "scenes"), "--output",
                 str(upper), "--num-workers", "0"]) == 0 and upper.is_file()
    capsys.readouterr()
    assert main(["benchmark", "--models", "resnet10t", "--pairs", "resnet10t:pvt_v2_b1", "--output",
                 str(tmp_path / "b")]) == 2
    assert "--pairs: 'resnet10t:pvt_v2_b1' names pvt_v2_b1, which --models and --runtimes do not measure" \
        in error_of(capsys)
    assert main(["train", "--epochs", "many"]) == 2
    assert "--epochs: invalid int value: 'many'" in error_of(capsys)
    with pytest.raises(SystemExit) as usage:
        main(["models", "--num-classes", "many"])
    assert usage.value.code == 2


# 17 ---------------------------------------------------------------------------------------------------------
def test_17_detection_predict_shows_its_progress(det_run, tmp_path, capfd):
    assert main(["predict", "--checkpoint", str(det_run / "best.ckpt"), str(DOTA / "images"), "--output",
                 str(tmp_path / "out")]) == 0
    captured = capfd.readouterr()
    assert "Predicting" in captured.out + captured.err and "2/2" in captured.out + captured.err
