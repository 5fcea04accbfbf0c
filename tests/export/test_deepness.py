"""``lemevit export --format deepness``: the ONNX model QGIS's Deepness plugin runs as it is. Its contract, as the
plugin's model classes implement it (none of its code is vendored here): one NCHW input whose height and width are
the tile size, class probabilities (B, K, H, W) out, metadata JSON-encoded in ``metadata_props``, and each raw tile
multiplied by 1/255 then standardised with ``standardization_mean`` / ``standardization_std`` before it goes in."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from mlm_schema import mlm_errors
from PIL import Image
from sample_data import NAMES, make_tiles

from lemevit.cli import main
from lemevit.errors import ConfigError
from lemevit.export.deepness import standardization

ort = pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")
onnx = pytest.importorskip("onnx")

TINY = ["--model", "resnet10t", "--epochs", "1", "--num-workers", "0", "--accelerator", "cpu", "--img-size", "32",
        "--batch-size", "2", "--decoder-channels", "8", "--window", "64"]
IMAGENET_MEAN, IMAGENET_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    """A one-epoch run on 64-pixel crops of the shipped Potsdam tile (8-bit RGB PNGs, not georeferenced)."""
    root = tmp_path_factory.mktemp("rgb")
    data = make_tiles(root / "tiles", size=64)
    assert main(["train", "--task", "segmentation", "--data", str(data), "--output", str(root / "run"), "--split",
                 "1.0", *TINY]) == 0
    return data, root / "run"


@pytest.fixture(scope="module")
def uint16_run(tmp_path_factory):
    """A one-epoch run on 4-band 16-bit GeoTIFF tiles of 25 cm pixels in UTM."""
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    root = tmp_path_factory.mktemp("uint16")
    rng = np.random.default_rng(0)
    for folder in ("img_dir", "ann_dir"):
        (root / "tiles" / folder).mkdir(parents=True)
    for i in range(2):
        mask = rng.integers(1, 4, (64, 64)).astype(np.uint8)
        bands = (rng.integers(0, 20000, (4, 64, 64)) + 12000 * mask.astype(np.int64)).astype(np.uint16)
        for folder, array in (("img_dir", bands), ("ann_dir", mask[None])):
            with rasterio.open(root / "tiles" / folder / f"t{i}.tif", "w", driver="GTiff", width=64, height=64,
                               count=len(array), dtype=array.dtype.name, crs="EPSG:32632",
                               transform=Affine(0.25, 0, 500000 + 16 * i, 0, -0.25, 5000000)) as ds:
                ds.write(array)
    assert main(["train", "--task", "segmentation", "--data", str(root / "tiles"), "--output", str(root / "run"),
                 "--class-names", "a", "b", "c", "--ignore-value", "0", "--first-class-value", "1", "--split", "1.0",
                 *TINY]) == 0
    return root / "tiles", root / "run"


def _export(run, out, *extra) -> None:
    assert main(["export", "--checkpoint", str(run / "best.ckpt"), "--format", "deepness", "--output", str(out),
                 *extra]) == 0


def _metadata(path) -> dict:
    return {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}


def _as_the_plugin_feeds_it(tile_hwc: np.ndarray, metadata: dict) -> np.ndarray:
    """The plugin's preprocessing as its contract states it: raw values x 1/255, minus the mean, over the std, NCHW."""
    x = np.float32(tile_hwc[None] * (1.0 / 255.0))
    x = (x - np.float32(metadata["standardization_mean"])) / np.float32(metadata["standardization_std"])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _predicted_probabilities(run, scene, out) -> tuple[np.ndarray, np.ndarray]:
    """``lemevit predict``'s class map and float16 probabilities (K, H, W) of ``scene``."""
    rasterio = pytest.importorskip("rasterio")
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), str(scene), "--output", str(out),
                 "--probabilities", "--probabilities-dtype", "float16", "--no-preview"]) == 0
    with warnings.catch_warnings():  # a PNG scene's probabilities carry no georeference
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(out.with_name(f"{out.stem}_probabilities.tif")) as ds:
            probabilities = ds.read().astype(np.float32)
    if out.suffix == ".png":
        return np.asarray(Image.open(out)), probabilities
    with rasterio.open(out) as ds:
        return ds.read(1), probabilities


