"""Detection over scenes of any size: windows read from the raster (memory follows the window batch, not the scene),
windows of no data not run, the work of an untrained model's box head capped before NMS."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lemevit.cli import main
from lemevit.io.checkpoint import TASK_KEY
from lemevit.tasks.detection import DetectionTask

# Held whole, the 6000 x 6000 scene would take 103 MiB as uint8 and 412 MiB as the float32 the windows are cut from;
# lemevit 0.1's detection read it whole and drew on a float64 copy: 2,592 MiB of growth on this probe. Read by windows,
# it holds a batch of two 1024 px windows with the detector's activations, the drawn picture (every second pixel,
# 3000 x 3000, in three copies while drawn) and GDAL's cache: 219-274 MiB over 6 runs here, the 6000 x 1024 scene
# 137-209 MiB (the allocator's arenas make both vary).
MEMORY_BOUND_MIB = 360
SIZE_SLACK_MIB = 200


def write_detector(path, img_size: int = 1024, **kwargs) -> None:
    """The checkpoint of an untrained detector over timm's smallest ConvNeXt: what a run's checkpoint holds."""
    torch.manual_seed(0)
    module = DetectionTask("test_convnext", num_classes=2, class_names=["plane", "ship"], img_size=img_size,
                           fpn_channels=16, test_proposals=50, **kwargs)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                TASK_KEY: DetectionTask.name}, path)


def patterned_geotiff(path, width: int, height: int, nodata_border: int = 0) -> None:
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4600000, 0.5, 0.5), tiled=True,
                       compress="deflate", nodata=0 if nodata_border else None) as ds:
        columns = np.arange(width)
        for top in range(0, height, 512):
            rows = np.arange(top, min(top + 512, height))[:, None]
            pattern = ((rows * 7 + columns * 3) % 250 + 1).astype(np.uint8)
            bands = np.stack([pattern, pattern[:, ::-1], pattern // 2 + 64])
            if nodata_border:
                inside = ((rows >= nodata_border) & (rows < height - nodata_border)
                          & (columns >= nodata_border) & (columns < width - nodata_border))
                bands = np.where(inside, bands, 0).astype(np.uint8)
            ds.write(bands, window=Window(0, top, width, len(rows)))


_MEMORY_PROBE = textwrap.dedent("""
    import json, re, sys
    from pathlib import Path
    from lemevit.engine.eval_predict import predict
    from lemevit.tasks.detection import DetectionPredictOptions

    def kib(key):
        return int(re.search(key + r":\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))

    checkpoint, out, *scenes = sys.argv[1:]
    measured = {}
    for scene in scenes:  # the first, small, takes the one-off allocations: libraries, GDAL, oneDNN
        Path("/proc/self/clear_refs").write_text("5")
        base = kib("VmRSS")
        options = DetectionPredictOptions(checkpoint=checkpoint, inputs=[scene], output=out + "/" + Path(scene).stem,
                                          batch_size=2, accelerator="cpu", num_workers=0)
        lines = predict(options, progress=False)
        measured[Path(scene).stem] = {"peak_mib": (kib("VmHWM") - base) / 1024, "lines": lines}
    print(json.dumps(measured))
""")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS is read from /proc/self/status")
def test_detecting_over_a_6000_pixel_geotiff_keeps_memory_bounded(tmp_path):
    write_detector(tmp_path / "detector.ckpt")
    patterned_geotiff(tmp_path / "small.tif", 1200, 1200)
    patterned_geotiff(tmp_path / "narrow.tif", 6000, 1024)  # the same width, a sixth of the height
    patterned_geotiff(tmp_path / "square.tif", 6000, 6000)
    done = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(tmp_path / "detector.ckpt"), str(tmp_path),
                           *(str(tmp_path / f"{name}.tif") for name in ("small", "narrow", "square"))],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    square, narrow = measured["square"], measured["narrow"]
    print(f"peak RSS growth detecting over 6000x6000: {square['peak_mib']:.0f} MiB, 6000x1024: "
          f"{narrow['peak_mib']:.0f} MiB (bound {MEMORY_BOUND_MIB} MiB)")
    assert square["peak_mib"] < MEMORY_BOUND_MIB
    # Six times the rows cost little more than the drawn picture grows by: the windows are read a batch at a time.
    assert square["peak_mib"] < narrow["peak_mib"] + SIZE_SLACK_MIB
    summary = next(line for line in square["lines"] if "Mpx in" in line)
    assert summary.startswith("36.0 Mpx in") and "backbone" in summary and "merge" in summary
    assert (tmp_path / "square" / "square.png").is_file() and (tmp_path / "square" / "square.geojson").is_file()


def test_windows_of_no_data_are_not_run(tmp_path, capsys):
    write_detector(tmp_path / "detector.ckpt", img_size=256, overlap=0)
    patterned_geotiff(tmp_path / "bordered.tif", 1024, 1024, nodata_border=300)  # 4 x 4 windows, 2 x 2 with data
    windows = []
    original = DetectionTask.forward

    def counting(self, images):
        windows.append(len(images))
        return original(self, images)

    DetectionTask.forward = counting
    try:
        assert main(["predict", "--checkpoint", str(tmp_path / "detector.ckpt"), str(tmp_path / "bordered.tif"),
                     "--output", str(tmp_path / "out"), "--accelerator", "cpu", "--batch-size", "16"]) == 0
    finally:
        DetectionTask.forward = original
    assert sum(windows) == 4
    assert re.search(r"1\.0 Mpx in [\d.]+ s", capsys.readouterr().out)


def test_an_untrained_box_head_sends_at_most_pre_nms_top_k_candidates_to_nms(tmp_path):
    torch.manual_seed(0)
    module = DetectionTask("test_convnext", num_classes=15, img_size=256, fpn_channels=16, test_proposals=300).eval()
    # Near-uniform class scores (1/16 each) all pass the 0.05 threshold: 300 proposals x 15 classes = 4500.
    calls = []
    from lemevit.models import oriented_rcnn

    original = oriented_rcnn.rotated_multiclass_nms

    def counting(boxes, box_index, scores, labels, iou_threshold):
        calls.append(len(box_index))
        return original(boxes, box_index, scores, labels, iou_threshold)

    oriented_rcnn.rotated_multiclass_nms = counting
    try:
        with torch.inference_mode():
            module.model.pre_nms_top_k = 10_000
            module.model(torch.randn(1, 3, 256, 256))
            module.model.pre_nms_top_k = 500
            capped = module.model(torch.randn(1, 3, 256, 256))
    finally:
        oriented_rcnn.rotated_multiclass_nms = original
    assert calls[0] > 2000 and calls[1] == 500
    assert len(capped[0]["scores"]) <= 500


def test_nan_pixels_of_a_float_scene_are_no_data_even_undeclared(tmp_path, capsys):
    # Issue #29, 1: NaN pixels reached the network (NaN features, and so boxes anywhere or none); they are no
    # data like a declared nodata value: their windows are not run, and the line says how many there were.
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import from_origin

    write_detector(tmp_path / "detector.ckpt", img_size=256, overlap=0)
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 512, 512)).astype(np.float32)
    pixels[:, :256] = np.nan  # the top two of the 2 x 2 windows
    pixels[0, 300, 300] = np.nan
    with rasterio.open(tmp_path / "float.tif", "w", driver="GTiff", width=512, height=512, count=3, dtype="float32",
                       crs="EPSG:32633", transform=from_origin(500000, 4600000, 0.5, 0.5)) as ds:
        ds.write(pixels)
    fed = []
    original = DetectionTask.forward

    def recording(self, images):
        fed.append(images.clone())
        return original(self, images)

    DetectionTask.forward = recording
    try:
        assert main(["predict", "--checkpoint", str(tmp_path / "detector.ckpt"), str(tmp_path / "float.tif"),
                     "--output", str(tmp_path / "out"), "--accelerator", "cpu"]) == 0
    finally:
        DetectionTask.forward = original
    assert sum(len(batch) for batch in fed) == 2 and all(torch.isfinite(batch).all() for batch in fed)
    assert f"{256 * 512 + 1:,} pixels of no data (50.0%) left out" in capsys.readouterr().out
