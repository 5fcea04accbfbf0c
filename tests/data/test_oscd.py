"""OSCD as released (cropped cities in tests/fixtures/oscd): each labelled city's two dates of 13 band files at
10, 20 and 60 m stacked on the first date's 10 m grid as reflectance, its 1/2 change map as 0/255, the split
from train.txt / test.txt or named cities; then a 13-band change model trained on it predicts a pair of the
release's band folders into a change map on their 10 m grid, in their CRS."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import FIXTURES

from lemevit.cli import main
from lemevit.data.oscd import OSCD_IMAGES, prepare_oscd, read_oscd_label
from lemevit.errors import DataError, DiskFullError
from lemevit.io.bands import SENTINEL2_BANDS

rasterio = pytest.importorskip("rasterio")
from PIL import Image  # noqa: E402

OSCD = FIXTURES / "oscd"
LABELS = OSCD / "Onera Satellite Change Detection dataset - Train Labels"


def date_band(city: str, date: str, band: str):
    (path,) = (OSCD / OSCD_IMAGES / city / date).glob(f"*_{band}.tif")
    return rasterio.open(path)


def test_the_release_becomes_a_change_data_set_of_13_bands_on_the_10m_grid(tmp_path, capsys):
    out = tmp_path / "oscd"
    assert main(["prepare", "oscd", "--data", str(OSCD), "--output", str(out)]) == 0
    assert "wrote 2 cities (train 2) of 13 bands" in capsys.readouterr().out
    # test.txt's city has no labels in this release: only the labelled cities, and no val list (train --split).
    assert sorted(p.name for p in (out / "A").iterdir()) == ["abudhabi.tif", "beirut.tif"]
    assert (out / "list" / "train.txt").read_text().split() == ["abudhabi", "beirut"]
    assert not (out / "list" / "val.txt").exists()
    with date_band("abudhabi", "imgs_1", "B02") as b02:
        dn, grid = b02.read(1), (b02.crs, b02.transform, b02.height, b02.width)
    with rasterio.open(out / "A" / "abudhabi.tif") as a, rasterio.open(out / "B" / "abudhabi.tif") as b:
        for ds in (a, b):
            assert (ds.crs, ds.transform, ds.height, ds.width) == grid and ds.count == 13
            assert ds.descriptions == tuple(SENTINEL2_BANDS) and ds.dtypes[0] == "float32"
            assert ds.tags()["LEMEVIT_VALUES"] == "reflectance"
        np.testing.assert_allclose(a.read(2), dn * 1e-4, rtol=1e-6)
        # The 60 m B01 of the first date, bilinear on the 10 m grid: within its own range.
        with date_band("abudhabi", "imgs_1", "B01") as b01:
            coarse = b01.read(1) * 1e-4
        assert coarse.min() - 1e-6 <= a.read(1).min() and a.read(1).max() <= coarse.max() + 1e-6
        second = b.read()
        assert np.isfinite(second).all() and 0.0 < second.mean() < 1.0
    cm = read_oscd_label(LABELS / "abudhabi" / "cm" / "abudhabi-cm.tif")
    label = np.asarray(Image.open(out / "label" / "abudhabi.png"))
    assert set(np.unique(label)) == {0, 255} and ((label == 255) == cm).all() and 0 < cm.mean() < 1


def test_cities_can_be_named_and_bands_chosen(tmp_path):
    (tmp_path / "train.txt").write_text("beirut\n")
    (tmp_path / "val.txt").write_text("# held out\nabudhabi\n")
    summary = prepare_oscd(OSCD, tmp_path / "rgb", bands=["B04", "B03", "B02"], progress=False,
                           split_files={"train": tmp_path / "train.txt", "val": tmp_path / "val.txt"})
    assert summary["subsets"] == {"train": 1, "val": 1} and summary["bands"] == ["B04", "B03", "B02"]
    assert (tmp_path / "rgb" / "list" / "val.txt").read_text() == "abudhabi\n"
    with rasterio.open(tmp_path / "rgb" / "B" / "beirut.tif") as ds:
        assert ds.descriptions == ("B04", "B03", "B02")
    (tmp_path / "val.txt").write_text("norcia\n")
    with pytest.raises(DataError, match="norcia has no change map"):
        prepare_oscd(OSCD, tmp_path / "x", split_files={"train": tmp_path / "train.txt", "val": tmp_path / "val.txt"},
                     progress=False)


TINY = ["--model", "resnet10t", "--head", "siamunet", "--img-size", "32", "--epochs", "1", "--batch-size", "2",
        "--num-workers", "0", "--split", "0.5"]


def hparams(checkpoint):
    import torch

    return torch.load(checkpoint, map_location="cpu", weights_only=True)["hyper_parameters"]


@pytest.fixture(scope="module")
def release_run(tmp_path_factory):
    """A run trained on the release itself: stacked once into the run, then trained on as a prepared folder."""
    run = tmp_path_factory.mktemp("oscd") / "run"
    assert main(["train", "--task", "change", "--data", str(OSCD), "--output", str(run), *TINY]) == 0
    return run


@pytest.mark.slow
def test_training_on_the_release_stacks_it_into_the_run_once(release_run, tmp_path):
    stack = release_run / "oscd"
    assert sorted(p.name for p in (stack / "A").iterdir()) == ["abudhabi.tif", "beirut.tif"]
    assert json.loads((release_run / "split.json").read_text())["root"] == str(stack)
    assert list(hparams(release_run / "last.ckpt")["band_names"]) == list(SENTINEL2_BANDS)
    # A run moved elsewhere resumes on the stack inside it, reused as it is.
    shutil.copytree(release_run, tmp_path / "old")
    run = (tmp_path / "old").rename(tmp_path / "run")
    stacked = {p: p.stat().st_mtime_ns for p in (run / "oscd").rglob("*")}
    stack.rename(tmp_path / "elsewhere")
    try:
        assert main(["train", "--output", str(run), "--resume", "--epochs", "2"]) == 0
    finally:
        (tmp_path / "elsewhere").rename(stack)
    assert {p: p.stat().st_mtime_ns for p in (run / "oscd").rglob("*")} == stacked


@pytest.mark.slow
def test_eval_scores_the_named_cities_of_the_release(release_run, tmp_path, capsys):
    (tmp_path / "test.txt").write_text("beirut\n")
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(release_run / "best.ckpt"), "--data", str(OSCD), "--split-files",
                 f"test={tmp_path / 'test.txt'}", "--output", str(tmp_path / "eval"), "--num-workers", "0"]) == 0
    assert "on 1 pairs" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert [p["name"] for p in metrics["per_pair"]] == ["beirut"]
    # Stacked with the bands the model was trained on.
    with rasterio.open(tmp_path / "eval" / "oscd" / "A" / "beirut.tif") as ds:
        assert ds.descriptions == tuple(SENTINEL2_BANDS)
    assert main(["eval", "--checkpoint", str(release_run / "best.ckpt"), "--data", str(OSCD), "--output",
                 str(tmp_path / "eval2")]) == 2
    assert capsys.readouterr().err.startswith("lemevit eval: error: --split-files: is required with the OSCD release")
    assert main(["eval", "--checkpoint", str(release_run / "best.ckpt"), "--data", str(OSCD), "--split-files",
                 f"val={tmp_path / 'test.txt'}", "--output", str(tmp_path / "eval2")]) == 2
    assert capsys.readouterr().err.startswith("lemevit eval: error: --split-files: takes test=FILE")
    # A folder of pairs too: only those the file names are scored.
    (tmp_path / "test.txt").write_text("abudhabi\n")
    assert main(["eval", "--checkpoint", str(release_run / "best.ckpt"), "--data", str(release_run / "oscd"),
                 "--split-files", f"test={tmp_path / 'test.txt'}", "--output", str(tmp_path / "eval3"),
                 "--num-workers", "0"]) == 0
    metrics = json.loads((tmp_path / "eval3" / "metrics.json").read_text())
    assert [p["name"] for p in metrics["per_pair"]] == ["abudhabi"]


@pytest.mark.slow
def test_rgb_bands_of_the_release_train_a_3_band_model(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--task", "change", "--data", str(OSCD), "--output", str(run), "--bands", "B04", "B03",
                 "B02", *TINY]) == 0
    hp = hparams(run / "best.ckpt")
    assert hp["in_chans"] == 3 and list(hp["band_names"]) == ["B04", "B03", "B02"] and hp["reflectance"] is True


@pytest.mark.parametrize("data, given, said", [
    ("release", ["--bands", "B04", "B99"], "--bands: takes Sentinel-2 bands, each once, of B01 B02"),
    ("release", ["--bands", "B04", "B04"], "--bands: takes Sentinel-2 bands, each once"),
    ("pairs", ["--bands", "B04", "B03", "B02"], "--bands: picks the bands of the OSCD release, and"),
    ("pairs", ["--reflectance-scale", "0.001"], "--reflectance-scale: picks the bands of the OSCD release"),
])
def test_bands_are_refused_in_one_line_naming_the_flag(tmp_path, capsys, data, given, said):
    root = OSCD if data == "release" else FIXTURES / "levir_cd"
    assert main(["train", "--task", "change", "--data", str(root), "--output", str(tmp_path / "run"), *given,
                 *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lemevit train: error: {said}") and err.count("\n") == 1
    assert not (tmp_path / "run" / "oscd").exists()


def test_a_stack_cut_short_is_done_again_never_used(tmp_path, monkeypatch):
    from lemevit.data import oscd

    out = tmp_path / "run" / "oscd"
    written = []
    real = oscd._write_date

    def fail_on_the_third_date(path, *args):
        if len(written) == 2:
            raise OSError(28, "No space left on device (simulated)")
        written.append(path)
        real(path, *args)

    monkeypatch.setattr(oscd, "_write_date", fail_on_the_third_date)
    with pytest.raises(DiskFullError, match="to write .*run/oscd"):
        oscd.stack_oscd(OSCD, out, ["B04", "B03", "B02"], progress=False)
    # Nothing at the stack's place, and no partial folder beside it.
    assert not out.exists() and list((tmp_path / "run").iterdir()) == []
    monkeypatch.setattr(oscd, "_write_date", real)
    # A folder there without the stack's record (stacked by hand, or by an older lemevit) is stacked anew.
    (out / "A").mkdir(parents=True)
    (out / "A" / "abudhabi.tif").write_bytes(b"half")
    assert oscd.stack_oscd(OSCD, out, ["B04", "B03", "B02"], progress=False) == out
    with rasterio.open(out / "A" / "abudhabi.tif") as ds:
        assert ds.count == 3
    record = (out / oscd.STACK_FILE).stat().st_mtime_ns
    oscd.stack_oscd(OSCD, out, ["B04", "B03", "B02"], progress=False)
    assert (out / oscd.STACK_FILE).stat().st_mtime_ns == record
    # Other bands: stacked anew, in place of the other.
    oscd.stack_oscd(OSCD, out, ["B08"], progress=False)
    with rasterio.open(out / "B" / "beirut.tif") as ds:
        assert ds.descriptions == ("B08",)


def test_change_maps_of_other_values_are_refused(tmp_path):
    Image.fromarray(np.array([[0, 3], [1, 2]], np.uint8)).save(tmp_path / "cm.png")
    with pytest.raises(DataError, match=r"cm.png holds the values \[0, 1, 2, 3\]"):
        read_oscd_label(tmp_path / "cm.png")


@pytest.mark.slow
def test_a_13_band_model_predicts_a_pair_of_the_release_band_folders(tmp_path, capsys):
    data = tmp_path / "oscd"
    assert main(["prepare", "oscd", "--data", str(OSCD), "--output", str(data)]) == 0
    run = tmp_path / "run"
    assert main(["train", "--task", "change", "--data", str(data), "--output", str(run), "--model", "resnet10t",
                 "--head", "siamunet", "--img-size", "32", "--epochs", "1", "--batch-size", "2", "--num-workers",
                 "0", "--split", "0.5"]) == 0
    import torch

    hparams = torch.load(run / "best.ckpt", map_location="cpu", weights_only=True)["hyper_parameters"]
    assert list(hparams["band_names"]) == list(SENTINEL2_BANDS) and hparams["reflectance"] is True
    dates = [str(OSCD / OSCD_IMAGES / "norcia" / date) for date in ("imgs_1", "imgs_2")]
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), "--pair", *dates, "--output",
                 str(tmp_path / "norcia.tif"), "--num-workers", "0"]) == 2
    assert "--reflectance-scale:" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(run / "best.ckpt"), "--pair", *dates, "--output",
                 str(tmp_path / "norcia.tif"), "--reflectance-scale", "0.0001", "--num-workers", "0"]) == 0
    with date_band("norcia", "imgs_1", "B02") as b02, rasterio.open(tmp_path / "norcia.tif") as ds:
        assert ds.crs == b02.crs and ds.crs.to_epsg() == 4326 and ds.transform == b02.transform
        assert (ds.height, ds.width) == (b02.height, b02.width)
        assert set(np.unique(ds.read(1))) <= {0, 255}
