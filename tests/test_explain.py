"""What the meta tokens look at: attention maps of LeMeViT's meta-token blocks and their picture."""
from __future__ import annotations

import struct

import pytest
import torch

from lemevit.explain import meta_attention, meta_attention_blocks, save_meta_attention_png
from lemevit.models.lemevit import LeMeViT


def small_model(**kwargs) -> LeMeViT:
    """The mini parity configuration: same structure as the paper's models, fast on CPU."""
    cfg = dict(depths=(1, 1, 1, 2, 1), dims=(32, 32, 64, 96, 128), num_classes=10)
    return LeMeViT(**{**cfg, **kwargs})


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
