"""Training and evaluation transforms for scene images of any band count.

The transforms take the ``(C, H, W)`` float32 tensors :class:`~lemevit.data.SceneDataset` gives, in the
image's own value scale (0..255 for 8-bit data, 0..65535 for 16-bit, ...), and normalise them with a
per-band mean and std given in that same scale (:func:`~lemevit.data.band_statistics` computes them).
All augmentations are torchvision's ``transforms.v2`` operations.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2

from lemevit.errors import ConfigError, DataError

__all__ = ["IMAGENET_RGB_MEAN_STD", "eval_transform", "normalised_tensor", "train_transform"]

#: ImageNet's RGB mean and std in the 0..255 scale of 8-bit images: ``mean, std = IMAGENET_RGB_MEAN_STD``.
IMAGENET_RGB_MEAN_STD: tuple[tuple[float, ...], tuple[float, ...]] = (
    tuple(255.0 * m for m in IMAGENET_DEFAULT_MEAN), tuple(255.0 * s for s in IMAGENET_DEFAULT_STD))

# timm's policy-string spelling, reduced to the two settings torchvision's RandAugment has: "rand-m9-n2".
_RANDAUGMENT_PART = re.compile(r"(?P<key>[mn])(?P<value>\d+)")


def _check_mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if not mean or len(mean) != len(std):
        raise ConfigError("mean", f"mean and std need one value per band and the same length; got {len(mean)} means "
                         f"and {len(std)} stds")
    bad = [i for i, s in enumerate(std) if not s > 0]
    if bad:
        raise ConfigError("std", f"must be positive for every band; band(s) {bad} have std {[std[i] for i in bad]} "
                         "(a band that is constant over the training images carries no information: drop it)")
    return mean, std


def _check_img_size(img_size: int) -> int:
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
        raise ConfigError("img_size", f"must be a positive integer, got {img_size!r}")
    return img_size


class _ToUint8Range(torch.nn.Module):
    """Float image in the 0..255 scale -> uint8 tensor, for torchvision's RandAugment, whose colour
    operations assume the value range of the dtype (0..1 for float, 0..255 for uint8)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        top = float(image.max())
        # Resampling with antialias can overshoot the input range by a little; anything more is not 8-bit.
        if top > 256.0:
            raise DataError(f"RandAugment needs images in the 0..255 scale of 8-bit data; got a value of "
                             f"{top:g}. Turn randaugment off for data of another scale.")
        return image.round().clamp_(0, 255).to(torch.uint8)


class _ToFloat(torch.nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.to(torch.float32)


def _parse_randaugment(spec: str) -> dict:
    """``"rand"``, ``"rand-m9"``, ``"rand-m9-n2"`` (timm's spelling) -> RandAugment keyword arguments."""
    parts = spec.split("-")
    if parts[0] != "rand":
        raise ConfigError("randaugment", f"must look like 'rand-m9-n2' (m: magnitude 0..30, n: number of operations), "
                         f"got {spec!r}")
    kwargs = {}
    for part in parts[1:]:
        match = _RANDAUGMENT_PART.fullmatch(part)
        if match is None:
            raise ConfigError("randaugment", f"{spec!r}: cannot use {part!r}; torchvision's RandAugment takes only m "
                             "(magnitude 0..30) and n (number of operations), e.g. 'rand-m9-n2'")
        kwargs["magnitude" if match["key"] == "m" else "num_ops"] = int(match["value"])
    if not 0 <= kwargs.get("magnitude", 0) <= 30:
        raise ConfigError("randaugment", f"{spec!r}: magnitude must be in 0..30")
    return kwargs


def train_transform(img_size: int, mean: Sequence[float], std: Sequence[float], hflip: float = 0.5,
                    vflip: float = 0.5, rot90: bool = True, scale: tuple[float, float] = (0.5, 1.0),
                    randaugment: str | None = None,
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> v2.Compose:
    """Random resized crop, flips, random multiple-of-90° rotation, optional RandAugment, normalisation.

    Aerial scenes have no canonical orientation, hence vertical flips and 90° rotations by default;
    the rotations are exact (no interpolation) because the crop is square.

    Args:
        img_size: side of the square output.
        mean, std: per band, in the images' own value scale.
        hflip, vflip: probabilities of a horizontal / vertical flip.
        rot90: rotate by 0, 90, 180 or 270 degrees, each with probability 1/4.
        scale: range of the crop's area as a fraction of the image's (``RandomResizedCrop``).
        randaugment: torchvision's RandAugment, spelt as timm does: ``"rand-m9-n2"`` (magnitude 9, two
            operations; ``"rand"`` alone uses torchvision's defaults). Only for 3-band images in the
            0..255 scale; it is a ValueError for other band counts.
        ratio: range of the crop's aspect ratio before it is resized to a square.
    """
    img_size = _check_img_size(img_size)
    mean, std = _check_mean_std(mean, std)
    for name, p in (("hflip", hflip), ("vflip", vflip)):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(name, f"is a probability and must be in [0, 1], got {p!r}")
    if not (len(scale) == 2 and 0.0 < scale[0] <= scale[1] <= 1.0):
        raise ConfigError("scale", f"must be (min, max) area fractions with 0 < min <= max <= 1, got {scale!r}")
    steps: list = [v2.RandomResizedCrop(img_size, scale=tuple(scale), ratio=tuple(ratio), antialias=True)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    if vflip > 0:
        steps.append(v2.RandomVerticalFlip(p=vflip))
    if rot90:
        # On a square image torchvision's rotation by a multiple of 90° (nearest sampling) moves pixels
        # exactly; the tests check this, so no resampling blur is introduced.
        steps.append(v2.RandomChoice([v2.Identity()] + [v2.RandomRotation((a, a)) for a in (90, 180, 270)]))
    if randaugment:
        if len(mean) != 3:
            raise ConfigError("randaugment", f"works on 3-band (RGB) 8-bit images only; these have {len(mean)} bands. "
                             "Leave randaugment unset for multispectral data.")
        steps += [_ToUint8Range(), v2.RandAugment(**_parse_randaugment(randaugment)), _ToFloat()]
    steps.append(v2.Normalize(mean, std))
    return v2.Compose(steps)


def eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Resize the whole scene to ``img_size`` × ``img_size`` (no crop: the label describes the whole
    image, and a centre crop could cut away what defines the class) and normalise."""
    img_size = _check_img_size(img_size)
    mean, std = _check_mean_std(mean, std)
    return v2.Compose([v2.Resize((img_size, img_size), antialias=True), v2.Normalize(mean, std)])


def normalised_tensor(image: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(H, W, C)`` pixels of any data type → ``(C, H, W)`` float32, normalised by per-band ``mean`` and ``std``
    of shape ``(C, 1, 1)``."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
    return (x - mean) / std