@pytest.mark.slow
def test_the_metadata_the_plugin_reads_are_there_json_encoded(rgb_run, tmp_path):
    _, run = rgb_run
    _export(run, tmp_path / "qgis", "--resolution-cm", "5")
    path = tmp_path / "qgis" / "model.deepness.onnx"
    metadata = _metadata(path)
    assert metadata["model_type"] == "Segmentor"
    assert metadata["class_names"] == {str(i): name for i, name in enumerate(NAMES)}
    assert metadata["resolution"] == 5.0
    assert metadata["tile_size"] == 64 and metadata["tiles_overlap"] == 25  # the run's window, its stride 48
    assert metadata["seg_thresh"] == 0.0  # the most probable class everywhere, as predict gives it
    np.testing.assert_allclose(metadata["standardization_mean"], np.array(IMAGENET_MEAN) / 255)
    np.testing.assert_allclose(metadata["standardization_std"], np.array(IMAGENET_STD) / 255)
    proto = onnx.load(str(path))
    # What onnxruntime 1.17, the newest the plugin installs, reads: IR version 9, opset 20 at most.
    assert proto.ir_version <= 9 and all(o.version <= 20 for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    # The plugin takes its tile size from the input's shape and counts the classes from the output's.
    assert inp.shape[1:] == [3, 64, 64] and isinstance(inp.shape[0], str)
    assert out.shape[1:] == [len(NAMES), 64, 64]
    probabilities = session.run(None, {inp.name: np.random.default_rng(0).normal(size=(3, 3, 64, 64))
                                       .astype(np.float32)})[0]
    assert probabilities.shape == (3, len(NAMES), 64, 64)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    item = json.loads((tmp_path / "qgis" / "item.json").read_text())
    assert mlm_errors(item) == []
    assert item["assets"]["model-deepness-onnx"]["href"] == "./model.deepness.onnx"
    assert "mlm:model" in item["assets"]["model-deepness-onnx"]["roles"]


@pytest.mark.slow
def test_an_8_bit_tile_scaled_and_standardised_as_the_plugin_does_gives_predict_s_probabilities(rgb_run, tmp_path):
    data, run = rgb_run
    _export(run, tmp_path / "qgis", "--resolution-cm", "5")
    path = tmp_path / "qgis" / "model.deepness.onnx"
    scene = data / "img_dir" / "tile1.png"
    classes, expected = _predicted_probabilities(run, scene, tmp_path / "pred" / "tile1.png")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": _as_the_plugin_feeds_it(np.asarray(Image.open(scene)), _metadata(path))})[0][0]
    np.testing.assert_allclose(got, expected, atol=2e-3)  # predict stored them as float16
    assert (got.argmax(axis=0) == classes).mean() >= 0.999


@pytest.mark.slow
def test_a_16_bit_geotiff_run_takes_its_resolution_from_the_data_and_reproduces_predict(uint16_run, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    data, run = uint16_run
    _export(run, tmp_path / "qgis")
    path = tmp_path / "qgis" / "model.deepness.onnx"
    metadata = _metadata(path)
    assert metadata["resolution"] == pytest.approx(25.0)  # 0.25 m pixels
    from lemevit.engine.eval_predict import load_task

    hp = load_task(run / "best.ckpt").hparams
    assert hp.input_dtype == "uint16" and min(hp.mean) > 255  # raw 16-bit statistics, far beyond 8-bit values
    np.testing.assert_allclose(metadata["standardization_mean"], np.array(hp.mean) / 255, rtol=1e-6)
    np.testing.assert_allclose(metadata["standardization_std"], np.array(hp.std) / 255, rtol=1e-6)
    scene = data / "img_dir" / "t1.tif"
    classes, expected = _predicted_probabilities(run, scene, tmp_path / "pred" / "t1.tif")
    with rasterio.open(scene) as ds:
        tile = ds.read().transpose(1, 2, 0)
    assert tile.dtype == np.uint16 and tile.max() > 255
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": _as_the_plugin_feeds_it(tile, metadata)})[0][0]
    np.testing.assert_allclose(got, expected, atol=2e-3)
    assert (got.argmax(axis=0) == classes).mean() >= 0.999


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.slow
def test_without_a_resolution_a_run_of_plain_pngs_is_refused_before_anything_is_written(rgb_run, tmp_path, capsys):
    _, run = rgb_run
    assert main(["export", "--checkpoint", str(run / "best.ckpt"), "--format", "deepness", "--output",
                 str(tmp_path / "qgis")]) == 2
    assert "--resolution-cm" in _one_line(capsys)
    assert not any((tmp_path / "qgis").iterdir())
    assert main(["export", "--checkpoint", str(run / "best.ckpt"), "--format", "deepness", "--output",
                 str(tmp_path / "qgis"), "--resolution-cm", "-5"]) == 2
    assert "--resolution-cm" in _one_line(capsys)
    assert main(["export", "--checkpoint", str(run / "best.ckpt"), "--format", "deepness", "--output",
                 str(tmp_path / "qgis"), "--resolution-cm", "5", "--opset", "21"]) == 2
    assert "--opset" in _one_line(capsys)
    assert not any((tmp_path / "qgis").iterdir())


@pytest.mark.slow
def test_what_deepness_cannot_run_is_refused_in_one_line(scene_run, tmp_path, capsys):
    _, run = scene_run
    assert main(["export", "--checkpoint", str(run / "best.ckpt"), "--format", "deepness", "--output",
                 str(tmp_path / "a"), "--resolution-cm", "5"]) == 2
    assert "--format" in (err := _one_line(capsys)) and "classification" in err
    assert main(["export", "--model", "resnet10t", "--format", "deepness", "--output", str(tmp_path / "b")]) == 2
    assert "--format" in _one_line(capsys)
    assert main(["export", "--model", "resnet10t", "--format", "onnx", "--resolution-cm", "5", "--output",
                 str(tmp_path / "c")]) == 2
    assert "--resolution-cm" in _one_line(capsys)


def test_the_standardisation_reproduces_any_affine_normalisation_of_a_type_the_plugin_reads():
    raw = np.array([[0.0, 3000.0, 65535.0]], np.float64).T
    mean, std = [1200.0, 800.0, 40000.0], [300.0, 90.0, 5000.0]
    plugin_mean, plugin_std = standardization(mean, std, "uint16")
    np.testing.assert_allclose((raw / 255 - plugin_mean) / plugin_std, (raw - mean) / std, rtol=1e-9)
    with pytest.raises(ConfigError, match="images are int8"):
        standardization(mean, std, "int8")  # QGIS hands the plugin no tile of this type
    with pytest.raises(ConfigError, match="positive"):
        standardization(mean, [300.0, 0.0, 1.0], "uint16")


@pytest.mark.slow
def test_a_panoptic_model_goes_to_deepness_as_its_semantic_branch(tmp_path):
    import torch

    from lemevit.export.deepness import deepness_model, write_deepness
    from lemevit.tasks.panoptic import PanopticTask

    categories = [{"id": 1, "name": "road", "isthing": 0, "color": [128, 64, 128]},
                  {"id": 2, "name": "car", "isthing": 1, "color": [0, 0, 142]},
                  {"id": 3, "name": "tree", "isthing": 0, "color": [0, 128, 0]}]
    module = PanopticTask("resnet10t", categories, img_size=64, fpn_channels=32, semantic_channels=32,
                          box_channels=64, mask_channels=32, mask_layers=1).eval()
    model = deepness_model(module, tmp_path / "no.ckpt", resolution_cm=10)
    assert model.metadata["class_names"] == {"0": "things (car)", "1": "road", "2": "tree"}
    path, _ = write_deepness(model, tmp_path / "model.deepness.onnx")
    x = torch.randn(2, 3, 64, 64)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
    with torch.no_grad():
        expected = torch.stack([out["semantic"].softmax(0) for out in module.model(x)])
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
