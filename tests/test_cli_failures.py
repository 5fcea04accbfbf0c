"""What goes wrong around a run, driven through the command line: a full disk, Ctrl-C, a broken ``last.ckpt``, an
unreadable image met by a DataLoader worker. Each ends with one line saying what happened and what to do, and
leaves nothing half-written. Each test names the item of issue #29 it holds to."""
from __future__ import annotations

import errno
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli_hardening import scenes

from lemevit.cli import main
from lemevit.tasks.base import BaseTask

TINY = ["--model", "resnet10t", "--img-size", "32", "--batch-size", "4", "--split", "0.5", "--num-workers", "0",
        "--accelerator", "cpu"]


def error_of(capsys) -> str:
    """The one line a failed command printed (and that it is one line, without a traceback)."""
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("lemevit ")]
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return scenes(tmp_path_factory.mktemp("failures") / "scenes")


@pytest.fixture(scope="module")
def run(data) -> Path:
    output = data.parent / "run"
    assert main(["train", "--data", str(data), "--output", str(output), "--epochs", "1", *TINY]) == 0
    return output


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB file system (a tmpfs), where a checkpoint of a few MiB cannot be written; skipped where it cannot
    be mounted (not root, no CAP_SYS_ADMIN)."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    # Lazily: a file a failed test left open must not keep the mount (and the test folder) in place.
    subprocess.run(["umount", "--lazy", str(folder)], check=True)


def _not_temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if p.is_file())


# 4 ----------------------------------------------------------------------------------------------------------
def test_4_training_onto_a_full_disk_is_one_line_naming_the_checkpoint(data, small_disk, capsys):
    output = small_disk / "run"
    assert main(["train", "--data", str(data), "--output", str(output), "--epochs", "1", *TINY]) == 2
    line = error_of(capsys)
    assert "no space left on the device to write" in line and "MiB free there" in line, line
    assert not (output / "last.ckpt").exists() and not (output / "best.ckpt").exists()
    assert _not_temporaries(output) == [], "a half-written temporary was left"


def test_4_a_prediction_meeting_a_full_disk_names_its_output_and_leaves_nothing(run, data, tmp_path, capsys,
                                                                                monkeypatch):
    out = tmp_path / "predictions.json"

    def disk_full(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(data / "Forest"), "--output", str(out),
                 "--num-workers", "0"]) == 2
    line = error_of(capsys)
    assert f"no space left on the device to write {out}: it needs more than the" in line, line
    assert list(tmp_path.iterdir()) == [], "a half-written file was left"


# 5 ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_5_resume_over_a_broken_last_checkpoint_names_it_and_suggests_best(run, tmp_path, capsys, damage):
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(run), str(copy)], check=True)
    last = copy / "last.ckpt"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:5000])
    else:
        torch.save({"weights": torch.zeros(3)}, last)
    assert main(["train", "--output", str(copy), "--resume"]) == 2
    line = error_of(capsys)
    assert str(last) in line and "best.ckpt" in line and "afresh" in line, line


# 6 ----------------------------------------------------------------------------------------------------------
def test_6_an_unreadable_image_met_by_a_worker_is_the_worker_s_one_line(run, data, tmp_path, capsys):
    folder = tmp_path / "inputs"
    folder.mkdir()
    for name in ("0.png", "1.png"):
        (folder / name).write_bytes((data / "Forest" / name).read_bytes())
    (folder / "truncated.png").write_bytes((data / "Forest" / "2.png").read_bytes()[:60])
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(folder), "--output", str(out),
                 "--num-workers", "1"]) == 2
    line = error_of(capsys)
    assert line.startswith(f"lemevit predict: error: cannot read image {folder / 'truncated.png'}: "), line
    assert "Traceback" not in line and "worker" not in line and not out.exists()


# 7 ----------------------------------------------------------------------------------------------------------
def _ctrl_c_at(monkeypatch, method: str, when) -> None:
    original = getattr(BaseTask, method)

    def interrupted(self, *args, **kwargs):
        if when(self):
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(BaseTask, method, interrupted)


