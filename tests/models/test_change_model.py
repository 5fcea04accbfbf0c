"""Change networks: BIT's structure and attention, identical dates give a uniform answer, any backbone and size."""
from __future__ import annotations

import pytest
import torch

from lemevit.config.optimization import nested_no_weight_decay
from lemevit.errors import ConfigError
from lemevit.models.change import BIT, SemanticTokenizer, SiamUNet, StackedPair, create_change_model


@pytest.fixture(scope="module")
def bit_tiny() -> BIT:
    torch.manual_seed(0)
    return create_change_model("bit", "lemevit_tiny").eval()


def test_bit_has_the_published_configuration(bit_tiny):
    assert bit_tiny.pos_embed.shape == (1, 2 * 4, 32)  # 4 tokens per date, width 32
    assert bit_tiny.tokenizer.attention.out_channels == 4 and bit_tiny.tokenizer.attention.bias is None
    assert len(bit_tiny.token_encoder) == 1 and len(bit_tiny.token_decoder) == 8
    attn = bit_tiny.token_decoder[0].attn
    assert attn.heads == 8 and attn.to_q.out_features == 8 * 64 and attn.to_q.bias is None
    assert attn.scale == pytest.approx(32 ** -0.5)
    assert bit_tiny.token_decoder[0].mlp[0].out_features == 64
    # The stride-16 map of LeMeViT-Tiny (stage 3, 192 channels); the last stage is not even built.
    assert bit_tiny.encoder.feature_info.reduction() == [16]
    assert bit_tiny.project[1].in_channels == 192 and bit_tiny.project[1].out_channels == 32
    assert {"pos_embed", "encoder.model.meta_tokens"} <= nested_no_weight_decay(bit_tiny)


def test_attention_is_scaled_by_the_model_width_as_bit_does(bit_tiny):
    attn = bit_tiny.token_decoder[0].attn
    pixels, tokens = torch.randn(2, 10, 32), torch.randn(2, 4, 32)
    q = attn.to_q(pixels).view(2, 10, 8, 64).transpose(1, 2)
    k, v = attn.to_kv(tokens).view(2, 4, 2, 8, 64).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-1, -2) * 32 ** -0.5).softmax(dim=-1)
    expected = attn.proj((weights @ v).transpose(1, 2).reshape(2, 10, 512))
    torch.testing.assert_close(attn(pixels, tokens), expected, atol=1e-5, rtol=1e-5)


def test_tokens_are_softmax_weighted_means_of_the_pixels():
    tokenizer = SemanticTokenizer(dim=6, token_len=4)
    constant = torch.arange(6.0)[None, :, None, None].expand(2, 6, 5, 7)
    torch.testing.assert_close(tokenizer(constant), torch.arange(6.0).expand(2, 4, 6))
    x = torch.randn(2, 6, 5, 7)
    tokens = tokenizer(x)
    low, high = x.amin(dim=(2, 3)), x.amax(dim=(2, 3))
    assert tokens.shape == (2, 4, 6)
    assert (tokens >= low[:, None] - 1e-6).all() and (tokens <= high[:, None] + 1e-6).all()


@pytest.mark.parametrize("head", ["bit", "siamunet"])
@pytest.mark.parametrize("backbone", ["lemevit_tiny", "resnet10t"])
def test_any_backbone_and_input_size(head, backbone):
    net = create_change_model(head, backbone, in_chans=4).eval()
    a = torch.randn(2, 4, 50, 78)
    with torch.no_grad():
        logits = net(a, torch.randn_like(a))
    assert logits.shape == (2, 2, 50, 78) and torch.isfinite(logits).all()


def test_identical_dates_give_a_spatially_uniform_prediction():
    torch.manual_seed(0)
    a = torch.randn(2, 3, 64, 96)
    siamunet = create_change_model("siamunet", "resnet10t").eval()
    with torch.no_grad():
        out = siamunet(a, a.clone())
    assert out.std(dim=(2, 3)).max() == 0  # the feature differences are exactly zero

    # BIT's positional embedding tells the dates' tokens apart; with the same embedding for both dates,
    # identical images give identical decoded features, a zero difference and one answer everywhere.
    bit = create_change_model("bit", "resnet10t").eval()
    with torch.no_grad():
        bit.pos_embed[:, 4:] = bit.pos_embed[:, :4]
        out = bit(a, a.clone())
    assert out.std(dim=(2, 3)).max() == 0
    assert (out.argmax(dim=1) == out.argmax(dim=1)[:, :1, :1]).all()


def test_the_siamese_difference_does_not_depend_on_the_order_of_the_dates():
    net = SiamUNet("resnet10t").eval()
    a, b = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(a, b), net(b, a))
        torch.testing.assert_close(StackedPair(net)(torch.cat([a, b], dim=1)), net(a, b))


def test_bad_names_are_clear_errors():
    with pytest.raises(ConfigError, match="head: must be one of bit, siamunet"):
        create_change_model("unet", "resnet10t")
    with pytest.raises(ValueError, match="no_such_backbone"):
        create_change_model("bit", "no_such_backbone")
