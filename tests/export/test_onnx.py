"""ONNX export: the three architectures reproduce the published outputs through onnxruntime at a size other than
the export size (the parity fixtures), the self-check finds an export that is wrong away from its export size,
and without the export extra the command says what to install."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import MINI_PARITY, load_io, mini_parity_model, shared_parity

from lemevit.cli import main
from lemevit.errors import DataError
from lemevit.export import OnnxGraph, check_onnx, export_model, export_onnx

ort = pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")

ATOL = 1e-4


def run_onnx(path, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in session.run(None, {k: v.numpy() for k, v in inputs.items()})]


class Intermediates(torch.nn.Module):
    """The four stage outputs of a model, as its ``forward_intermediates`` gives them."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, intermediates_only=True)


@pytest.mark.parametrize("name", ["lemevit_mini", "lvt_backbone_mini", "vvt_mini"])
def test_mini_parity_through_onnxruntime_at_another_size_than_the_export(name, mini_configs, tmp_path):
    model = mini_parity_model(name, mini_configs)
    io = load_io(MINI_PARITY / f"{name}.io.safetensors")
    features = name.startswith("lvt")
    module = Intermediates(model) if features else model
    outputs = tuple(f"features.{i}" for i in range(4)) if features else ("logits",)
    graph = OnnxGraph(module, ("image",), outputs, channels=io["input"].shape[1], size=64)
    path = export_onnx(graph, tmp_path / "mini.onnx")
    assert tuple(io["input"].shape[-2:]) != (64, 64)
    got = run_onnx(path, {"image": io["input"]})
    for output, value in zip(outputs, got, strict=True):
        torch.testing.assert_close(value, io[output], atol=ATOL, rtol=0)


@pytest.mark.parametrize(("model", "weights", "features_only", "io_name", "inputs", "outputs"), [
    ("lemevit_tiny", "lemevit_tiny", True, "lemevit_tiny", "features_input", [f"features.{i}" for i in range(4)]),
    ("lvt", "lvt_backbone", True, "lvt_backbone", "features_input", [f"features.{i}" for i in range(4)]),
    ("vvt_tiny", "vvt_tiny", False, "vvt_tiny", "input", ["logits"]),
    ("lvt", "lvt", False, "lvt", "input", ["logits"]),
])
def test_published_checkpoints_exported_reproduce_the_published_outputs(model, weights, features_only, io_name,
                                                                          inputs, outputs, tmp_path, capsys):
    checkpoint = shared_parity(f"{weights}.official_state_dict.safetensors")
    io = load_io(shared_parity(f"{io_name}.io.safetensors"))
    # Features are checked at 160x224 after an export at 224x224; the logits at 224x224 after one at 192x192.
    size = 224 if features_only else 192
    assert io[inputs].shape[-1] != size or io[inputs].shape[-2] != size
    args = ["export", "--model", model, "--weights", str(checkpoint), "--format", "onnx", "--img-size", str(size),
            "--output", str(tmp_path / "out")]
    assert main(args + (["--features-only"] if features_only else [])) == 0
    printed = capsys.readouterr().out
    assert "largest deviation" in printed and "model.onnx" in printed
    got = run_onnx(tmp_path / "out" / "model.onnx", {"image": io[inputs]})
    assert len(got) == len(outputs)
    for output, value in zip(outputs, got, strict=True):
        torch.testing.assert_close(value, io[output], atol=ATOL, rtol=0)


class _ScaleOfTheExportSize(torch.nn.Module):
    """Multiplies by a number computed in Python from the input's width (as LeMeViT's log_N(M) scale is): a trace
    keeps it as a constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * math.log(x.shape[-1])


def test_the_self_check_fails_an_export_that_is_only_right_at_its_export_size(tmp_path):
    graph = OnnxGraph(_ScaleOfTheExportSize(), ("image",), ("out",), channels=1, size=32)
    path = export_onnx(graph, tmp_path / "bad.onnx")
    check_onnx(graph, path, size=(32, 32))
    with pytest.raises(DataError, match="differs from PyTorch"):
        check_onnx(graph, path)


def test_without_the_export_extra_onnx_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    assert main(["export", "--model", "lemevit_tiny", "--format", "onnx", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'lemevit[export]'" in err and "--format" in err
    assert not (tmp_path / "x").exists()


def test_a_bare_export_without_onnx_writes_the_model_file_and_its_stac_item_only(tmp_path):
    result = export_model(tmp_path / "m", model="vvt_tiny", num_classes=5, in_chans=4)
    assert sorted(p.name for p in result.files) == ["config.json", "item.json", "model.safetensors"]
    assert result.checks == []


@pytest.mark.parametrize(("task", "hparams", "fixed"), [
    ("segmentation", {"head": "segformer", "decoder_channels": 16}, False),
    ("segmentation", {"head": "upernet", "decoder_channels": 16}, True),
    ("change", {"head": "bit"}, False),
    ("change", {"head": "siamunet"}, False),
])
def test_dense_task_graphs_export_and_match_pytorch(task, hparams, fixed, tmp_path):
    from lemevit.tasks import get_task

    labels = {"labels": {"class_names": ["a", "b", "c"]}} if task == "segmentation" else {}
    module = get_task(task)(model="lemevit_tiny", img_size=64, **labels, **hparams).eval()
    graph = module.onnx_graph()
    assert (graph.fixed_size is not None) == fixed
    path = export_onnx(graph, tmp_path / "dense.onnx")
    deviation = check_onnx(graph, path)
    if fixed:
        assert deviation.size == (64, 64)
    else:
        assert deviation.size[0] != 64 and deviation.size[1] != 64
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(graph.inputs)
    probabilities = session.run(None, {name: x.numpy() for name, x in zip(graph.inputs, graph.examples(64, 64),
                                                                         strict=True)})[0]
    assert probabilities.shape[:2] == (1, 3 if task == "segmentation" else 2)
    assert abs(probabilities.sum(axis=1) - 1).max() < 1e-5
