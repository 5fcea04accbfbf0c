"""The sliding window: its grid, seamless blending, strips of bounded height."""
from __future__ import annotations

import pytest
import torch

from lemevit.errors import ConfigError
from lemevit.inference.sliding_window import blend_weight, blended_strips, sliding_window_probs, window_starts
from lemevit.models.segmentation import SegmentationModel


class Constant(torch.nn.Module):
    """Logits that do not depend on the input: any seam in the blending would show."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[None, :, None, None].expand(x.shape[0], -1, *x.shape[2:])


def pointwise(in_chans: int = 3, classes: int = 4) -> torch.nn.Module:
    """A 1x1 convolution: each pixel's logits depend on that pixel only, so tiling cannot change them."""
    torch.manual_seed(0)
    return torch.nn.Conv2d(in_chans, classes, 1).eval()


def test_windows_cover_the_axis_with_the_last_one_flush_with_the_end():
    assert window_starts(1000, 512, 384) == [0, 384, 488]
    assert window_starts(512, 512, 384) == [0]
    assert window_starts(100, 512, 384) == [0]
    assert window_starts(1280, 512, 384) == [0, 384, 768]
    with pytest.raises(ConfigError, match="stride: must be an integer from 1 to the window"):
        window_starts(1000, 512, 600)
    weight = blend_weight(512)
    assert weight.min() > 0 and weight.max() <= 1
    torch.testing.assert_close(weight, weight.flip(0))


def test_one_window_over_an_image_of_its_size_is_the_direct_forward_pass():
    torch.manual_seed(0)
    model = SegmentationModel("lemevit_tiny", "upernet", num_classes=4, decoder_channels=16).eval()
    image = torch.randn(3, 64, 64)
    with torch.inference_mode():
        direct = model(image[None]).softmax(dim=1)[0]
    torch.testing.assert_close(sliding_window_probs(model, image, window=64, stride=48), direct)


def test_blending_is_seamless():
    image = torch.randn(3, 150, 97)
    constant = sliding_window_probs(Constant([0.0, 2.0, -1.0, 0.5]), image, window=32, stride=20)
    expected = torch.tensor([0.0, 2.0, -1.0, 0.5]).softmax(dim=0)
    torch.testing.assert_close(constant, expected[:, None, None].expand(4, 150, 97), atol=1e-6, rtol=0)

    model = pointwise()
    with torch.inference_mode():
        direct = model(image[None]).softmax(dim=1)[0]
    torch.testing.assert_close(sliding_window_probs(model, image, window=32, stride=20), direct)


def test_strips_come_in_order_and_hold_at_most_a_window_of_rows():
    image = torch.randn(3, 130, 40)
    strips = list(blended_strips(lambda a, b: image[:, a:b], 130, 40, lambda x: pointwise()(x).softmax(1),
                                 window=32, stride=24))
    assert [top for top, _ in strips] == [0, 24, 48, 72, 96, 98]  # the last window starts at 130 - 32
    assert sum(p.shape[1] for _, p in strips) == 130 and max(p.shape[1] for _, p in strips) <= 32


