"""Every export writes item.json, a STAC Item with the MLM extension v1.5 describing the model and its files, valid
against the extension's JSON schema and the schemas it references (vendored: the test runs offline)."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from mlm_schema import MLM, RASTER_DATA_TYPES, mlm_errors
from sample_data import NAMES, make_pairs, make_tiles, synthetic_dota

import lemevit
from lemevit.cli import main
from lemevit.data.detection import DOTA_V1_CLASSES
from lemevit.engine.eval_predict import load_task
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


#: Tiny one-epoch runs of the tasks beyond scene recognition: the training flags after the data's, given a folder
#: to make the data in.
TINY = ["--model", "resnet10t", "--epochs", "1", "--batch-size", "2", "--num-workers", "0", "--accelerator", "cpu",
        "--split", "1.0"]
RUNS = {
    "segmentation": lambda root: ["--data", str(make_tiles(root / "tiles", size=64)), "--preset", "potsdam",
                                  "--img-size", "32", "--decoder-channels", "8", "--window", "64"],
    "change": lambda root: ["--data", str(make_pairs(root / "pairs")), "--img-size", "32", "--window", "64"],
    "detection": lambda root: ["--data", str(synthetic_dota(root / "dota", 1)), "--img-size", "128", "--overlap",
                               "32", "--fpn-channels", "32", "--rpn-proposals", "50", "--test-proposals", "20"],
    "panoptic": lambda root: ["--data", str(_panoptic_tiles(root)), "--img-size", "64", "--fpn-channels", "32",
                              "--semantic-channels", "32", "--rpn-proposals", "64", "--test-proposals", "64",
                              "--detections", "20", "--stuff-area", "16"],
}
POTSDAM_PALETTE = ["FFFFFF", "0000FF", "00FFFF", "00FF00", "FFFF00", "FF0000"]


def _panoptic_tiles(root):
    assert main(["prepare", "panoptic", "--data", str(make_tiles(root / "tiles", size=64)), "--output",
                 str(root / "panoptic"), "--things", "building", "car"]) == 0
    return root / "panoptic"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The run of a task (see :data:`RUNS`), trained on first use and kept for the module's other tests."""
    runs = {}

    def run(task: str):
        if task not in runs:
            root = tmp_path_factory.mktemp(task)
            assert main(["train", "--task", task, *RUNS[task](root), *TINY, "--output", str(root / "run")]) == 0
            runs[task] = root / "run"
        return runs[task]

    return run


def _export(run, out, *flags) -> dict:
    assert main(["export", "--checkpoint", str(run / "best.ckpt"), "--output", str(out), *flags]) == 0
    item = _item(out)
    assert mlm_errors(item) == []
    return item


def _hex(colours) -> list[str]:
    return ["{:02X}{:02X}{:02X}".format(*c) for c in colours]


