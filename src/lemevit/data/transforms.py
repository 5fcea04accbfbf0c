"""Training and evaluation transforms for scene images of any band count.

The transforms take the ``(C, H, W)`` float32 tensors :class:`~lemevit.data.SceneDataset` gives, in the
image's own value scale (0..255 for 8-bit data, 0..65535 for 16-bit, ...), and normalise them with a
per-band mean and std given in that same scale (:func:`~lemevit.data.band_statistics` computes them).
The augmentations are torchvision's ``transforms.v2`` operations and timm's RandAugment. The dense tasks'
crops (segmentation, change detection) draw their scale jitter and photometric distortion from the item's
own generator instead (:func:`region_side`, :func:`rescaled`, :class:`PhotometricDistortion`), so that the
image and its labels share one geometry.
"""
from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2

from lemevit.errors import ConfigError, DataError

__all__ = ["IMAGENET_RGB_MEAN_STD", "INTERPOLATIONS", "PhotometricDistortion", "check_scale_range", "class_cells",
           "crop_origin", "eval_transform", "fill_no_data", "normalised_tensor", "pixel_tensor", "region_side",
           "rescaled", "train_transform"]

#: ImageNet's RGB mean and std in the 0..255 scale of 8-bit images: ``mean, std = IMAGENET_RGB_MEAN_STD``.
IMAGENET_RGB_MEAN_STD: tuple[tuple[float, ...], tuple[float, ...]] = (
    tuple(255.0 * m for m in IMAGENET_DEFAULT_MEAN), tuple(255.0 * s for s in IMAGENET_DEFAULT_STD))

#: Resampling of the random resized crop and of the evaluation resize.
INTERPOLATIONS = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}


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


class _EightBitRGB(torch.nn.Module):
    """Runs ``operation`` (a PIL-image augmentation of timm's, or torchvision's colour jitter) on a float image in
    the 0..255 scale, converted to 8 bits and back. timm's RandAugment draws from Python's and NumPy's generators:
    they are seeded from torch's for the call (and restored after it), so that the augmentation stays a function
    of the item's seed like every other one."""

    def __init__(self, operation, what: str, pil: bool):
        super().__init__()
        self.operation, self.what, self.pil = operation, what, pil

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        top = float(image.max())
        # Resampling with antialias can overshoot the input range by a little; anything more is not 8-bit.
        if top > 256.0:
            raise DataError(f"{self.what} needs images in the 0..255 scale of 8-bit data; got a value of {top:g}. "
                            f"Turn it off for data of another scale.")
        pixels = image.round().clamp_(0, 255).to(torch.uint8)
        if not self.pil:
            return self.operation(pixels).to(torch.float32)
        seed = int(torch.randint(0, 2**31 - 1, ()))
        python_state, numpy_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed)
        try:
            out = self.operation(Image.fromarray(pixels.permute(1, 2, 0).numpy()))
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
        return torch.from_numpy(np.asarray(out, dtype=np.float32).transpose(2, 0, 1).copy())


def _randaugment(spec: str, img_size: int, mean: Sequence[float]):
    """timm's RandAugment of ``spec`` (``rand-m9-mstd0.5-inc1``), with the hyperparameters timm's
    ``create_transform`` gives it."""
    from timm.data.auto_augment import rand_augment_transform

    if not spec.startswith("rand"):
        raise ConfigError("randaugment", f"must be a timm RandAugment policy such as 'rand-m9-mstd0.5-inc1', got "
                                         f"{spec!r}")
    hparams = {"translate_const": int(img_size * 0.45), "img_mean": tuple(round(m) for m in mean)}
    try:
        return rand_augment_transform(spec, hparams)
    except (ValueError, AssertionError, KeyError) as e:
        raise ConfigError("randaugment", f"{spec!r} is not a timm RandAugment policy: {e}") from None


