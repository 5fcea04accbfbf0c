"""Pretrained weights of lemevit models: their timm tags, where their files are found, and the checks of both.

A tag's weights are one safetensors file, ``<model>.<tag>.safetensors``, that ships inside the package
(``lemevit/weights/``) or, when it is too large to ship, is installed by the user into the weights directory,
``$LEMEVIT_WEIGHTS_DIR``, by default ``~/.cache/lemevit/weights`` (:func:`install_weights`, ``lemevit weights
install``: from a file, or from a URL when the user asks for it; its sha256 checked before it appears there).
Nothing is downloaded otherwise. The model files register each tag as a timm pretrained config
(:func:`with_tagged_cfgs`), so that ``timm.create_model("lemevit_tiny.aid150", pretrained=True)`` loads it, and
``lemevit train --pretrained`` starts any task from it (:func:`pretrained_state_dict`).

New weights are one more :class:`PretrainedWeights` in ``PRETRAINED``: the model files and the command line take
them from there.
"""
from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import torch

from lemevit.errors import ConfigError, DataError
from lemevit.io import atomic_path

__all__ = ["PRETRAINED", "PretrainedWeights", "check_pretrained_request", "check_timm_pretrained", "find_weights",
           "install_weights", "pretrained_state_dict", "tagged_cfgs", "verified_weights", "weights_dir",
           "with_tagged_cfgs"]

PACKAGE_WEIGHTS = Path(str(files("lemevit") / "weights"))
WEIGHTS_DIR_VARIABLE = "LEMEVIT_WEIGHTS_DIR"

_AID_CLASSES = (
    "Airport", "BareLand", "BaseballField", "Beach", "Bridge", "Center", "Church", "Commercial", "DenseResidential",
    "Desert", "Farmland", "Forest", "Industrial", "Meadow", "MediumResidential", "Mountain", "Park", "Parking",
    "Playground", "Pond", "Port", "RailwayStation", "Resort", "River", "School", "SparseResidential", "Square",
    "Stadium", "StorageTanks", "Viaduct")
_UCM_CLASSES = (
    "agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral", "denseresidential", "forest",
    "freeway", "golfcourse", "harbor", "intersection", "mediumresidential", "mobilehomepark", "overpass", "parkinglot",
    "river", "runway", "sparseresidential", "storagetanks", "tenniscourt")
# The zoo's one label space: each data set's classes under its own prefix (two data sets' "beach" are two classes).
_ZOO_CLASSES = tuple(f"AID_{c}" for c in _AID_CLASSES) + tuple(f"UCM_{c}" for c in _UCM_CLASSES)
_ZOO_DATA = ("AID 150 px (repository zlima/testtensor, commit f6a0f746) without the package's demo subset, and UC "
             "Merced Land Use (repository 527760681/Keras-Remote-sensing-image-retrieval, commit ab097bbb): 10,560 "
             "training scenes, each data set's stratified 10 % (seed 0) left out; 51 classes in one label space "
             "(AID_<class>, UCM_<class>)")
_ZOO_CFG = dict(num_classes=len(_ZOO_CLASSES), label_names=_ZOO_CLASSES, input_size=(3, 128, 128), pool_size=(4, 4),
                crop_pct=1.0, interpolation="bilinear")
_ZOO_TERMS = "AID (Xia et al., TGRS 2017) and UC Merced (Yang & Newsam, 2010): for research; the weights are " \
             "Apache-2.0 like the code"


# The flags of every weight lemevit trained (benchmarks/pretrain_aid150.py and pretrain_zoo.py use the same recipe).
_RECIPE = ("--img-size 128 --epochs 12 --batch-size 64 --split 0.95 --seed 0 --lr 1.5e-3 --drop-path-rate 0.1 "
           "--gradient-clip 1.0 --label-smoothing 0.1 --crop-scale 0.8 1.0 --ema-decay 0.998 --checkpoint-steps 16")


def _zoo_weights(model: str, sha256: str, aid: tuple[float, float], ucm: tuple[float, float],
                 trained_on: str) -> PretrainedWeights:
    """The entry of ``<model>.aid_ucm``, trained by benchmarks/pretrain_zoo.py, with its held-out (top-1, top-5) on
    AID's 970 and UC Merced's 210 scenes."""
    return PretrainedWeights(
        f"{model}.aid_ucm",
        sha256=sha256,
        description=f"{_ZOO_DATA}; lemevit train at 128 px, 12 epochs "
                    f"(benchmarks/results/pretrain_zoo_{model}.json)",
        terms=_ZOO_TERMS,
        cfg=_ZOO_CFG,
        heldout={"AID, 970 scenes": {"top1": aid[0], "top5": aid[1]},
                 "UC Merced, 210 scenes": {"top1": ucm[0], "top5": ucm[1]}},
        command=f"lemevit train --data ZOO/train --output RUN --model {model} " + _RECIPE,
        trained_on=trained_on,
    )