def test_7_ctrl_c_in_training_says_how_to_resume_and_exits_130(data, tmp_path, capsys, monkeypatch):
    output = tmp_path / "run"
    handler = signal.getsignal(signal.SIGINT)
    # In the second epoch, after the first wrote last.ckpt.
    _ctrl_c_at(monkeypatch, "on_train_batch_start", lambda module: module.current_epoch == 1)
    assert main(["train", "--data", str(data), "--output", str(output), "--epochs", "2", *TINY]) == 130
    assert error_of(capsys) == f"lemevit train: interrupted; resume with: lemevit train --output {output} --resume"
    assert signal.getsignal(signal.SIGINT) is handler, "Lightning's SIG_IGN was left in place"
    monkeypatch.undo()
    assert main(["train", "--output", str(output), "--resume"]) == 0


def test_7_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(data, tmp_path, capsys, monkeypatch):
    _ctrl_c_at(monkeypatch, "on_train_batch_start", lambda module: True)
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "run"), "--epochs", "1", *TINY]) == 130
    assert "nothing to resume" in error_of(capsys)


def test_7_ctrl_c_in_prediction_says_what_was_written_and_exits_130(run, data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "p.csv"
    monkeypatch.setattr(BaseTask, "on_predict_epoch_end", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(data / "Forest"), "--output", str(out),
                 "--num-workers", "0"]) == 130
    assert error_of(capsys) == f"lemevit predict: interrupted; nothing was written to {out}; run the same command again"
    assert not out.exists()


# 3 ----------------------------------------------------------------------------------------------------------
def _untrained(task, path: Path, **hparams) -> Path:
    """The checkpoint of an untrained ``task`` module: what a run's checkpoint holds, without the training."""
    from lemevit.io.checkpoint import TASK_KEY

    torch.manual_seed(0)
    module = task(**hparams)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), TASK_KEY: task.name},
               path)
    return path


def test_3_vectors_of_a_scene_without_a_crs_are_refused_before_anything_is_written(tmp_path, capsys):
    rasterio = pytest.importorskip("rasterio")
    pytest.importorskip("pyogrio")
    from rasterio.errors import NotGeoreferencedWarning

    from lemevit.labels import PRESETS
    from lemevit.tasks.detection import DetectionTask
    from lemevit.tasks.segmentation import SegmentationTask

    plain = tmp_path / "plain.tif"
    with pytest.warns(NotGeoreferencedWarning), rasterio.open(plain, "w", driver="GTiff", width=64, height=64,
                                                               count=3, dtype="uint8") as ds:
        ds.write(np.full((3, 64, 64), 100, np.uint8))
    segmentation = _untrained(SegmentationTask, tmp_path / "seg.ckpt", model="resnet10t",
                              labels=PRESETS["potsdam"].to_dict(), head="fpn", decoder_channels=8, img_size=32)
    detection = _untrained(DetectionTask, tmp_path / "det.ckpt", model="resnet10t", num_classes=2,
                           class_names=["plane", "ship"], img_size=64, fpn_channels=16, test_proposals=10)
    out = tmp_path / "out"
    cases = [(segmentation, ["--output", str(out / "map.tif"), "--vector", "geojson"]),
             (detection, ["--output", str(out), "--vector", "geojson"])]
    for checkpoint, options in cases:
        assert main(["predict", "--checkpoint", str(checkpoint), str(plain), "--accelerator", "cpu",
                     *options]) == 2
        line = error_of(capsys)
        assert line.startswith(f"lemevit predict: error: --vector: {plain} is not georeferenced"), line
        assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())
    # Without --vector, detection still predicts the image and says why it has no GeoJSON.
    assert main(["predict", "--checkpoint", str(detection), str(plain), "--accelerator", "cpu", "--output",
                 str(out)]) == 0
    assert "no geojson: the GeoTIFF is not georeferenced" in capsys.readouterr().out


