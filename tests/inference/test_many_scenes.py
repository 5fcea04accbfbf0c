"""predict over many scenes: processes share the scenes out and write what one process writes, a predict that was
stopped resumes without redoing the scenes it finished, and one summary line is printed."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from sample_data import make_tiles

from lemevit.cli import main


@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("many_scenes")
    data = make_tiles(root / "tiles", corners=((0, 0), (200, 120), (380, 300), (100, 400)))
    run = root / "run"
    assert main(["train", "--task", "segmentation", "--data", str(data), "--output", str(run), "--model",
                 "lemevit_tiny", "--img-size", "32", "--epochs", "1", "--batch-size", "2", "--num-workers", "0",
                 "--decoder-channels", "16", "--split", "0.75"]) == 0
    return data / "img_dir", run / "best.ckpt"


def _maps(folder) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("tile?.png"))}


def test_two_processes_write_the_maps_one_process_writes(segmentation_run, tmp_path):
    scenes, checkpoint = segmentation_run
    assert main(["predict", "--checkpoint", str(checkpoint), str(scenes), "--output", str(tmp_path / "one")]) == 0
    done = subprocess.run([sys.executable, "-m", "lemevit.cli", "predict", "--checkpoint", str(checkpoint),
                           str(scenes), "--output", str(tmp_path / "two"), "--accelerator", "cpu", "--devices", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    one, two = _maps(tmp_path / "one"), _maps(tmp_path / "two")
    assert len(one) == 4 and one.keys() == two.keys()
    for name in one:
        np.testing.assert_array_equal(one[name], two[name])
    assert done.stdout.count("scene(s) predicted") == 1
    assert "4 scene(s) predicted: " in done.stdout and "Mpx/s; the network" in done.stdout


def test_a_stopped_predict_resumes_without_redoing_finished_scenes(segmentation_run, tmp_path, capsys):
    scenes, checkpoint = segmentation_run
    out = tmp_path / "maps"
    args = ["predict", "--checkpoint", str(checkpoint), str(scenes), "--output", str(out)]
    assert main(args) == 0
    complete = _maps(out)
    # A predict killed after two scenes leaves their maps and previews (each written atomically) and nothing else.
    for name in ("tile2", "tile3"):
        (out / f"{name}.png").unlink()
        (out / f"{name}_preview.png").unlink()
    (out / "tile1_preview.png").unlink()  # killed between a map and its preview: that scene is done again
    finished = {name: (out / name).stat().st_mtime_ns for name in ("tile0.png", "tile0_preview.png")}
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "3 scene(s) predicted, 1 kept from an earlier run" in printed
    assert {name: (out / name).stat().st_mtime_ns for name in finished} == finished
    assert (out / "tile1_preview.png").is_file()
    for name, value in _maps(out).items():
        np.testing.assert_array_equal(value, complete[name])

    assert main(args) == 0
    assert "0 scene(s) predicted, 4 kept" in capsys.readouterr().out
    assert main(args + ["--overwrite"]) == 0
    assert "4 scene(s) predicted: " in capsys.readouterr().out
