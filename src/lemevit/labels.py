"""Labels shared by the data, the models, the losses and the metrics: the class index of unlabelled pixels, the
panoptic void id, and label schemes (class names, colours and how masks store them) with the presets of the
data sets the papers use (ISPRS Potsdam and Vaihingen, LoveDA, ADE20K)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from lemevit.errors import DataError

__all__ = ["IGNORE_INDEX", "LABELS_FILE", "PRESETS", "VOID", "LabelScheme", "default_palette"]

#: Class index of pixels without a label, in decoded masks and for the loss and the metrics.
IGNORE_INDEX = 255
#: Optional file in a dataset root that describes its labels (keys of :class:`LabelScheme`).
LABELS_FILE = "classes.yaml"
#: Segment id of unlabelled pixels in panoptic maps (COCO panoptic's black) and of pixels no predicted
#: segment covers.
VOID = 0


# Distinct colours for schemes that bring no palette (matplotlib's tab10, then tab20's light tones).
_DEFAULT_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
    (219, 219, 141), (158, 218, 229),
)


def default_palette(count: int) -> tuple[tuple[int, int, int], ...]:
    """``count`` distinct colours (repeating after 20), for classes that bring none."""
    return tuple(_DEFAULT_PALETTE[i % len(_DEFAULT_PALETTE)] for i in range(count))


def _rgb(colour, what: str) -> tuple[int, int, int]:
    values = tuple(colour) if isinstance(colour, (list, tuple)) else ()
    if len(values) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255
                                   for v in values):
        raise DataError(f"{what} must be an RGB triple of integers 0..255, got {colour!r}")
    return values


@dataclass(frozen=True)
class LabelScheme:
    """Class names, their colours, and how masks store them.

    Args:
        class_names: one name per class; class ``i`` is stored as the value ``first_class_value + i`` in
            single-band masks and as ``palette[i]`` in colour-coded ones.
        palette: an RGB colour per class, for colour-coded masks and for coloured predictions (default:
            distinct colours).
        ignore_value: the single-band mask value of unlabelled pixels (None: every pixel is labelled).
        first_class_value: the stored value of class 0; 1 for datasets that keep 0 for "no label"
            (mmsegmentation's ``reduce_zero_label``).
        ignore_colors: colours of unlabelled pixels in colour-coded masks (ISPRS's eroded boundaries are
            black).
    """

    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...] = ()
    ignore_value: int | None = IGNORE_INDEX
    first_class_value: int = 0
    ignore_colors: tuple[tuple[int, int, int], ...] = field(default=())

    def __post_init__(self):
        names = tuple(self.class_names) if isinstance(self.class_names, (list, tuple)) else ()
        if not names or not all(isinstance(n, str) and n for n in names):
            raise DataError(f"class_names must be a non-empty list of names, got {self.class_names!r}")
        if len(set(names)) != len(names):
            raise DataError(f"class_names has duplicates: {list(names)}")
        if len(names) >= IGNORE_INDEX:
            raise DataError(f"at most {IGNORE_INDEX - 1} classes are supported, got {len(names)}")
        palette = tuple(_rgb(c, f"palette entry {i}") for i, c in enumerate(self.palette))
        if not palette:
            palette = default_palette(len(names))
        if len(palette) != len(names):
            raise DataError(f"palette has {len(palette)} colours for {len(names)} classes")
        ignore_colors = tuple(_rgb(c, "ignore colour") for c in self.ignore_colors)
        shared = sorted(set(palette) & set(ignore_colors))
        if shared:
            raise DataError(f"colours {shared} are both a class colour and an ignore colour")
        for name in ("first_class_value", "ignore_value"):
            value = getattr(self, name)
            if value is None and name == "ignore_value":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DataError(f"{name} must be a non-negative integer, got {value!r}")
        if self.ignore_value is not None and 0 <= self.ignore_value - self.first_class_value < len(names):
            raise DataError(f"ignore_value {self.ignore_value} is also the value of class "
                             f"{names[self.ignore_value - self.first_class_value]!r} (classes are stored as "
                             f"{self.first_class_value}..{self.first_class_value + len(names) - 1})")
        object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "palette", palette)
        object.__setattr__(self, "ignore_colors", ignore_colors)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict:
        """Plain lists and numbers (for YAML, JSON and checkpoints)."""
        doc = asdict(self)
        return {k: [list(c) for c in v] if k in ("palette", "ignore_colors") else
                list(v) if k == "class_names" else v for k, v in doc.items()}

    @classmethod
    def from_dict(cls, doc: dict, source: str = "label scheme") -> LabelScheme:
        known = {"class_names", "palette", "ignore_value", "first_class_value", "ignore_colors"}
        if not isinstance(doc, dict):
            raise DataError(f"{source}: expected a mapping with keys {sorted(known)}, got {type(doc).__name__}")
        unknown = sorted(set(doc) - known)
        if unknown:
            raise DataError(f"{source}: unknown keys {unknown}; known keys: {sorted(known)}")
        if "class_names" not in doc:
            raise DataError(f"{source}: class_names is required")
        try:
            return cls(**doc)
        except (TypeError, ValueError) as e:
            raise DataError(f"{source}: {e}") from e

    def decode(self, mask: np.ndarray, path: str | Path) -> np.ndarray:
        """Class indices ``(H, W)`` uint8 (``IGNORE_INDEX`` where unlabelled) from a mask as read,
        ``(H, W, 1)`` class values or ``(H, W, 3)`` colours. Raises ValueError naming ``path`` and the
        offending values for anything that is neither a class nor unlabelled."""
        if mask.ndim != 3 or mask.shape[2] not in (1, 3):
            raise DataError(f"mask {path}: expected one band of class values or three of RGB colours, "
                             f"got {mask.shape[2] if mask.ndim == 3 else mask.ndim} band(s)")
        if mask.shape[2] == 1:
            return self._decode_values(mask[..., 0], path)
        return self._decode_colours(mask, path)

    def _decode_values(self, values: np.ndarray, path) -> np.ndarray:
        if not np.issubdtype(values.dtype, np.integer):
            raise DataError(f"mask {path}: data type {values.dtype}; class masks hold integers")
        index = values.astype(np.int64) - self.first_class_value
        labelled = (index >= 0) & (index < self.num_classes)
        ignored = values == self.ignore_value if self.ignore_value is not None else np.zeros_like(labelled)
        bad = ~(labelled | ignored)
        if bad.any():
            found = np.unique(values[bad])
            stored = f"{self.first_class_value}..{self.first_class_value + self.num_classes - 1}"
            raise DataError(f"mask {path}: value(s) {found[:10].tolist()} are neither a class ({stored}) nor "
                             f"the ignore value {self.ignore_value}; check the label scheme (`preset`, "
                             f"`ignore_value`, `first_class_value` or {LABELS_FILE})")
        out = np.where(ignored, IGNORE_INDEX, index)
        return out.astype(np.uint8)

    def _decode_colours(self, rgb: np.ndarray, path) -> np.ndarray:
        if rgb.dtype != np.uint8:
            raise DataError(f"mask {path}: a colour-coded mask must be 8-bit RGB, got {rgb.dtype}")
        codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        found, inverse = np.unique(codes, return_inverse=True)
        lookup = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(self.palette)}
        lookup.update({(r << 16) | (g << 8) | b: IGNORE_INDEX for r, g, b in self.ignore_colors})
        unknown = [int(c) for c in found if int(c) not in lookup]
        if unknown:
            colours = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in unknown[:10]]
            raise DataError(f"mask {path}: colour(s) {colours} are neither a class colour {list(self.palette)} "
                             f"nor an ignore colour {list(self.ignore_colors)}")
        table = np.array([lookup[int(c)] for c in found], dtype=np.uint8)
        return table[inverse.reshape(codes.shape)]


_ISPRS_CLASSES = ("impervious_surface", "building", "low_vegetation", "tree", "car", "clutter")
_ISPRS_PALETTE = ((255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0))
_CLUTTER, _BOUNDARY = (255, 0, 0), (0, 0, 0)

# The 150 classes of ADE20K's scene parsing benchmark (ADEChallengeData2016), in the benchmark's order.
_ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

#: Label schemes of the published data sets. ``potsdam``, ``vaihingen`` and ``loveda`` are the masks as
#: mmsegmentation's converters write them (class values 1..K, 0 unlabelled: the ISPRS eroded boundary) and, for
#: ISPRS, as distributed (RGB colours, black for the boundaries): all six ISPRS classes are scored.
#:
#: ``potsdam5`` and ``vaihingen5`` are the protocol of the papers (LeMeViT, RSP): five classes scored, clutter
#: ignored, with the masks of LeMeViT's configs (``num_classes=5``, ``ignore_index=5``, ``reduce_zero_label=False``:
#: values 0..4 the classes, 5 clutter) or the ISPRS colours (clutter red, the boundaries black). The masks of
#: mmsegmentation's converter are not those: they store 0 for the boundaries and 1..6 for the six classes (the
#: ``potsdam`` preset), and reading them with the five-class values of LeMeViT's config shifts every class by
#: one (buildings read as low vegetation, the boundaries as impervious surface, cars as ignored): the mismatch
#: behind the "validation accuracy below 5 %" report. Here, clutter's 6 is then refused as a value of no class.
#:
#: ``ade20k`` is ADEChallengeData2016's masks: values 1..150 the classes, 0 "other" (mmsegmentation's
#: ``reduce_zero_label``).
PRESETS: dict[str, LabelScheme] = {
    "potsdam": LabelScheme(_ISPRS_CLASSES, _ISPRS_PALETTE, ignore_value=0, first_class_value=1,
                           ignore_colors=(_BOUNDARY,)),
    "vaihingen": LabelScheme(_ISPRS_CLASSES, _ISPRS_PALETTE, ignore_value=0, first_class_value=1,
                             ignore_colors=(_BOUNDARY,)),
    "potsdam5": LabelScheme(_ISPRS_CLASSES[:5], _ISPRS_PALETTE[:5], ignore_value=5, first_class_value=0,
                            ignore_colors=(_CLUTTER, _BOUNDARY)),
    "vaihingen5": LabelScheme(_ISPRS_CLASSES[:5], _ISPRS_PALETTE[:5], ignore_value=5, first_class_value=0,
                              ignore_colors=(_CLUTTER, _BOUNDARY)),
    "loveda": LabelScheme(
        ("background", "building", "road", "water", "barren", "forest", "agricultural"),
        ((255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 0, 255), (159, 129, 183), (0, 255, 0), (255, 195, 128)),
        ignore_value=0, first_class_value=1),
    "ade20k": LabelScheme(_ADE20K_CLASSES, ignore_value=0, first_class_value=1),
}