# 1 ----------------------------------------------------------------------------------------------------------
def _float_scenes(root: Path, nodata: float | None) -> Path:
    """Two classes of float32 GeoTIFFs whose top-left corner is NaN, declared as nodata or not."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    for c, name in enumerate(("Farmland", "Forest")):
        (root / name).mkdir(parents=True)
        for i in range(4):
            image = rng.normal(0.2, 0.05, (3, 32, 32)).astype(np.float32)
            image[c] += 0.5
            image[:, :6, :6] = np.nan
            with rasterio.open(root / name / f"{i}.tif", "w", driver="GTiff", width=32, height=32, count=3,
                               dtype="float32", crs="EPSG:32633", transform=from_origin(0, 0, 1, 1),
                               nodata=nodata) as ds:
                ds.write(image)
    return root


def test_1_training_honours_a_declared_nan_nodata_and_predict_says_how_many_pixels_were_no_data(tmp_path, capsys):
    declared = _float_scenes(tmp_path / "declared", nodata=np.nan)
    run = tmp_path / "run"
    assert main(["train", "--data", str(declared), "--output", str(run), "--epochs", "1", *TINY]) == 0
    weights = torch.load(run / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    capsys.readouterr()

    undeclared = _float_scenes(tmp_path / "undeclared", nodata=None)
    out = tmp_path / "p.csv"
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(undeclared / "Forest" / "0.tif"),
                 "--output", str(out), "--num-workers", "0"]) == 0
    assert "0.tif: 36 pixels of no data (NaN or infinite values) read as the band means" in capsys.readouterr().out
    assert "nan" not in out.read_text().lower()

    assert main(["train", "--data", str(undeclared), "--output", str(tmp_path / "refused"), "--epochs", "1",
                 *TINY]) == 2
    assert "holds NaN or infinite values that it does not declare as no data" in error_of(capsys)


def test_1_segmentation_of_a_float_scene_with_undeclared_nan_maps_them_as_no_data(tmp_path, capsys):
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    from lemevit.labels import PRESETS
    from lemevit.tasks.segmentation import SegmentationTask

    checkpoint = _untrained(SegmentationTask, tmp_path / "seg.ckpt", model="resnet10t",
                            labels=PRESETS["potsdam"].to_dict(), head="fpn", decoder_channels=8, img_size=32)
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 64, 80)).astype(np.float32)
    pixels[:, 10:14, 20:30] = np.nan  # 40 pixels, 0.8 %
    with rasterio.open(tmp_path / "scene.tif", "w", driver="GTiff", width=80, height=64, count=3, dtype="float32",
                       crs="EPSG:32633", transform=from_origin(0, 0, 1, 1)) as ds:
        ds.write(pixels)
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "scene.tif"), "--output",
                 str(tmp_path / "map.tif"), "--accelerator", "cpu"]) == 0
    assert "80x64 class map, 40 pixels of no data (0.8%) left out" in capsys.readouterr().out
    with rasterio.open(tmp_path / "map.tif") as ds:
        classes, nodata = ds.read(1), ds.nodata
    np.testing.assert_array_equal(classes == nodata, np.isnan(pixels[0]))


def test_a_config_error_raised_in_a_worker_names_the_flag(monkeypatch, capsys):
    from torch._utils import ExceptionWrapper

    from lemevit import cli
    from lemevit.errors import ConfigError

    def predict_in_a_worker(argv, context):
        try:
            raise ConfigError("crops_per_tile", "must be a positive integer, got 0")
        except ConfigError:
            ExceptionWrapper(where="in DataLoader worker process 0").reraise()

    monkeypatch.setattr(cli, "cmd_predict", predict_in_a_worker)
    assert cli.main(["predict"]) == 2
    line = capsys.readouterr().err.strip()
    assert line == "lemevit predict: error: --crops-per-tile: must be a positive integer, got 0"
