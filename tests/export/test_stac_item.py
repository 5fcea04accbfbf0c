"""Every export writes item.json, a STAC Item with the MLM extension v1.5 describing the model and its files, valid
against the extension's JSON schema and the schemas it references (vendored: the test runs offline)."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from mlm_schema import MLM, RASTER_DATA_TYPES, mlm_errors

import lemevit
from lemevit.cli import main
from lemevit.export import export_model


def _item(folder) -> dict:
    return json.loads((folder / "item.json").read_text())


@pytest.mark.slow
def test_a_run_s_export_is_described_by_a_valid_mlm_item(scene_run, tmp_path, capsys):
    data, run = scene_run
    out = tmp_path / "model"
    assert main(["export", "--checkpoint", str(run / "best.ckpt"), "--format", "onnx", "--output", str(out),
                 "--band-names", "red", "green", "blue"]) == 0
    assert str(out / "item.json") in capsys.readouterr().out
    item = _item(out)
    assert mlm_errors(item) == []
    assert MLM in item["stac_extensions"]
    props = item["properties"]
    assert props["mlm:name"] and props["mlm:architecture"] == "lemevit_tiny"
    assert props["mlm:tasks"] == ["scene-classification", "classification"]
    assert props["mlm:framework"] == "PyTorch"
    from lemevit.engine.eval_predict import load_task

    module = load_task(run / "best.ckpt")
    assert props["mlm:total_parameters"] == sum(p.numel() for p in module.model.parameters())
    assert props["mlm:pretrained"] is False and props["mlm:pretrained_source"] is None  # trained from scratch
    (inp,) = props["mlm:input"]
    assert inp["bands"] == ["red", "green", "blue"] and [b["name"] for b in props["bands"]] == inp["bands"]
    assert inp["input"]["shape"] == [-1, 3, 32, 32] and inp["input"]["dim_order"] == ["batch", "bands", "height",
                                                                                       "width"]
    assert inp["input"]["data_type"] in RASTER_DATA_TYPES
    assert [(s["type"], s["mean"], s["stddev"]) for s in inp["value_scaling"]] == [
        ("z-score", m, s) for m, s in zip(module.hparams.mean, module.hparams.std, strict=True)]
    (out_,) = props["mlm:output"]
    assert out_["result"]["shape"] == [-1, 3]
    classes = out_["classification:classes"]
    assert [c["name"] for c in classes] == module.label_names() and [c["value"] for c in classes] == [0, 1, 2]
    assert all(len(c["color_hint"]) == 6 for c in classes)
    models = {key: a for key, a in item["assets"].items() if "mlm:model" in a["roles"]}
    assert {a["href"] for a in models.values()} == {"./model.safetensors", "./model.onnx"}
    by_href = {a["href"]: a for a in models.values()}
    assert by_href["./model.safetensors"]["mlm:artifact_type"] == "safetensors.torch.save_file"
    assert "framework=onnx" in by_href["./model.onnx"]["type"]
    assert all((out / a["href"]).is_file() for a in item["assets"].values())


def test_a_bare_feature_extractor_s_item_is_valid_and_names_no_task_it_does_not_do(tmp_path):
    export_model(tmp_path / "f", model="resnet10t", features_only=True, img_size=64)
    item = _item(tmp_path / "f")
    assert mlm_errors(item) == []
    props = item["properties"]
    assert props["mlm:tasks"] == [] and props["mlm:pretrained"] is False
    model = lemevit.create_model("resnet10t", features_only=True).eval()
    with torch.no_grad():
        features = model(torch.zeros(1, 3, 64, 64))
    assert [o["result"]["shape"] for o in props["mlm:output"]] == [[-1, *f.shape[1:]] for f in features]


def test_the_schema_check_finds_what_an_item_gets_wrong(tmp_path):
    export_model(tmp_path / "m", model="vvt_tiny", num_classes=4)
    item = _item(tmp_path / "m")
    assert mlm_errors(item) == []
    broken = []
    for edit in (lambda i: i["properties"].pop("mlm:architecture"),
                 lambda i: i["assets"]["model-safetensors"].pop("mlm:artifact_type"),
                 lambda i: i["properties"]["mlm:input"][0]["input"].update(data_type="float"),
                 lambda i: i["properties"]["mlm:output"][0].update({"classification:classes": [{"value": 0}]})):
        wrong = copy.deepcopy(item)
        edit(wrong)
        broken.append(bool(mlm_errors(wrong)))
    assert broken == [True, True, True, True]


@pytest.mark.parametrize("names", [["red", "green"], ["red", "green", "blue", "nir"]])
def test_band_names_must_match_the_input_bands(names, tmp_path, capsys):
    assert main(["export", "--model", "resnet10t", "--output", str(tmp_path / "x"), "--band-names", *names]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--band-names" in err and "3 input band(s)" in err
    assert not (tmp_path / "x" / "model.safetensors").exists()
