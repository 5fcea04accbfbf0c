"""The checks every registered model passes, as timm's ``test_models.py`` runs them over its registry.

Each test is parametrized over ``lemevit.list_models()``. Only the parameter counts need the full networks,
and those are built on the meta device. Every other check runs on the registered model with one block per
stage (``depths=(1, ...)``): each stage keeps its own width, heads, MLP ratio, patch embedding and norms, and
the blocks of a stage are copies of one another. That way lemevit_base and vvt_large run a forward and
backward pass in a fraction of a second on a CPU. The tiny variants run at full depth in test_parity.py (the
published checkpoints), test_lemevit.py and test_lvt_vvt.py (smp decoders, LVT's norms); the larger ones are
built at full depth only on the meta device (here and in the checkpoint-layout tests of test_parity.py).
"""
from __future__ import annotations

import copy
import math
import struct

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import DropPath

import lemevit
from lemevit.errors import DataError

MODELS = lemevit.list_models()
NUM_CLASSES = 10

# Parameter counts of the published models (README; with 1000 classes, lvt_backbone without a classifier).
PARAMS = {
    "lemevit_tiny": 8_635_816, "lemevit_small": 16_400_456, "lemevit_base": 53_098_152,
    "lvt": 5_521_844, "lvt_backbone": 3_430_180,
    "vvt_tiny": 12_882_440, "vvt_small": 25_492_264, "vvt_medium": 47_907_304, "vvt_large": 61_848_520,
}
# Channels of the stride-4, 8, 16 and 32 maps.
CHANNELS = {
    "lemevit_tiny": [64, 128, 192, 320], "lemevit_small": [96, 192, 320, 384], "lemevit_base": [96, 192, 384, 512],
    "lvt": [64, 64, 160, 256], "lvt_backbone": [64, 64, 160, 256],
    **{f"vvt_{size}": [96, 160, 320, 512] for size in ("tiny", "small", "medium", "large")},
}
NUM_STAGES = {"lemevit": 5, "lvt": 4, "vvt": 4}  # LeMeViT's first stage (C) only updates the meta tokens
CROP_PCT = {"lemevit": 0.9, "lvt": 0.96, "vvt": 0.9}  # the published evaluation crops
# torch.compile runs over one model per code path: the variants of a family differ only in widths and depths,
# which compile alike, and each distinct graph costs one to two minutes of inductor time on a 2-core CPU.
COMPILED = ["lemevit_tiny", "lvt", "lvt_backbone", "vvt_tiny"]


def _family(name: str) -> str:
    return name.split("_")[0]


def shallow(name: str, **kwargs) -> torch.nn.Module:
    """``timm.create_model(name)`` with one block per stage."""
    return timm.create_model(name, depths=(1,) * NUM_STAGES[_family(name)], **kwargs)


