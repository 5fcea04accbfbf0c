"""LeMeViT reproduces the published implementation: checkpoints load exactly, outputs match to 1e-4."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from conftest import MINI_PARITY, load_io, shared_parity

import lemevit
from lemevit.models.factory import load_checkpoint_file
from lemevit.models.lemevit import LeMeViT, checkpoint_filter_fn

ATOL = 1e-4


def _assert_outputs(model, io):
    with torch.no_grad():
        logits = model(io["input"])
        feats = model.forward_intermediates(io.get("features_input", io["input"]), intermediates_only=True)
    torch.testing.assert_close(logits, io["logits"], atol=ATOL, rtol=0)
    assert len(feats) == 4
    for i, f in enumerate(feats):
        torch.testing.assert_close(f, io[f"features.{i}"], atol=ATOL, rtol=0)


def test_mini_configuration_matches_published_outputs(mini_configs):
    cfg = mini_configs["lemevit_mini"]
    model = LeMeViT(depths=cfg["depths"], dims=cfg["dims"], attn_types=cfg["attention_types"],
                    head_dim=cfg["head_dim"], num_meta_tokens=cfg["num_meta_tokens"], mlp_ratio=cfg["mlp_ratio"],
                    num_classes=cfg["num_classes"], in_chans=cfg["in_chans"])
    assert sum(p.numel() for p in model.parameters()) == cfg["num_params"]
    state = checkpoint_filter_fn(load_checkpoint_file(MINI_PARITY / "lemevit_mini.official_state_dict.safetensors"))
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    _assert_outputs(model.eval(), load_io(MINI_PARITY / "lemevit_mini.io.safetensors"))


def test_tiny_published_checkpoint_reproduces_published_outputs():
    ckpt = shared_parity("lemevit_tiny.official_state_dict.safetensors")
    model = lemevit.create_model("lemevit_tiny", checkpoint=ckpt).eval()
    _assert_outputs(model, load_io(shared_parity("lemevit_tiny.io.safetensors")))


def test_tiny_published_checkpoint_through_timm_file_overlay():
    ckpt = shared_parity("lemevit_tiny.official_state_dict.safetensors")
    model = timm.create_model("lemevit_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt))).eval()
    io = load_io(shared_parity("lemevit_tiny.io.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["logits"], atol=ATOL, rtol=0)


def test_published_checkpoint_loads_into_features_only_model():
    ckpt = shared_parity("lemevit_tiny.official_state_dict.safetensors")
    io = load_io(shared_parity("lemevit_tiny.io.safetensors"))
    model = lemevit.create_model("lemevit_tiny", features_only=True, checkpoint=ckpt).eval()
    with torch.no_grad():
        feats = model(io["features_input"])
    for i, f in enumerate(feats):
        torch.testing.assert_close(f, io[f"features.{i}"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["lemevit_tiny", "lemevit_small", "lemevit_base"])
def test_converter_maps_every_published_tensor_with_matching_shape(variant):
    schema = json.loads(shared_parity("official_schemas.json").read_text())[variant]
    with torch.device("meta"):
        own = timm.create_model(variant).state_dict()
    official = {k: torch.empty(shape, device="meta") for k, shape in schema["state_dict"].items()}
    converted = checkpoint_filter_fn(official)
    assert set(converted) == set(own)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in own.items()}


@pytest.mark.parametrize("variant, expected", [
    ("lemevit_tiny", 8_635_816), ("lemevit_small", 16_400_456), ("lemevit_base", 53_098_152)])
def test_parameter_counts_match_the_paper(variant, expected):
    with torch.device("meta"):
        model = timm.create_model(variant, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_checkpoint_with_other_classifier_size_keeps_backbone_and_warns(tmp_path, caplog):
    ckpt = MINI_PARITY / "lemevit_mini.official_state_dict.safetensors"
    state = checkpoint_filter_fn(load_checkpoint_file(ckpt))
    cfg = json.loads((MINI_PARITY / "configs.json").read_text())["lemevit_mini"]
    model = LeMeViT(depths=cfg["depths"], dims=cfg["dims"], num_classes=7)
    model.pretrained_cfg = {"classifier": "head", "first_conv": "stem.conv1"}
    with caplog.at_level("WARNING"):
        lemevit.load_weights(model, dict(state))
    assert "head.weight" in caplog.text
    torch.testing.assert_close(model.stem.conv1.weight, state["stem.conv1.weight"])
    assert model.head.weight.shape == (7, cfg["dims"][-1])
