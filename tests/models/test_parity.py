"""LeMeViT, LVT and VVT reproduce the published implementations: checkpoints load exactly, outputs match to 1e-4.

The mini configurations ship with the tests; the full-size checkpoints and outputs live in ../shared and the
tests that need them skip when it is absent.
"""
from __future__ import annotations

import json

import pytest
import timm
import torch
from conftest import MINI_PARITY, load_io, mini_parity_model, shared_parity

import lemevit
import lemevit.models.lemevit as lemevit_module
import lemevit.models.lvt as lvt_module
import lemevit.models.vvt as vvt_module
from lemevit.models.factory import load_checkpoint_file
from lemevit.models.lemevit import LeMeViT

ATOL = 1e-4
FILTERS = {"lemevit": lemevit_module.checkpoint_filter_fn, "lvt": lvt_module.checkpoint_filter_fn,
           "vvt": vvt_module.checkpoint_filter_fn}


def _assert_features(feats, io):
    assert len(feats) == 4
    for i, f in enumerate(feats):
        torch.testing.assert_close(f, io[f"features.{i}"], atol=ATOL, rtol=0)


def _assert_lemevit_outputs(model, io):
    with torch.no_grad():
        logits = model(io["input"])
        feats = model.forward_intermediates(io.get("features_input", io["input"]), intermediates_only=True)
    torch.testing.assert_close(logits, io["logits"], atol=ATOL, rtol=0)
    _assert_features(feats, io)


# The mini configurations (shipped with the tests).

def test_lemevit_mini_matches_published_outputs(mini_configs):
    model = mini_parity_model("lemevit_mini", mini_configs)
    assert sum(p.numel() for p in model.parameters()) == mini_configs["lemevit_mini"]["num_params"]
    _assert_lemevit_outputs(model, load_io(MINI_PARITY / "lemevit_mini.io.safetensors"))


def test_lvt_backbone_mini_matches_published_features(mini_configs):
    assert mini_configs["lvt_backbone_mini"]["dense_backbone"]
    model = mini_parity_model("lvt_backbone_mini", mini_configs)
    assert sum(p.numel() for p in model.parameters()) == mini_configs["lvt_backbone_mini"]["num_params"]
    io = load_io(MINI_PARITY / "lvt_backbone_mini.io.safetensors")
    with torch.no_grad():
        _assert_features(model.forward_intermediates(io["input"], intermediates_only=True), io)


def test_vvt_mini_matches_published_logits(mini_configs):
    model = mini_parity_model("vvt_mini", mini_configs)
    assert sum(p.numel() for p in model.parameters()) == mini_configs["vvt_mini"]["num_params"]
    io = load_io(MINI_PARITY / "vvt_mini.io.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["logits"], atol=ATOL, rtol=0)


def test_lemevit_checkpoint_with_other_classifier_size_keeps_backbone_and_warns(caplog):
    ckpt = MINI_PARITY / "lemevit_mini.official_state_dict.safetensors"
    state = lemevit_module.checkpoint_filter_fn(load_checkpoint_file(ckpt))
    cfg = json.loads((MINI_PARITY / "configs.json").read_text())["lemevit_mini"]
    model = LeMeViT(depths=cfg["depths"], dims=cfg["dims"], num_classes=7)
    model.pretrained_cfg = {"classifier": "head", "first_conv": "stem.conv1"}
    with caplog.at_level("WARNING"):
        lemevit.load_weights(model, dict(state))
    assert "head.weight" in caplog.text
    torch.testing.assert_close(model.stem.conv1.weight, state["stem.conv1.weight"])
    assert model.head.weight.shape == (7, cfg["dims"][-1])


# The published full-size checkpoints (../shared).

def test_lemevit_tiny_published_checkpoint_reproduces_published_outputs():
    ckpt = shared_parity("lemevit_tiny.official_state_dict.safetensors")
    model = lemevit.create_model("lemevit_tiny", checkpoint=ckpt).eval()
    _assert_lemevit_outputs(model, load_io(shared_parity("lemevit_tiny.io.safetensors")))


def test_lemevit_tiny_published_checkpoint_through_timm_file_overlay():
    ckpt = shared_parity("lemevit_tiny.official_state_dict.safetensors")
    model = timm.create_model("lemevit_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt))).eval()
    io = load_io(shared_parity("lemevit_tiny.io.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(model(io["input"]), io["logits"], atol=ATOL, rtol=0)


def test_lemevit_published_checkpoint_loads_into_features_only_model():
    ckpt = shared_parity("lemevit_tiny.official_state_dict.safetensors")
    io = load_io(shared_parity("lemevit_tiny.io.safetensors"))
    model = lemevit.create_model("lemevit_tiny", features_only=True, checkpoint=ckpt).eval()
    with torch.no_grad():
        _assert_features(model(io["features_input"]), io)


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


def test_lvt_classifier_checkpoint_leaves_the_dense_norms_fresh_and_says_so(caplog):
    """The published dense backbone normalises every stage output before the next stage; a classifier
    checkpoint has no such norms: they start at their initialisation (as the published dense code loads ImageNet
    weights), with a warning naming them, and nothing else is left out. The classifier-style feature extractor
    gives the classifier's own stage outputs exactly."""
    ckpt = shared_parity("lvt.official_state_dict.safetensors")
    dense = lemevit.create_model("lvt", features_only=True, checkpoint=ckpt)
    assert "has no 8 (stage_norms.0.weight" in caplog.text and "left at initialisation" in caplog.text
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) for n in dense.model.stage_norms)
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


@pytest.mark.parametrize("variant", lemevit.list_models())
def test_converter_maps_every_published_tensor_with_matching_shape(variant):
    schema = json.loads(shared_parity("official_schemas.json").read_text())[variant]
    filter_fn = FILTERS[variant.split("_")[0]]
    with torch.device("meta"):
        own = timm.create_model(variant).state_dict()
    official = {k: torch.empty(shape, device="meta") for k, shape in schema["state_dict"].items()}
    converted = filter_fn(official)
    assert set(converted) == set(own)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in own.items()}
    # Our own layout passes through unchanged.
    assert set(filter_fn(own)) == set(own)