@pytest.mark.slow
@pytest.mark.parametrize(("task", "fmt", "tasks", "inputs", "size", "output", "dims", "classes", "graphs"), [
    ("segmentation", "onnx", ["semantic-segmentation", "segmentation"], ["image"], 64, [-1, 6, 64, 64],
     ["batch", "class", "height", "width"], list(NAMES), ["./model.onnx"]),
    ("change", "onnx", ["semantic-segmentation", "segmentation"], ["image_a", "image_b"], 64, [-1, 2, 64, 64],
     ["batch", "class", "height", "width"], ["no change", "change"], ["./model.onnx"]),
    ("detection", "onnx", ["object-detection", "detection"], ["image"], 128, [-1, -1, 7], ["batch", "box", "attribute"],
     list(DOTA_V1_CLASSES), ["./model.onnx", "./model.box_head.onnx"]),
    # No ONNX export of the panoptic heads: the model file alone.
    ("panoptic", "safetensors", ["panoptic-segmentation", "segmentation"], ["image"], 64, [-1, 64, 64],
     ["batch", "height", "width"], list(NAMES), []),
])
def test_each_task_s_export_is_a_valid_item_saying_what_the_task_takes_and_gives(
        task, fmt, tasks, inputs, size, output, dims, classes, graphs, tiny_run, tmp_path):
    run = tiny_run(task)
    out = tmp_path / "model"
    item = _export(run, out, "--format", fmt)
    props = item["properties"]
    module = load_task(run / "best.ckpt")
    assert props["mlm:tasks"] == tasks and props["mlm:architecture"].startswith("resnet10t")
    assert props["mlm:total_parameters"] == sum(p.numel() for p in module.model.parameters())
    assert [i["name"] for i in props["mlm:input"]] == inputs
    for inp in props["mlm:input"]:
        assert inp["input"]["shape"] == [-1, 3, size, size]
        assert [(s["mean"], s["stddev"]) for s in inp["value_scaling"]] == list(zip(module.hparams.mean,
                                                                                  module.hparams.std, strict=True))
    (out_,) = props["mlm:output"]
    assert out_["tasks"] == tasks and out_["result"]["shape"] == output and out_["result"]["dim_order"] == dims
    assert [c["name"] for c in out_["classification:classes"]] == classes == module.label_names()
    assert [c["color_hint"] for c in out_["classification:classes"]] == _hex(module.label_colours())
    models = {a["href"]: a for a in item["assets"].values() if "mlm:model" in a["roles"]}
    assert sorted(models) == sorted(["./model.safetensors", *graphs])
    assert all(models[g]["mlm:artifact_type"] == "torch.onnx.export" for g in graphs)
    assert all((out / href).is_file() for href in models)
    if len(graphs) > 1:  # a detector: what each graph computes, and that Python runs between them
        trunk, box_head = (models[g]["description"] for g in graphs)
        assert trunk.startswith("one of the model's 2 graphs (image -> pyramid.0")
        assert box_head.startswith("one of the model's 2 graphs (roi_features -> class_logits, box_deltas)")
        assert "lemevit predict --runtime onnxruntime" in trunk


@pytest.mark.slow
def test_a_segmentation_item_gives_the_data_s_palette(tiny_run, tmp_path):
    item = _export(tiny_run("segmentation"), tmp_path / "m")
    (out,) = item["properties"]["mlm:output"]
    assert [c["color_hint"] for c in out["classification:classes"]] == POTSDAM_PALETTE  # --preset potsdam's


@pytest.mark.slow
def test_a_change_item_tells_the_two_dates_apart_and_gives_the_threshold(tiny_run, tmp_path):
    item = _export(tiny_run("change"), tmp_path / "m")
    first, second = item["properties"]["mlm:input"]
    assert "first date" in first["description"] and "second date" in second["description"]
    assert first["value_scaling"] == second["value_scaling"]  # one normalisation for both dates
    (out,) = item["properties"]["mlm:output"]
    assert "change probability of 0.5" in out["description"]  # the run's threshold


@pytest.mark.slow
def test_a_panoptic_item_gives_segment_ids_as_integers(tiny_run, tmp_path):
    item = _export(tiny_run("panoptic"), tmp_path / "m")
    (out,) = item["properties"]["mlm:output"]
    assert out["result"]["data_type"] == "int64"
    assert out["result"]["data_type"] in RASTER_DATA_TYPES


@pytest.mark.slow
@pytest.mark.parametrize("task", ["segmentation", "panoptic"])
def test_the_deepness_graph_is_a_model_asset_whose_output_the_item_describes(task, tiny_run, tmp_path):
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "qgis"
    item = _export(tiny_run(task), out, "--format", "deepness", "--resolution-cm", "5")
    deepness = item["assets"]["model-deepness-onnx"]
    assert deepness["href"] == "./model.deepness.onnx" and deepness["roles"] == ["mlm:model", "qgis-deepness"]
    assert deepness["mlm:artifact_type"] == "torch.onnx.export" and "framework=onnx" in deepness["type"]
    proto = onnx.load(str(out / "model.deepness.onnx"))
    names = list(json.loads(next(p.value for p in proto.metadata_props if p.key == "class_names")).values())
    shape = [-1, *(d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim[1:])]
    props = item["properties"]
    # The output the graph gives: the model's own for segmentation, the semantic branch's for panoptic.
    described = {o["name"]: o for o in props["mlm:output"]}
    semantic = described["probabilities" if task == "segmentation" else "semantic"]
    assert [c["name"] for c in semantic["classification:classes"]] == names
    assert semantic["result"]["shape"] == shape and semantic["tasks"] == ["semantic-segmentation", "segmentation"]
    assert "semantic-segmentation" in props["mlm:tasks"]
    if task == "panoptic":
        assert names[0].startswith("things") and list(described) == ["panoptic", "semantic"]
