"""LVT and VVT reproduce the published implementations: checkpoints load exactly, outputs match to 1e-4."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from conftest import MINI_PARITY, load_io, shared_parity

import lemevit
import lemevit.models.lvt as lvt_module
import lemevit.models.vvt as vvt_module
from lemevit.models.factory import load_checkpoint_file
from lemevit.models.lvt import LVT
from lemevit.models.vvt import VVT

ATOL = 1e-4


def _assert_features(feats, io):
    assert len(feats) == 4
    for i, f in enumerate(feats):
        torch.testing.assert_close(f, io[f"features.{i}"], atol=ATOL, rtol=0)


def _load_strict(model, filter_fn, path):
    result = model.load_state_dict(filter_fn(load_checkpoint_file(path)), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_lvt_backbone_mini_matches_published_features(mini_configs):
    cfg = mini_configs["lvt_backbone_mini"]
    assert cfg["dense_backbone"]
    model = LVT(depths=cfg["depths"], dims=cfg["dims"], num_heads=cfg["num_heads"], mlp_ratios=cfg["mlp_ratios"],
                attn_types=cfg["attention"], conv_mlp=cfg["mlp_dwconv"], sr_ratios=cfg["sr_ratios"],
                atrous_rates=cfg["rasa"]["atrous_rates"], recursions=cfg["rasa"]["recursions"],
                dense_backbone=True, num_classes=0, in_chans=cfg["in_chans"])
    assert sum(p.numel() for p in model.parameters()) == cfg["num_params"]
    ckpt = MINI_PARITY / "lvt_backbone_mini.official_state_dict.safetensors"
    _load_strict(model, lvt_module.checkpoint_filter_fn, ckpt)
    io = load_io(MINI_PARITY / "lvt_backbone_mini.io.safetensors")
    with torch.no_grad():
        _assert_features(model.eval().forward_intermediates(io["input"], intermediates_only=True), io)


def test_vvt_mini_matches_published_logits(mini_configs):
    cfg = mini_configs["vvt_mini"]
    model = VVT(depths=cfg["depths"], dims=cfg["dims"], num_heads=cfg["num_heads"], mlp_ratios=cfg["mlp_ratios"],
                feature_reduction=cfg["feature_reduction"], qkv_bias=cfg["qkv_bias"],
                num_classes=cfg["num_classes"], in_chans=cfg["in_chans"])
    assert sum(p.numel() for p in model.parameters()) == cfg["num_params"]
    _load_strict(model, vvt_module.checkpoint_filter_fn, MINI_PARITY / "vvt_mini.official_state_dict.safetensors")
    io = load_io(MINI_PARITY / "vvt_mini.io.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(io["input"]), io["logits"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["lvt", "vvt_tiny"])
def test_published_classifier_reproduces_published_logits(name):
    model = lemevit.create_model(name, checkpoint=shared_parity(f"{name}.official_state_dict.safetensors")).eval()
    io = load_io(shared_parity(f"{name}.io.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["logits"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("loader", ["lemevit_features_only", "timm_file_overlay_features_only", "lvt_backbone"])
def test_published_lvt_dense_backbone_reproduces_published_features(loader):
    ckpt = shared_parity("lvt_backbone.official_state_dict.safetensors")
    io = load_io(shared_parity("lvt_backbone.io.safetensors"))
    with torch.no_grad():
        if loader == "lemevit_features_only":
            feats = lemevit.create_model("lvt", features_only=True, checkpoint=ckpt).eval()(io["features_input"])
        elif loader == "timm_file_overlay_features_only":
            model = timm.create_model("lvt", features_only=True, pretrained=True,
                                      pretrained_cfg_overlay=dict(file=str(ckpt)))
            feats = model.eval()(io["features_input"])
        else:
            model = lemevit.create_model("lvt_backbone", checkpoint=ckpt).eval()
            feats = model.forward_intermediates(io["features_input"], intermediates_only=True)
    _assert_features(feats, io)


def test_lvt_classifier_checkpoint_does_not_silently_fill_the_dense_norms():
    """The published dense backbone normalises every stage output before the next stage; a classifier
    checkpoint has no such norms, so it loads only into the classifier-style feature extractor."""
    ckpt = shared_parity("lvt.official_state_dict.safetensors")
    with pytest.raises(RuntimeError, match=r"missing keys \['stage_norms\.0\.weight'"):
        lemevit.create_model("lvt", features_only=True, checkpoint=ckpt)
    features = lemevit.create_model("lvt", features_only=True, dense_backbone=False, checkpoint=ckpt).eval()
    classifier = lemevit.create_model("lvt", checkpoint=ckpt).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        for got, want in zip(features(x), classifier.forward_intermediates(x, intermediates_only=True), strict=True):
            torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_vvt_classifier_checkpoint_loads_into_features_only_model():
    ckpt = shared_parity("vvt_tiny.official_state_dict.safetensors")
    features = lemevit.create_model("vvt_tiny", features_only=True, checkpoint=ckpt).eval()
    classifier = lemevit.create_model("vvt_tiny", checkpoint=ckpt).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        for got, want in zip(features(x), classifier.forward_intermediates(x, intermediates_only=True), strict=True):
            torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("variant", ["lvt", "lvt_backbone", "vvt_tiny", "vvt_small", "vvt_medium", "vvt_large"])
def test_converter_maps_every_published_tensor_with_matching_shape(variant):
    schema = json.loads(shared_parity("official_schemas.json").read_text())[variant]
    filter_fn = (lvt_module if variant.startswith("lvt") else vvt_module).checkpoint_filter_fn
    with torch.device("meta"):
        own = timm.create_model(variant).state_dict()
    official = {k: torch.empty(shape, device="meta") for k, shape in schema["state_dict"].items()}
    converted = filter_fn(official)
    assert set(converted) == set(own)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in own.items()}
    # Our own layout passes through unchanged.
    assert set(filter_fn(own)) == set(own)


@pytest.mark.parametrize("variant, expected", [
    ("lvt", 5_521_844), ("lvt_backbone", 3_430_180), ("vvt_tiny", 12_882_440), ("vvt_small", 25_492_264),
    ("vvt_medium", 47_907_304), ("vvt_large", 61_848_520)])
def test_parameter_counts_match_the_published_models(variant, expected):
    with torch.device("meta"):
        model = timm.create_model(variant)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_lvt_features_only_model_is_the_published_dense_backbone():
    with torch.device("meta"):
        features = timm.create_model("lvt", features_only=True)
    assert sum(p.numel() for p in features.parameters()) == 3_430_180
    assert any(k.startswith("model.stage_norms.") for k in features.state_dict())