def _map_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Spatial sizes of the four maps: stride 4 (LeMeViT: two 3x3/2 convs, LVT/VVT: 7x7/4 with padding 3),
    then a 3x3/2 conv (padding 1) per stage; every one rounds up."""
    sizes = [(math.ceil(h / 4), math.ceil(w / 4))]
    for _ in range(3):
        sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    return sizes


def _feature_stages(model: torch.nn.Module) -> list[int]:
    """Index in ``model.stages`` of each feature map (LeMeViT's maps come from stages 1..4)."""
    return [int(info["module"].split(".")[1]) for info in model.feature_info]


def _classifier_names(model: torch.nn.Module) -> list[str]:
    classifier = model.pretrained_cfg["classifier"]
    return [classifier] if isinstance(classifier, str) else list(classifier)


@pytest.fixture(scope="module")
def classifier():
    """The shallow classifier of a model in eval mode, built once per module; tests must not change it."""
    cache: dict[str, torch.nn.Module] = {}

    def get(name: str) -> torch.nn.Module:
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = shallow(name, num_classes=NUM_CLASSES).eval()
        return cache[name]

    return get


def test_every_registered_model_has_its_published_parameter_count():
    assert sorted(MODELS) == sorted(PARAMS)
    assert all(timm.is_model(name) for name in MODELS)
    # A newly registered family needs its own entries here, and a model of it in COMPILED.
    assert {_family(n) for n in MODELS} == set(NUM_STAGES) == set(CROP_PCT) == {_family(n) for n in COMPILED}


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_matches_the_paper(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert model.num_classes == (0 if name == "lvt_backbone" else 1000)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[name]


@pytest.mark.parametrize("in_chans", [1, 3, 4, 13])
@pytest.mark.parametrize("name", MODELS)
def test_timm_create_model_with_classes_bands_and_drop_path(name, in_chans):
    model = shallow(name, num_classes=51, in_chans=in_chans, drop_path_rate=0.1).eval()
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert max(rates) == pytest.approx(0.1)
    with torch.no_grad():
        logits = model(torch.randn(2, in_chans, 64, 64))
    assert logits.shape == (2, 51) and torch.isfinite(logits).all()
    wrong = 3 if in_chans != 3 else 4
    with pytest.raises(ValueError, match=rf"{in_chans} input channels.*got.*{wrong} channels"):
        model(torch.randn(1, wrong, 64, 64))


@pytest.mark.parametrize("name", MODELS)
def test_wrong_channel_count_names_expected_and_received_channels(name, classifier):
    model = classifier(name)
    with pytest.raises(ValueError, match=r"3 input channels.*with 3 channels, got shape \(1, 4, 64, 64\) with 4 "
                                         r"channels"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match=r"with 3 channels.*with 4 channels"):
        model.forward_intermediates(torch.randn(1, 4, 64, 64))
    # Models of other band counts: test_timm_create_model_with_classes_bands_and_drop_path.


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_cfg_describes_preprocessing(name, classifier):
    model = classifier(name)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and not cfg["fixed_input_size"]
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == CROP_PCT[_family(name)]
    assert len(cfg["mean"]) == len(cfg["std"]) == 3
    assert cfg["num_classes"] == (0 if name == "lvt_backbone" else 1000)
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["input_size"] == (3, 224, 224) and data_cfg["crop_pct"] == cfg["crop_pct"]
    # What checkpoint loading relies on: the stem conv that bands are adapted in, the classifier(s) to skip.
    assert model.get_submodule(cfg["first_conv"]).weight.shape[1] == 3
    assert all(model.get_submodule(n).weight.shape[0] == NUM_CLASSES for n in _classifier_names(model))


@pytest.mark.parametrize("name", MODELS)
def test_get_classifier_holds_every_classifier_parameter(name, classifier):
    # Trainers that fine-tune the classifier alone (torchgeo's and TerraTorch's freeze_backbone) train
    # get_classifier().parameters() and freeze the rest.
    model = classifier(name)
    expected = {id(p) for n in _classifier_names(model) for p in model.get_submodule(n).parameters()}
    assert {id(p) for p in model.get_classifier().parameters()} == expected


@pytest.mark.parametrize("name", MODELS)
def test_features_only_gives_four_maps_at_strides_4_to_32(name):
    model = shallow(name, features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == CHANNELS[name]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 96, 128))
    expected = [(1, c, 96 // r, 128 // r) for c, r in zip(CHANNELS[name], (4, 8, 16, 32), strict=True)]
    assert [tuple(f.shape) for f in feats] == expected

    # Asking for maps 0 and 2 drops the stages after map 2.
    pruned = shallow(name, features_only=True, out_indices=(0, 2)).eval()
    assert len(pruned.model.stages) == int(model.feature_info.module_name()[2].split(".")[1]) + 1
    with torch.no_grad():
        assert [f.shape[1] for f in pruned(torch.randn(1, 3, 64, 64))] == [CHANNELS[name][0], CHANNELS[name][2]]


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates_follows_timm_convention(name, classifier):
    model = classifier(name)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        final, feats = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(model.forward_head(final), model(x))
        expected = [(2, c, *s) for c, s in zip(CHANNELS[name], _map_sizes(64, 96), strict=True)]
        assert [tuple(f.shape) for f in feats] == expected
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[0, 3], intermediates_only=True, stop_early=True)
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    assert len(last_two) == 2 and len(picked) == 2 and len(early) == 1
    torch.testing.assert_close(last_two[0], feats[2])
    torch.testing.assert_close(last_two[1], feats[3])
    torch.testing.assert_close(picked[0], feats[0])
    torch.testing.assert_close(picked[1], feats[3])
    torch.testing.assert_close(early[0], feats[1])

    pruned = copy.deepcopy(model)
    assert pruned.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(pruned.stages) == _feature_stages(model)[1] + 1
    assert isinstance(pruned.head, torch.nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(pruned.forward_intermediates(x, intermediates_only=True)[1], feats[1])


@pytest.mark.parametrize("size", [(150, 150), (160, 224), (100, 76)])
@pytest.mark.parametrize("name", MODELS)
def test_any_input_size(name, size, classifier):
    model = classifier(name)
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        logits = model.forward_head(final)
    assert logits.shape == (1, NUM_CLASSES) and torch.isfinite(logits).all()
    assert [tuple(m.shape[-2:]) for m in maps] == _map_sizes(*size)


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_receives_a_gradient_in_training(name):
    torch.manual_seed(0)
    model = shallow(name, num_classes=NUM_CLASSES, drop_path_rate=0.1).train()
    logits = model(torch.randn(2, 3, 64, 64))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, NUM_CLASSES)
    F.cross_entropy(logits, torch.tensor([1, 7])).backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert without == []


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPILED)
def test_torch_compile_matches_eager(name, classifier):
    model = classifier(name)
    x = torch.randn(2, 3, 64, 64)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_input_and_bf16_autocast(name, classifier):
    model = classifier(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), reference)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    assert F.cosine_similarity(low.float().flatten(), reference.flatten(), dim=0) > 0.99


