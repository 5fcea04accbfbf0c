"""LeMeViT as a timm model: creation, checkpoints, dense features, input sizes, the PyTorch toolbox."""
from __future__ import annotations

import struct

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import lemevit
from lemevit.explain import meta_attention, meta_attention_blocks, save_meta_attention_png
from lemevit.models.lemevit import LeMeViT


def small_model(**kwargs) -> LeMeViT:
    """The mini parity configuration: same structure as the paper's models, fast on CPU."""
    cfg = dict(depths=(1, 1, 1, 2, 1), dims=(32, 32, 64, 96, 128), num_classes=10)
    return LeMeViT(**{**cfg, **kwargs})


@pytest.mark.parametrize("in_chans", [1, 3, 4, 13])
def test_timm_create_model_with_classes_bands_and_drop_path(in_chans):
    model = timm.create_model("lemevit_tiny", num_classes=51, in_chans=in_chans, drop_path_rate=0.1).eval()
    rates = [b.drop_path.drop_prob for s in model.stages for b in s.blocks if hasattr(b.drop_path, "drop_prob")]
    assert max(rates) == pytest.approx(0.1)
    with torch.no_grad():
        assert model(torch.randn(2, in_chans, 64, 64)).shape == (2, 51)


def test_pretrained_cfg_describes_preprocessing():
    cfg = timm.create_model("lemevit_small").pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224)
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.9
    assert len(cfg["mean"]) == len(cfg["std"]) == 3
    data_cfg = timm.data.resolve_data_config({}, model=timm.create_model("lemevit_tiny"))
    assert data_cfg["input_size"] == (3, 224, 224)


def test_local_checkpoint_adapts_bands_and_keeps_weights(tmp_path):
    source = timm.create_model("lemevit_tiny", num_classes=51).eval()
    path = tmp_path / "run.safetensors"
    save_file(source.state_dict(), str(path))
    same = lemevit.create_model("lemevit_tiny", num_classes=51, checkpoint=path).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(same(x), source(x))
    multispectral = lemevit.create_model("lemevit_tiny", num_classes=51, in_chans=13, checkpoint=path)
    assert multispectral.stem.conv1.weight.shape[1] == 13
    torch.testing.assert_close(multispectral.head.weight, source.head.weight)


def test_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        lemevit.create_model("lemevit_tiny", checkpoint=tmp_path / "missing.pth")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 9999) + b"not a header")
    with pytest.raises(ValueError, match="bad.safetensors"):
        lemevit.create_model("lemevit_tiny", checkpoint=bad)
    other = tmp_path / "other.safetensors"
    save_file({"layer.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(RuntimeError, match="missing keys"):
        lemevit.create_model("lemevit_tiny", checkpoint=other)


def test_features_only_gives_four_maps_at_strides_4_to_32():
    model = timm.create_model("lemevit_tiny", features_only=True).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels() == [64, 128, 192, 320]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 56, 56), (1, 128, 28, 28), (1, 192, 14, 14), (1, 320, 7, 7)]


