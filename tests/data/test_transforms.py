"""Training and evaluation transforms of scene images of any band count."""
from __future__ import annotations

import pytest
import torch

from lemevit.data import IMAGENET_RGB_MEAN_STD, eval_transform, train_transform


@pytest.mark.parametrize("bands", [3, 5])
def test_transform_shapes(bands):
    torch.manual_seed(0)
    image = torch.rand(bands, 37, 23) * 255
    mean, std = [100.0] * bands, [50.0] * bands
    for transform in (train_transform(32, mean, std), eval_transform(32, mean, std)):
        out = transform(image)
        assert out.shape == (bands, 32, 32) and out.dtype == torch.float32
    # Evaluation keeps the whole scene: a constant image stays that constant, normalised.
    const = torch.full((bands, 37, 23), 150.0)
    torch.testing.assert_close(eval_transform(16, mean, std)(const), torch.full((bands, 16, 16), 1.0))


def test_train_transform_rotations_are_exact():
    torch.manual_seed(0)
    image = torch.arange(5 * 24 * 24, dtype=torch.float32).reshape(5, 24, 24)
    transform = train_transform(24, [0.0] * 5, [1.0] * 5, hflip=0.0, vflip=0.0, rot90=True, scale=(1.0, 1.0),
                                ratio=(1.0, 1.0))
    rotations = [torch.rot90(image, k, dims=(-2, -1)) for k in range(4)]
    seen = set()
    for _ in range(40):
        out = transform(image)
        matches = [k for k, r in enumerate(rotations) if torch.equal(out, r)]
        assert len(matches) == 1, "a 90° rotation must move pixels exactly"
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_randaugment_and_argument_checks():
    torch.manual_seed(0)
    mean, std = IMAGENET_RGB_MEAN_STD
    image = torch.randint(0, 256, (3, 40, 40)).float()
    out = train_transform(32, mean, std, randaugment="rand-m9-n2")(image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="3-band"):
        train_transform(32, [0.0] * 5, [1.0] * 5, randaugment="rand-m9-n2")
    with pytest.raises(ValueError, match="rand-m9-n2"):
        train_transform(32, mean, std, randaugment="augmix-m5")
    with pytest.raises(ValueError, match="0..255"):
        train_transform(32, mean, std, randaugment="rand")(image * 100)
    with pytest.raises(ValueError, match=r"band\(s\) \[1\]"):
        eval_transform(32, [0.0, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="same length"):
        eval_transform(32, [0.0, 0.0], [1.0])