@dataclass(frozen=True)
class PretrainedWeights:
    """One set of pretrained weights: ``name`` is ``<model>.<tag>``, ``sha256`` that of its file, ``description``
    its training data, ``cfg`` what its timm pretrained config changes from the model's (classes, input size,
    interpolation, ...), ``heldout`` its top-1 and top-5 on each held-out set (``{"AID, 970 scenes": {"top1": ...,
    "top5": ...}}``), ``command`` the ``lemevit train`` command that trained it, ``trained_on`` the machine and
    time, ``url`` where its file can be downloaded (empty: nowhere known)."""

    name: str
    sha256: str
    description: str
    terms: str
    cfg: dict = field(default_factory=dict)
    heldout: dict = field(default_factory=dict)
    command: str = ""
    trained_on: str = ""
    url: str = ""

    @property
    def architecture(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def filename(self) -> str:
        return f"{self.name}.safetensors"

    @property
    def scores(self) -> tuple[str, ...]:
        """One line per held-out set: ``held-out top-1 76.4 %, top-5 95.9 % (AID, 970 scenes)``."""
        return tuple(f"held-out top-1 {m['top1']:.1%}, top-5 {m['top5']:.1%} ({subset})"
                     for subset, m in self.heldout.items())

    @property
    def notes(self) -> tuple[str, ...]:
        """Its scores, command and machine, as timm's pretrained config and ``lemevit models --pretrained`` show
        them."""
        return (*self.scores, *([f"trained by: {self.command}"] if self.command else []),
                *([f"trained on: {self.trained_on}"] if self.trained_on else []))


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
        heldout={"AID, 970 scenes": {"top1": 0.7639175257731958, "top5": 0.9587628865979382}},
        command="lemevit train --data AID150/train --output RUN --model lemevit_tiny " + _RECIPE,
        trained_on="2-core CPU (x86_64, AMD EPYC), 2 threads, 119 min",
    ),
    _zoo_weights("lvt", "0b74e63ab7e70e404c8d53ca44d7e8b392710c1d5b2868ddbd5e1549788e5cec",
                 aid=(0.6752577319587629, 0.9237113402061856), ucm=(0.5476190476190477, 0.8761904761904762),
                 trained_on="2-core CPU (x86_64, AMD EPYC), 1-2 threads at the lowest priority beside other work, "
                            "303 min over four sessions"),
    _zoo_weights("lemevit_small", "3d794458350db87a1c7506167e70cddb435eddcf5f0f39eee1cbc5beb9fd13c3",
                 aid=(0.7082474226804124, 0.9443298969072165), ucm=(0.5619047619047619, 0.9095238095238095),
                 trained_on="2-core CPU (x86_64, AMD EPYC), 2 threads at the lowest priority, 140 min in one session "
                            "(15 of them beside a CI run)"),
    _zoo_weights("vvt_tiny", "018b0193fcbbe132e63b6ebd02aecdd5e46c701e058c6117164d927d5c9d4f43",
                 aid=(0.7752577319587629, 0.9494845360824742), ucm=(0.6571428571428571, 0.9571428571428572),
                 trained_on="2-core CPU (x86_64, AMD EPYC), 2 threads at the lowest priority, 138 min in one session"),
    _zoo_weights("lemevit_tiny", "405b598d122467b6e0af3484a43f14f5359e7a489b80b3f2a8abe587a9edf42f",
                 aid=(0.7597938144329897, 0.9649484536082474), ucm=(0.7047619047619048, 0.9523809523809523),
                 trained_on="2-core CPU (x86_64, AMD EPYC), 2 threads at the lowest priority, 141 min over two "
                            "sessions, part of them beside transfer runs and a CI run"),
)}


def weights_dir() -> Path:
    """Where the weights files that do not ship with the package are looked for."""
    return Path(os.environ.get(WEIGHTS_DIR_VARIABLE) or Path.home() / ".cache" / "lemevit" / "weights")