def test_forward_intermediates_follows_timm_convention():
    model = small_model().eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        tokens, feats = model.forward_intermediates(x)
        assert len(feats) == 4
        torch.testing.assert_close(tokens, model.forward_features(x))
        torch.testing.assert_close(model.forward_head(tokens), model(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        picked = model.forward_intermediates(x, indices=[0, 3], intermediates_only=True, stop_early=True)
        normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)
    torch.testing.assert_close(last_two[0], feats[2])
    torch.testing.assert_close(picked[1], feats[3])
    torch.testing.assert_close(normed[0], model.norm(feats[3]))
    pruned = small_model().eval()
    pruned.load_state_dict(model.state_dict())
    assert pruned.prune_intermediate_layers([0, 1]) == [0, 1]
    assert len(pruned.stages) == 3 and isinstance(pruned.head, torch.nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(pruned.forward_intermediates(x, intermediates_only=True)[1], feats[1])


@pytest.mark.parametrize("size", [(150, 150), (160, 224), (1000, 1000)])
def test_any_input_size(size):
    model = small_model().eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert model(x).shape == (1, 10)
        feats = model.forward_intermediates(x, intermediates_only=True)
    half = lambda sides: [-(-s // 2) for s in sides]  # noqa: E731  (3x3 stride-2 convs round up)
    expected, sides = [], half(half(list(size)))
    for _ in range(4):
        expected.append(tuple(sides))
        sides = half(sides)
    assert [tuple(f.shape[-2:]) for f in feats] == expected


def test_wrong_channel_count_names_expected_and_received():
    model = timm.create_model("lemevit_tiny", in_chans=4)
    with pytest.raises(ValueError, match=r"4 input channels.*got.*3 channels"):
        model(torch.randn(1, 3, 64, 64))


def test_every_attention_goes_through_sdpa(monkeypatch):
    calls = []
    original = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("scale"))
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    model = small_model().eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    # C block: 1 call; D blocks: 2 each (2 blocks); S blocks: 2 each (3 blocks).
    assert len(calls) == 1 + 2 * 2 + 2 * 3
    # The D image branch uses log_N(M) * dim^-0.5 with N = 16x16 tokens at stride 4, M = 16, dim = 32.
    assert calls[1] == pytest.approx(torch.log(torch.tensor(16.0)).item() / torch.log(torch.tensor(256.0)).item()
                                     * 32 ** -0.5)


def test_meta_attention_maps_and_png(tmp_path):
    model = small_model().eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        before = model(x)
    blocks = meta_attention_blocks(model)
    assert blocks == ["stages.0.blocks.0", "stages.1.blocks.0", "stages.2.blocks.0"]
    maps = meta_attention(model, x)
    assert maps.shape == (2, 16, 8, 12)  # deepest D block, stride 8
    torch.testing.assert_close(maps.sum(dim=(-1, -2)), torch.ones(2, 16))
    first = meta_attention(model, x, block="stages.0.blocks.0")
    assert first.shape == (2, 16, 16, 24)
    with pytest.raises(ValueError, match="stages.3.blocks.0"):
        meta_attention(model, x, block="stages.3.blocks.0")
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)  # capture is switched off again
    out = save_meta_attention_png(x[0], maps[0], tmp_path / "attn.png", tokens=[0, 1, 2])
    header = out.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width > 200 and height > 100


def test_every_parameter_receives_a_gradient():
    model = small_model(drop_path_rate=0.1).train()
    loss = F.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([1, 2]))
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []
    assert model.meta_tokens.grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([3, 4])
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = small_model().train()
        model.set_grad_checkpointing(checkpointing)
        F.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


def test_reset_classifier_and_no_weight_decay():
    model = small_model().eval()
    model.reset_classifier(5)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
        model.reset_classifier(0)
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 128)
    assert "meta_tokens" in model.no_weight_decay()
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    no_decay = [p for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert any(p is model.meta_tokens for p in no_decay)


def test_channels_last_input_and_bf16_autocast():
    model = small_model().eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)
        torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), reference)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(low.float().flatten(), reference.flatten(), dim=0) > 0.99


def test_chunked_cpu_inference_mlp_matches_the_plain_path():
    from lemevit.layers.mlp import Mlp

    mlp, norm = Mlp(16, 64).eval(), torch.nn.LayerNorm(16)
    x = torch.randn(3, 5000, 16)
    with torch.no_grad():
        plain = mlp._plain(x)
        plain_residual = x + mlp._plain(norm(x))
        mlp.chunk_above_bytes, mlp.chunk_bytes = 0, 64 * 4 * 300
        assert mlp._use_chunks(x)
        torch.testing.assert_close(mlp(x), plain)
        torch.testing.assert_close(mlp.residual(x, norm, torch.nn.Identity()), plain_residual)
    assert not mlp._use_chunks(x)  # autograd on: the plain path


@pytest.mark.slow
def test_torch_compile_matches_eager():
    model = small_model().eval()
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)


def test_smp_upernet_trains_one_step_at_512():
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = smp.UPerNet(encoder_name="tu-lemevit_tiny", encoder_weights=None, classes=6).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(2, 3, 512, 512), torch.randint(0, 6, (2, 512, 512))
    logits = model(x)
    assert logits.shape == (2, 6, 512, 512)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    before = model.encoder.model.model.stem.conv1.weight.detach().clone()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, model.encoder.model.model.stem.conv1.weight)


def test_cli_lists_models_with_parameter_counts(capsys):
    from lemevit.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "lemevit_tiny" in out and "8,635,816" in out and "53,098,152" in out
