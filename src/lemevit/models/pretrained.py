"""Pretrained weights of lemevit models: their timm tags, where their files are found, and the checks of both.

A tag's weights are one safetensors file, ``<model>.<tag>.safetensors``, that ships inside the package
(``lemevit/weights/``) or, when it is too large to ship, is put by the user in the weights directory:
``$LEMEVIT_WEIGHTS_DIR``, by default ``~/.cache/lemevit/weights``. Nothing is downloaded. The model files register
each tag as a timm pretrained config (:func:`tagged_cfgs`), so that
``timm.create_model("lemevit_tiny.aid150", pretrained=True)`` loads it, and ``lemevit train --pretrained``
starts any task from it (:func:`pretrained_state_dict`).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import torch

from lemevit.errors import ConfigError, DataError

__all__ = ["PRETRAINED", "PretrainedWeights", "check_pretrained_request", "check_timm_pretrained", "find_weights",
           "pretrained_state_dict", "tagged_cfgs", "verified_weights", "weights_dir"]

PACKAGE_WEIGHTS = Path(str(files("lemevit") / "weights"))
WEIGHTS_DIR_VARIABLE = "LEMEVIT_WEIGHTS_DIR"

_AID_CLASSES = (
    "Airport", "BareLand", "BaseballField", "Beach", "Bridge", "Center", "Church", "Commercial", "DenseResidential",
    "Desert", "Farmland", "Forest", "Industrial", "Meadow", "MediumResidential", "Mountain", "Park", "Parking",
    "Playground", "Pond", "Port", "RailwayStation", "Resort", "River", "School", "SparseResidential", "Square",
    "Stadium", "StorageTanks", "Viaduct")


@dataclass(frozen=True)
class PretrainedWeights:
    """One set of pretrained weights: ``name`` is ``<model>.<tag>``, ``sha256`` that of its file, ``cfg`` what its
    timm pretrained config changes from the model's (classes, input size, interpolation, ...)."""

    name: str
    sha256: str
    description: str
    terms: str
    cfg: dict = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def filename(self) -> str:
        return f"{self.name}.safetensors"


PRETRAINED: dict[str, PretrainedWeights] = {w.name: w for w in (
    PretrainedWeights(
        "lemevit_tiny.aid150",
        sha256="7e78d1d6d89db76f8e652ea439643534bfec47528e64efd1b403f52d93be62f4",
        description="AID scene recognition, 30 classes, 150 px copy (repository zlima/testtensor, commit f6a0f746): "
                    "8,670 images, the package's demo subset and a stratified 10 % (seed 0) left out; lemevit train "
                    "at 128 px, 12 epochs (benchmarks/results/pretrain_aid150_lemevit_tiny.json)",
        terms="AID (Xia et al., TGRS 2017): for research; the weights are Apache-2.0 like the code",
        cfg=dict(num_classes=30, label_names=_AID_CLASSES, input_size=(3, 128, 128), pool_size=(4, 4), crop_pct=1.0,
                 interpolation="bilinear"),
    ),
)}


def weights_dir() -> Path:
    """Where the weights files that do not ship with the package are looked for."""
    return Path(os.environ.get(WEIGHTS_DIR_VARIABLE) or Path.home() / ".cache" / "lemevit" / "weights")


def _candidates(weights: PretrainedWeights) -> list[Path]:
    return [PACKAGE_WEIGHTS / weights.filename, weights_dir() / weights.filename]


def _located(weights: PretrainedWeights) -> Path | None:
    return next((path for path in _candidates(weights) if path.is_file()), None)


def find_weights(name: str) -> Path:
    """The file of the pretrained weights ``name``; a :class:`DataError` saying where to put it when it is absent."""
    weights = PRETRAINED[name]
    path = _located(weights)
    if path is not None:
        return path
    raise DataError(f"the weights of {name} are not installed: put {weights.filename} (sha256 {weights.sha256}) in "
                    f"{weights_dir()} (or set ${WEIGHTS_DIR_VARIABLE} to its folder)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_weights(name: str) -> Path:
    """:func:`find_weights`, after checking the file's sha256 against the recorded one."""
    path = find_weights(name)
    expected = PRETRAINED[name].sha256
    if _sha256(path) != expected:
        raise DataError(f"{path} is not the file of the weights {name}: its sha256 differs from {expected}")
    return path


def pretrained_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The verified state dict of the pretrained weights ``name`` (a tagged model name such as
    ``lemevit_tiny.aid150``), as stored (float16 tensors are converted by the models' filters)."""
    check_pretrained_request(name)
    from safetensors.torch import load_file

    return load_file(str(verified_weights(name)))


def check_pretrained_request(model: str) -> None:
    """A :class:`ConfigError` on ``model`` unless it names pretrained weights of ours."""
    if model in PRETRAINED:
        return
    architecture = model.split(".", 1)[0]
    tags = sorted(n for n in PRETRAINED if n.split(".", 1)[0] == architecture)
    if tags:
        raise ConfigError("model", f"{model} has no pretrained weights; the weights of {architecture} are "
                                   f"{', '.join(tags)}")
    available = ", ".join(sorted(PRETRAINED)) or "none"
    raise ConfigError("model", f"{model} has no pretrained weights; lemevit's pretrained models are {available}")


# The file each tag's timm config was registered with (where it was found on import).
_REGISTERED_FILES: dict[str, str] = {}


def tagged_cfgs(architecture: str, base: dict) -> dict[str, dict]:
    """The timm pretrained configs of ``architecture``'s weights, for its model file's ``default_cfgs``: ``base``
    changed by each one's ``cfg``, its file where it is found now (or would be put), its data and terms."""
    cfgs = {}
    for weights in PRETRAINED.values():
        if weights.architecture != architecture:
            continue
        path = _located(weights) or _candidates(weights)[-1]
        _REGISTERED_FILES[weights.name] = str(path)
        cfgs[weights.name] = {**base, **weights.cfg, "file": str(path), "description": weights.description,
                              "license": weights.terms}
    return cfgs


def check_timm_pretrained(variant: str, pretrained: bool, kwargs: dict) -> dict:
    """For a model file's create function: when timm is asked for the pretrained weights of one of our tags, find
    them now (a missing file is one line rather than timm's traceback or its silent random initialisation) and
    check them; returns ``kwargs`` pointing timm at the file found. A file the caller overlays is left alone."""
    if not pretrained:
        return kwargs
    from timm.models import resolve_pretrained_cfg

    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                 pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
    name = f"{variant}.{cfg.tag}" if cfg.tag else variant
    if name not in PRETRAINED:
        return kwargs
    ours = {str(p) for p in _candidates(PRETRAINED[name])} | {_REGISTERED_FILES.get(name)}
    if cfg.file and cfg.file not in ours:
        return kwargs
    overlay = {**(kwargs.get("pretrained_cfg_overlay") or {}), "file": str(verified_weights(name))}
    return {**kwargs, "pretrained_cfg_overlay": overlay}
