"""LVT and VVT behave as timm models: dense features, any input size, any band count, training, compile,
segmentation decoders; their attention layers compute what the papers define."""
from __future__ import annotations

import math

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import lemevit.models.lvt  # noqa: F401  (registers lvt, lvt_backbone)
import lemevit.models.vvt  # noqa: F401  (registers vvt_tiny/small/medium/large)
from lemevit.layers.lvt_attention import ConvolutionalSelfAttention
from lemevit.layers.vicinity_attention import VicinityAttention

MODELS = ["lvt", "vvt_tiny"]
CHANNELS = {"lvt": [64, 64, 160, 256], "vvt_tiny": [96, 160, 320, 512]}
NUM_CLASSES = 10


def _map_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """Spatial sizes of the four stages: conv7x7/4 (padding 3), then conv3x3/2 (padding 1)."""
    sizes = [(math.ceil(h / 4), math.ceil(w / 4))]
    for _ in range(3):
        sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
    return sizes


@pytest.fixture(scope="module")
def classifiers() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: timm.create_model(name, num_classes=NUM_CLASSES).eval() for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
def test_features_only_gives_four_maps_at_strides_4_to_32(name):
    model = timm.create_model(name, features_only=True).eval()
    assert model.feature_info.channels() == CHANNELS[name]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 96, 128))
    expected = [(1, c, 96 // r, 128 // r) for c, r in zip(CHANNELS[name], (4, 8, 16, 32), strict=True)]
    assert [tuple(f.shape) for f in feats] == expected

    pruned = timm.create_model(name, features_only=True, out_indices=(0, 2)).eval()
    assert len(pruned.model.stages) == 3
    with torch.no_grad():
        assert [f.shape[1] for f in pruned(torch.randn(1, 3, 64, 64))] == [CHANNELS[name][0], CHANNELS[name][2]]


def test_lvt_features_only_is_the_dense_backbone_with_per_stage_norms():
    model = timm.create_model("lvt", features_only=True)
    assert model.model.dense_backbone and len(model.model.stage_norms) == 4
    assert model.model.cls_token is None and len(model.model.post_blocks) == 0
    # The classifier's own stage outputs on request: no per-stage norms, no class-token layers left over.
    plain = timm.create_model("lvt", features_only=True, dense_backbone=False)
    assert plain.model.stage_norms is None
    assert not any(k.startswith(("cls_token", "post_blocks", "norm.", "head", "aux_head"))
                   for k in plain.model.state_dict())


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates(name, classifiers):
    model = classifiers[name]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        expected = [(c, *s) for c, s in zip(CHANNELS[name], _map_sizes(64, 96), strict=True)]
        assert [tuple(m.shape[1:]) for m in maps] == expected
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(last_two) == 2
        torch.testing.assert_close(last_two[1], maps[3])
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(early[0], maps[1])


def test_lvt_forward_intermediates_norm_applies_the_final_norm_to_the_last_map(classifiers):
    model = classifiers["lvt"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        raw = model.forward_intermediates(x, indices=[3], intermediates_only=True)[0]
        normed = model.forward_intermediates(x, indices=[3], norm=True, intermediates_only=True)[0]
        torch.testing.assert_close(normed, model.norm(raw.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        with pytest.raises(ValueError, match="intermediates_only=True"):
            model.forward_intermediates(x, indices=[1], stop_early=True)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("size", [(150, 150), (160, 224), (100, 76)])
def test_any_input_size(name, size, classifiers):
    model = classifiers[name]
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        logits = model(x)
        maps = model.forward_intermediates(x, intermediates_only=True)
    assert logits.shape == (1, NUM_CLASSES) and torch.isfinite(logits).all()
    assert [tuple(m.shape[-2:]) for m in maps] == _map_sizes(*size)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("in_chans", [1, 13])
def test_other_band_counts(name, in_chans):
    model = timm.create_model(name, in_chans=in_chans, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_chans, 64, 64)).shape == (2, 5)


@pytest.mark.parametrize("name", MODELS)
def test_wrong_band_count_names_expected_and_received_channels(name, classifiers):
    model = classifiers[name]
    with pytest.raises(ValueError, match=r"with 3 channels, got shape \(1, 4, 64, 64\) with 4 channels"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match=r"with 3 channels.*with 4 channels"):
        model.forward_intermediates(torch.randn(1, 4, 64, 64))


@pytest.mark.parametrize("name", MODELS)
def test_training_gives_ordinary_logits_and_every_parameter_a_gradient(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=NUM_CLASSES)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        eval_logits = model.eval()(x)
    logits = model.train()(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, NUM_CLASSES)
    # Without dropout, training and inference compute the same logits (LVT: head(cls) + 0.5 max aux).
    torch.testing.assert_close(logits, eval_logits)
    F.cross_entropy(logits, torch.tensor([1, 7])).backward()
    without = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not without


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_torch_compile_matches_eager(name):
    # One block per stage: the same modules as the full model, half the graph to compile on a CPU.
    model = timm.create_model(name, depths=(1, 1, 1, 1), num_classes=NUM_CLASSES).eval()
    x = torch.randn(1, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch, encoder", [(smp.UPerNet, "tu-vvt_tiny"), (smp.Segformer, "tu-lvt")])
def test_segmentation_model_builds_and_trains_one_step(arch, encoder):
    torch.manual_seed(0)
    model = arch(encoder_name=encoder, encoder_weights=None, classes=6).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, target = torch.randn(2, 3, 128, 128), torch.randint(0, 6, (2, 128, 128))
    out = model(x)
    assert out.shape == (2, 6, 128, 128)
    loss = F.cross_entropy(out, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.encoder.parameters())
    before = model.encoder.model.model.stages[0].patch_embed.proj.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.encoder.model.model.stages[0].patch_embed.proj.weight)


def _randomise(module: torch.nn.Module, std: float = 0.3) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)


def test_vicinity_attention_matches_its_quadratic_definition_on_a_non_square_map():
    torch.manual_seed(0)
    attn = VicinityAttention(16, num_heads=2).eval()
    _randomise(attn)
    x = torch.randn(1, 5, 7, 16)
    B, H, W, C = x.shape
    rows, cols = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    a, b = (math.pi / 2) * rows.flatten() / H, (math.pi / 2) * cols.flatten() / W

    def heads(t):
        return t.reshape(H * W, 2, -1)

    with torch.no_grad():
        q, k, v = F.relu(heads(attn.q(x))), F.relu(heads(attn.k(x))), heads(attn.v(x))
        vicinity = torch.cos(a[:, None] - a[None]) + torch.cos(b[:, None] - b[None])  # (N, N)
        weights = torch.einsum("nhd,mhd->hnm", q, k) * vicinity
        out = torch.einsum("hnm,mhd->nhd", weights, v) / (weights.sum(-1).T[..., None] + 1e-4)
        out = attn.proj(out.reshape(B, H, W, -1))
        expected = out + out * attn.gate(x)
        torch.testing.assert_close(attn(x), expected, atol=1e-3, rtol=1e-3)


class _LargestTensor(TorchDispatchMode):
    """Records the element count of the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_vicinity_attention_never_builds_a_token_by_token_matrix():
    attn = VicinityAttention(32, num_heads=2).eval()
    x = torch.randn(1, 64, 64, 32)
    N, C = 64 * 64, 32
    with torch.no_grad(), _LargestTensor() as probe:
        attn(x)
    assert probe.largest <= 4 * N * C < N * N


def test_csa_matches_its_window_by_window_definition_on_an_odd_map():
    torch.manual_seed(0)
    csa = ConvolutionalSelfAttention(8, num_heads=2).eval()
    _randomise(csa)
    x = torch.randn(1, 7, 9, 8)
    H, W, C = x.shape[1:]
    with torch.no_grad():
        pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), 2, 2, ceil_mode=True)[0]  # one pixel per window
        padded = F.pad(x[0], (0, 0, 1, 1, 1, 1))
        expected = torch.zeros(H, W, C)
        for i in range(pooled.shape[1]):
            for j in range(pooled.shape[2]):
                mix = (csa.attn(pooled[:, i, j]).view(2, 9, 9) * csa.scale).softmax(-1)
                offsets = [(di, dj) for di in range(3) for dj in range(3)]
                values = torch.stack([csa.v_weight[p] @ padded[2 * i + di, 2 * j + dj]
                                      for p, (di, dj) in enumerate(offsets)]).view(9, 2, C // 2)
                mixed = torch.einsum("hpq,qhd->phd", mix, values).reshape(9, C)
                for p, (di, dj) in enumerate(offsets):
                    r, c = 2 * i + di - 1, 2 * j + dj - 1
                    if 0 <= r < H and 0 <= c < W:
                        expected[r, c] += mixed[p]
        torch.testing.assert_close(csa(x)[0], csa.proj(expected), atol=1e-4, rtol=1e-4)