def train_transform(img_size: int, mean: Sequence[float], std: Sequence[float], hflip: float = 0.5,
                    vflip: float = 0.5, rot90: bool = True, scale: tuple[float, float] = (0.5, 1.0),
                    randaugment: str | None = None, color_jitter: float = 0.0, random_erasing: float = 0.0,
                    interpolation: str = "bilinear", ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> v2.Compose:
    """Random resized crop, flips, random multiple-of-90° rotation, RandAugment or colour jitter, normalisation,
    random erasing: the order of timm's ``create_transform``.

    Aerial scenes have no canonical orientation, hence vertical flips and 90° rotations by default;
    the rotations are exact (no interpolation) because the crop is square.

    Args:
        img_size: side of the square output.
        mean, std: per band, in the images' own value scale.
        hflip, vflip: probabilities of a horizontal / vertical flip.
        rot90: rotate by 0, 90, 180 or 270 degrees, each with probability 1/4.
        scale: range of the crop's area as a fraction of the image's (``RandomResizedCrop``).
        randaugment: timm's RandAugment policy (``"rand-m9-mstd0.5-inc1"``: magnitude 9 of 10, its standard
            deviation 0.5, increasing severity). 3-band 8-bit images only.
        color_jitter: brightness, contrast and saturation jitter of this strength (torchvision's); as in timm,
            not applied with ``randaugment``. 3-band 8-bit images only.
        random_erasing: probability of erasing a random rectangle with per-pixel normal noise after normalisation
            (torchvision's ``RandomErasing``, timm's "pixel" mode).
        interpolation: ``"bilinear"`` or ``"bicubic"`` resampling of the crop.
        ratio: range of the crop's aspect ratio before it is resized to a square.
    """
    img_size = _check_img_size(img_size)
    mean, std = _check_mean_std(mean, std)
    for name, p in (("hflip", hflip), ("vflip", vflip), ("random_erasing", random_erasing)):
        if not 0.0 <= p <= 1.0:
            raise ConfigError(name, f"is a probability and must be in [0, 1], got {p!r}")
    if not (len(scale) == 2 and 0.0 < scale[0] <= scale[1] <= 1.0):
        raise ConfigError("scale", f"must be (min, max) area fractions with 0 < min <= max <= 1, got {scale!r}")
    if interpolation not in INTERPOLATIONS:
        raise ConfigError("interpolation", f"must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    steps: list = [v2.RandomResizedCrop(img_size, scale=tuple(scale), ratio=tuple(ratio), antialias=True,
                                        interpolation=INTERPOLATIONS[interpolation])]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=hflip))
    if vflip > 0:
        steps.append(v2.RandomVerticalFlip(p=vflip))
    if rot90:
        # On a square image torchvision's rotation by a multiple of 90° (nearest sampling) moves pixels
        # exactly; the tests check this, so no resampling blur is introduced.
        steps.append(v2.RandomChoice([v2.Identity()] + [v2.RandomRotation((a, a)) for a in (90, 180, 270)]))
    for name, value in (("randaugment", randaugment), ("color_jitter", color_jitter)):
        if value and len(mean) != 3:
            raise ConfigError(name, f"works on 3-band (RGB) 8-bit images only; these have {len(mean)} bands. "
                                    "Leave it unset for multispectral data.")
    if randaugment:
        steps.append(_EightBitRGB(_randaugment(randaugment, img_size, mean), "RandAugment", pil=True))
    elif color_jitter:
        jitter = v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter)
        steps.append(_EightBitRGB(jitter, "colour jitter", pil=False))
    steps.append(v2.Normalize(mean, std))
    if random_erasing:
        steps.append(v2.RandomErasing(p=random_erasing, value="random"))
    return v2.Compose(steps)


def eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float],
                   interpolation: str = "bilinear") -> v2.Compose:
    """Resize the whole scene to ``img_size`` × ``img_size`` (no crop: the label describes the whole
    image, and a centre crop could cut away what defines the class) and normalise."""
    img_size = _check_img_size(img_size)
    mean, std = _check_mean_std(mean, std)
    if interpolation not in INTERPOLATIONS:
        raise ConfigError("interpolation", f"must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    return v2.Compose([v2.Resize((img_size, img_size), antialias=True, interpolation=INTERPOLATIONS[interpolation]),
                       v2.Normalize(mean, std)])