@pytest.mark.parametrize("name", MODELS)
def test_local_checkpoint_adapts_bands_and_keeps_weights(name, classifier, tmp_path):
    source = classifier(name)
    path = tmp_path / "run.safetensors"
    save_file(source.state_dict(), str(path))
    depths = (1,) * NUM_STAGES[_family(name)]
    same = lemevit.create_model(name, num_classes=NUM_CLASSES, depths=depths, checkpoint=path).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(same(x), source(x))
    multispectral = lemevit.create_model(name, num_classes=NUM_CLASSES, in_chans=13, depths=depths,
                                         checkpoint=path).eval()
    assert multispectral.get_submodule(source.pretrained_cfg["first_conv"]).weight.shape[1] == 13
    for head in _classifier_names(source):
        torch.testing.assert_close(multispectral.get_submodule(head).weight, source.get_submodule(head).weight)
    with torch.no_grad():
        logits = multispectral(torch.randn(1, 13, 64, 64))
    assert logits.shape == (1, NUM_CLASSES) and torch.isfinite(logits).all()


def test_checkpoint_errors_name_the_file(tmp_path):
    depths = (1,) * NUM_STAGES["lemevit"]
    with pytest.raises(DataError, match="missing.pth"):
        lemevit.create_model("lemevit_tiny", depths=depths, checkpoint=tmp_path / "missing.pth")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 9999) + b"not a header")
    with pytest.raises(DataError, match="bad.safetensors"):
        lemevit.create_model("lemevit_tiny", depths=depths, checkpoint=bad)
    other = tmp_path / "other.safetensors"
    save_file({"layer.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(DataError, match="other.safetensors.*missing keys"):
        lemevit.create_model("lemevit_tiny", depths=depths, checkpoint=other)
