"""Training and evaluation transforms of scene images of any band count."""
from __future__ import annotations

import random

import pytest
import torch
from torchvision.transforms import v2

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
    with pytest.raises(ValueError, match="rand-m9-mstd0.5-inc1"):
        train_transform(32, mean, std, randaugment="augmix-m5")
    with pytest.raises(ValueError, match="0..255"):
        train_transform(32, mean, std, randaugment="rand")(image * 100)
    with pytest.raises(ValueError, match=r"band\(s\) \[1\]"):
        eval_transform(32, [0.0, 0.0], [1.0, 0.0])
    with pytest.raises(ValueError, match="same length"):
        eval_transform(32, [0.0, 0.0], [1.0])


def _fixed(**kwargs):
    """A training transform whose crop, flips and rotations change nothing, to see what the others do."""
    mean, std = IMAGENET_RGB_MEAN_STD
    return train_transform(32, mean, std, hflip=0.0, vflip=0.0, rot90=False, scale=(1.0, 1.0), ratio=(1.0, 1.0),
                           **kwargs)


def test_timm_randaugment_is_a_function_of_torch_seed_and_leaves_python_random_alone():
    image = torch.randint(0, 256, (3, 32, 32)).float()
    transform = _fixed(randaugment="rand-m9-mstd0.5-inc1")
    random.seed(5)
    expected_next = random.random()
    random.seed(5)
    outputs = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        outputs.append(transform(image))
    assert random.random() == expected_next
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])


def test_colour_jitter_random_erasing_and_bicubic():
    image = torch.randint(0, 256, (3, 32, 32)).float()
    torch.manual_seed(0)
    plain = _fixed()(image)
    assert not torch.equal(_fixed(color_jitter=0.4)(image), plain)
    erased = _fixed(random_erasing=1.0)(image)
    changed = (erased != plain).any(0)
    assert 0 < changed.float().mean() < 1  # a rectangle, not the whole image
    # As timm does, colour jitter gives way to RandAugment.
    assert not any(isinstance(step.operation, v2.ColorJitter) for step in
                   _fixed(randaugment="rand-m9", color_jitter=0.4).transforms if hasattr(step, "operation"))
    mean, std = IMAGENET_RGB_MEAN_STD
    big = torch.randint(0, 256, (3, 50, 50)).float()
    assert not torch.equal(eval_transform(32, mean, std, "bicubic")(big), eval_transform(32, mean, std)(big))
    with pytest.raises(ValueError, match="interpolation: must be one of bilinear, bicubic"):
        eval_transform(32, mean, std, "lanczos")
    with pytest.raises(ValueError, match="color_jitter: works on 3-band"):
        train_transform(32, [0.0] * 4, [1.0] * 4, color_jitter=0.4)
