"""Pictures lemevit writes: images of any band count shown as RGB, class maps in their palette, change previews,
oriented boxes drawn on scenes, confusion matrices, and the HTML map page of a prediction (:mod:`.webmap`). Every
file is written atomically."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lemevit.errors import ConfigError
from lemevit.io import atomic_path

__all__ = ["CHANGE_RGB", "class_colours", "display_rgb", "display_uint8", "draw_oriented_boxes", "preview_step",
           "save_confusion_png", "save_pair_preview", "save_palette_png", "save_panoptic_preview", "to_uint8"]

#: The colour change is drawn in, over the second date.
CHANGE_RGB = (1.0, 0.1, 0.1)


def display_rgb(image: np.ndarray, bands: Sequence[int] | None = None) -> np.ndarray:
    """``(H, W, C)`` data of any type → ``(H, W, 3)`` float64 in 0..1 for showing.

    ``bands`` picks the three bands shown (default the first three, or the single band in grey). 8-bit data is
    shown as it is; any other data is stretched per band between its 2nd and 98th percentile.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    count = image.shape[-1]
    chosen = list(bands) if bands is not None else ([0, 1, 2] if count >= 3 else [0])
    if len(chosen) not in (1, 3) or not all(0 <= b < count for b in chosen):
        raise ConfigError("bands", f"must be 1 or 3 band indices below {count}, got {chosen}")
    shown = image[..., chosen].astype(np.float64)
    if len(chosen) == 1:
        shown = np.repeat(shown, 3, axis=-1)
    if image.dtype == np.uint8:
        return shown / 255.0
    finite = np.isfinite(shown)
    if not finite.all():  # no data (NaN or infinite values) is shown black, and stretches nothing
        if not finite.any():
            return np.zeros_like(shown)
        shown = np.where(finite, shown, np.nan)
        low, high = np.nanpercentile(shown, [2, 98], axis=(0, 1))
        return np.nan_to_num(np.clip((shown - low) / np.where(high > low, high - low, 1.0), 0.0, 1.0))
    low, high = np.percentile(shown, [2, 98], axis=(0, 1))
    return np.clip((shown - low) / np.where(high > low, high - low, 1.0), 0.0, 1.0)


def display_uint8(image: np.ndarray) -> np.ndarray:
    """:func:`display_rgb` as ``(H, W, 3)`` uint8, without its float copy where the data is already 8-bit RGB (a
    scene's picture would otherwise take 24 bytes a pixel)."""
    image = np.asarray(image)
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] >= 3:
        return np.ascontiguousarray(image[..., :3])
    return to_uint8(display_rgb(image))


def preview_step(height: int, width: int, side: int) -> int:
    """The step of a preview of an image of ``height`` x ``width``: keeping every ``step``-th row and column leaves
    a longest side of at most ``side``."""
    return max(1, math.ceil(max(height, width) / side))


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """:func:`display_rgb`'s 0..1 values → uint8."""
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def save_palette_png(classes: np.ndarray, palette: Sequence[Sequence[int]], path: str | Path) -> None:
    """A ``(H, W)`` uint8 class map as a palette PNG, class ``i`` in ``palette[i]``."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(classes, dtype=np.uint8))
    image.putpalette([v for colour in palette for v in colour])  # an 8-bit grayscale image becomes "P"
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def save_pair_preview(a: np.ndarray, b: np.ndarray, change: np.ndarray, path: str | Path) -> None:
    """``A | B | B with the change in red`` side by side as a PNG; ``change`` is a boolean ``(H, W)`` map."""
    from PIL import Image

    shown_a, shown_b = display_rgb(a), display_rgb(b)
    overlay = shown_b.copy()
    overlay[change] = 0.4 * overlay[change] + 0.6 * np.array(CHANGE_RGB)
    gap = np.ones((a.shape[0], max(2, a.shape[1] // 100), 3))
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(np.concatenate([shown_a, gap, shown_b, gap, overlay], axis=1))).save(tmp,
                                                                                                      format="PNG")


def save_panoptic_preview(image: np.ndarray, ids: np.ndarray, colours: dict[int, Sequence[int]], path: str | Path,
                          side: int = 1024) -> None:
    """The image ``(H, W, C)`` with each segment of ``ids`` (``(H, W)``, 0: none) in its colour ``colours[id]``
    over it and outlined in white (objects of one class touching each other stay apart), at most ``side`` pixels
    on its longer side, as a PNG."""
    from PIL import Image

    step = preview_step(*ids.shape, side)
    shown, ids = display_rgb(image[::step, ::step]), ids[::step, ::step]
    table = np.zeros((int(ids.max(initial=0)) + 1, 3))
    for segment, colour in colours.items():
        if segment < len(table):
            table[segment] = np.asarray(colour[:3]) / 255
    segmented = ids > 0
    shown[segmented] = 0.45 * shown[segmented] + 0.55 * table[ids[segmented]]
    edges = np.zeros_like(segmented)
    edges[1:] |= ids[1:] != ids[:-1]
    edges[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    shown[edges] = 1.0
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(shown)).save(tmp, format="PNG")


def class_colours(count: int) -> list[tuple[int, int, int]]:
    """A distinct colour for each of ``count`` classes (matplotlib's tab20, repeated past 20)."""
    from matplotlib import colormaps

    table = colormaps["tab20"](np.linspace(0, 1, 20))
    return [tuple(int(255 * c) for c in table[i % 20][:3]) for i in range(count)]


def draw_oriented_boxes(image: np.ndarray, quads: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                        class_names: Sequence[str], path: str | Path) -> None:
    """The scene with each box (``(n, 4, 2)`` corners in pixels) outlined in its class's colour and labelled
    with the class and score, as a PNG of the scene's size."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(display_uint8(image))
    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 600))
    colours = class_colours(len(class_names))
    for quad, label, score in zip(quads, labels, scores, strict=True):
        colour = colours[int(label)]
        draw.polygon([tuple(p) for p in quad.tolist()], outline=colour, width=width)
        draw.text(tuple(quad[0].tolist()), f"{class_names[label]} {score:.2f}", fill=colour)
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


def save_confusion_png(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path,
                       title: str) -> None:
    """The row-normalised confusion matrix (rows: true class, columns: predicted) as a PNG."""
    from matplotlib.figure import Figure

    matrix = np.array(confusion, dtype=float)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = max(5, 0.35 * len(class_names) + 2)
    fig = Figure(figsize=(size, size))
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} (rows normalised)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