def _candidates(weights: PretrainedWeights) -> list[Path]:
    return [PACKAGE_WEIGHTS / weights.filename, weights_dir() / weights.filename]


def _located(weights: PretrainedWeights) -> Path | None:
    return next((path for path in _candidates(weights) if path.is_file()), None)


def how_to_install(weights: PretrainedWeights) -> str:
    """How a user gets a weights file that is not installed, in one line."""
    download = f", or `lemevit weights install {weights.name}` to download it from {weights.url}" if weights.url \
        else ""
    return (f"get {weights.filename} (sha256 {weights.sha256}; lemevit's source repository holds it in weights/) "
            f"and run `lemevit weights install FILE`{download}; "
            f"it goes into {weights_dir()} (${WEIGHTS_DIR_VARIABLE})")


def find_weights(name: str) -> Path:
    """The file of the pretrained weights ``name``; a :class:`DataError` saying how to get it when it is absent."""
    weights = PRETRAINED[name]
    path = _located(weights)
    if path is not None:
        return path
    raise DataError(f"the weights of {name} are not installed: {how_to_install(weights)}")


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


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def _weights_named(source: str, name: str | None) -> PretrainedWeights:
    """The registered weights a file is to be: ``name``, or the one ``source`` names (``lvt.aid_ucm``) or whose
    file name it ends with (``.../lvt.aid_ucm.safetensors``)."""
    if name is not None:
        if name not in PRETRAINED:
            raise ConfigError("name", f"{name} is none of lemevit's pretrained weights: "
                                      f"{', '.join(sorted(PRETRAINED))}")
        return PRETRAINED[name]
    if source in PRETRAINED:
        return PRETRAINED[source]
    filename = source.rsplit("/", 1)[-1].split("?", 1)[0] if _is_url(source) else Path(source).name
    for weights in PRETRAINED.values():
        if filename == weights.filename:
            return weights
    raise ConfigError("name", f"{source} is not named as any of lemevit's pretrained weights "
                              f"(<model>.<tag>.safetensors); say which it is: one of {', '.join(sorted(PRETRAINED))}")


def _copy_hashing(source, target: Path) -> str:
    """Copy the binary stream ``source`` into ``target``; the sha256 of what was copied."""
    digest = hashlib.sha256()
    with target.open("wb") as out:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def install_weights(source: str | Path, name: str | None = None, timeout: float = 60.0) -> tuple[str, Path]:
    """Install pretrained weights into :func:`weights_dir`: ``source`` is their file, an ``http(s)://`` URL of it,
    or the name of registered weights that have a download address. Which weights the file is comes from ``name``,
    or else from the source's file name; its sha256 must be theirs, or nothing changes in the weights directory
    (the file appears there in one rename). Returns the weights' name and their installed file."""
    source = str(source)
    weights = _weights_named(source, name)
    if source == weights.name:
        if not weights.url:
            raise DataError(f"{weights.name} has no download address: {how_to_install(weights)}")
        source = weights.url
    target = weights_dir() / weights.filename
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            if _is_url(source):
                with urllib.request.urlopen(source, timeout=timeout) as response:
                    sha256 = _copy_hashing(response, tmp)
            else:
                if not Path(source).is_file():
                    raise DataError(f"{source}: no such weights file")
                with Path(source).open("rb") as f:
                    sha256 = _copy_hashing(f, tmp)
            if sha256 != weights.sha256:
                raise DataError(f"{source} is not the file of the weights {weights.name}: its sha256 {sha256} differs "
                                f"from {weights.sha256}")
    except (urllib.error.URLError, TimeoutError) as e:
        raise DataError(f"cannot download {source}: {getattr(e, 'reason', e)}") from e
    except OSError as e:
        raise DataError(f"cannot install {source} into {target.parent}: {e.strerror or e}") from e
    return weights.name, target


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
                              "license": weights.terms, "notes": weights.notes}
    return cfgs


def with_tagged_cfgs(bases: dict[str, dict]) -> dict[str, dict]:
    """A model file's configs for timm's ``generate_default_cfgs``: each architecture's base config (``bases``,
    keyed by architecture) after the configs of its weights. The base stays timm's default (the architecture as
    published), where timm would take the first tag with weights: ``.*`` marks it so."""
    cfgs = {}
    for architecture, base in bases.items():
        cfgs.update(tagged_cfgs(architecture, base))
        cfgs[f"{architecture}.*"] = base
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