def pixel_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` pixels of any data type → ``(C, H, W)`` float32 in the image's own value scale."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))


def fill_no_data(image: np.ndarray, fill: Sequence[float]) -> tuple[np.ndarray, np.ndarray | None]:
    """``(H, W, C)`` pixels with those of no data, a NaN or infinite value in a band (which no model input can hold),
    set to ``fill``, a value a band (the band means, which normalise to 0); and the ``(H, W)`` booleans of the pixels
    with data, None when all have (an integer image always does)."""
    if image.dtype.kind != "f":
        return image, None
    valid = np.isfinite(image).all(axis=-1)
    if valid.all():
        return image, None
    return np.where(valid[..., None], image, np.asarray(fill, image.dtype)), valid


def normalised_tensor(image: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(H, W, C)`` pixels of any data type → ``(C, H, W)`` float32, normalised by per-band ``mean`` and ``std``
    of shape ``(C, 1, 1)``."""
    return (pixel_tensor(image) - mean) / std


def check_scale_range(scale_range: Sequence[float] | None) -> tuple[float, float] | None:
    """``scale_range`` as ``(low, high)``: two positive factors with ``low <= high``; None (no scale jitter) as
    it is."""
    if scale_range is None:
        return None
    values = tuple(scale_range) if isinstance(scale_range, (list, tuple)) else ()
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                  for v in values)
    if len(values) != 2 or not numbers or values[0] > values[1]:
        raise ConfigError("scale_range", f"must be two positive factors LOW HIGH with LOW <= HIGH (0.5 2.0 resizes "
                                         f"the tiles to half to twice their size), got {scale_range!r}")
    return float(values[0]), float(values[1])


def region_side(img_size: int, scale_range: tuple[float, float] | None, rng: np.random.Generator) -> int:
    """The side of the tile region that a training crop of ``img_size`` is cut from: ``img_size / factor`` for a
    factor drawn uniformly in ``scale_range``, which is a crop of the tile resized by that factor
    (mmsegmentation's ``Resize`` with a ``ratio_range``). Without a range it is ``img_size`` and nothing is
    drawn, so that the crops of runs without scale jitter stay what they were."""
    if scale_range is None:
        return img_size
    return max(1, round(img_size / rng.uniform(*scale_range)))


def draw_flips_and_turns(rng: np.random.Generator, flip: bool, rotate90: bool) -> tuple[list[int], int]:
    """A training crop's random flips (the axes, of ``(-1, -2)``, each with probability 1/2) and quarter turns,
    drawn from ``rng`` in that order, nothing drawn for what is off."""
    flips = [d for d, flipped in zip((-1, -2), rng.random(2) < 0.5, strict=True) if flipped] if flip else []
    return flips, int(rng.integers(0, 4)) if rotate90 else 0


def flipped_and_turned(tensors: Sequence[torch.Tensor], flips: list[int], turns: int) -> tuple[torch.Tensor, ...]:
    """Each of ``tensors`` (an image and its labels alike, ``(..., H, W)``) flipped along ``flips`` and turned by
    ``turns`` quarters, contiguous."""
    return tuple((t.flip(flips) if flips else t).rot90(turns, (-2, -1)).contiguous() for t in tensors)


def class_cells(mask: np.ndarray, cell: int, classes: Sequence[int]) -> list[np.ndarray]:
    """For each of ``classes`` present in ``mask`` ``(H, W)``, the ``(row, col)`` of the cells of ``cell`` pixels
    where it occurs (for :func:`crop_origin`)."""
    rows, cols = -(-mask.shape[0] // cell), -(-mask.shape[1] // cell)
    found = []
    for k in classes:
        present = np.zeros((rows * cell, cols * cell), dtype=bool)
        present[:mask.shape[0], :mask.shape[1]] = mask == k
        cells = np.argwhere(present.reshape(rows, cell, cols, cell).any(axis=(1, 3)))
        if len(cells):
            found.append(cells)
    return found


def crop_origin(height: int, width: int, side: int, rng: np.random.Generator, cells: list[np.ndarray] | None = None,
                cell: int = 1, balance: float = 0.0) -> tuple[int, int]:
    """The origin of a region of ``side`` pixels inside a ``height`` x ``width`` image (at 0 along a side it
    exceeds): uniform, or with probability ``balance`` one whose region holds a whole cell of a class drawn
    uniformly from ``cells`` (:func:`class_cells`). A class covering 2 % of an image is otherwise in few crops and
    rarely predicted. Without ``cells`` (or ``balance`` 0) nothing more is drawn than for a uniform origin."""
    if not cells or not balance or rng.random() >= balance:
        return int(rng.integers(0, max(height - side, 0) + 1)), int(rng.integers(0, max(width - side, 0) + 1))
    chosen = cells[int(rng.integers(len(cells)))]
    row, col = chosen[int(rng.integers(len(chosen)))] * cell

    def covering(start: int, extent: int) -> int:
        # An origin whose region holds the whole cell [start, start + cell) and stays inside the image; a region
        # smaller than a cell (a large scale factor) lies within the cell instead.
        low, high = sorted((max(0, min(start + cell, extent) - side), min(start, max(extent - side, 0))))
        return int(rng.integers(low, high + 1))

    return covering(int(row), height), covering(int(col), width)


def rescaled(x: torch.Tensor, side: int, img_size: int, labels: bool = False) -> torch.Tensor:
    """A crop ``(C, h, w)`` (labels: ``(h, w)``) read from a region of ``side`` pixels (fewer where the tile is
    smaller) resized by ``img_size / side``, so that a whole region becomes ``img_size`` square and a cut one
    keeps its scale (the padding makes up the rest).

    Images are resampled bilinearly, with antialiasing when shrinking so that fine texture does not alias into
    patterns the tile does not have; labels take their nearest pixel, since classes cannot be averaged, with
    pixel centres aligned as the image's (``nearest-exact``: torch's plain ``nearest`` is shifted by half a
    pixel when it enlarges)."""
    if side == img_size:
        return x
    shape = tuple(max(1, round(n * img_size / side)) for n in x.shape[-2:])
    if labels:
        return F.interpolate(x[None, None].float(), shape, mode="nearest-exact")[0, 0].to(x.dtype)
    return F.interpolate(x[None], shape, mode="bilinear", align_corners=False, antialias=side > img_size)[0]


class _WithoutBandPermutation(v2.RandomPhotometricDistort):
    """torchvision's SSD distortion without its last step, a random permutation of the bands: mmsegmentation's
    has none, and in aerial images the colours are what tells vegetation, water and roofs apart."""

    def make_params(self, flat_inputs: list) -> dict:
        return super().make_params(flat_inputs) | {"channel_permutation": None}


class PhotometricDistortion:
    """The photometric distortion of mmsegmentation's recipes (``PhotoMetricDistortion``, after SSD), through
    torchvision's ``RandomPhotometricDistort`` with its defaults: brightness, contrast, saturation and hue changes,
    each with probability 1/2 and contrast before or after the colour ones; contrast and saturation factors in
    0.5..1.5, hue shifted by up to ±0.05 of the colour circle (mmsegmentation's ±18°). Brightness is
    multiplicative there (a factor in 0.875..1.125) where mmsegmentation adds up to ±32: the same change for
    bright pixels, less for dark ones. SSD's random band order is left out (:class:`_WithoutBandPermutation`).

    It works on 3-band (RGB) 8-bit images in the 0..255 scale, before normalisation. Its draws come from torch's
    generator seeded with ``seed`` in a fork of its state (restored after), so that a crop stays a function of
    its item's seed whichever worker loads it, and a resumed run sees the crops it would have seen.
    """

    def __init__(self, bands: int):
        if bands != 3:
            raise ConfigError("photometric", f"works on 3-band (RGB) 8-bit images only; these have {bands} band(s). "
                                             "Leave it off for multispectral data.")
        self.distort = _EightBitRGB(_WithoutBandPermutation(), "photometric distortion", pil=False)

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.distort(image)
