"""Run configurations: one dataclass per task whose fields are the run's settings, written once with their
defaults and help. The same fields are the YAML keys of ``config.yaml`` (and of ``--config FILE``) and the
command line's options (``img_size`` is ``--img-size``); :func:`add_options` makes the latter from the former.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Union

import yaml

from lemevit.config.optimization import SCHEDULES, Optimization
from lemevit.errors import ConfigError, DataError
from lemevit.io import atomic_path
from lemevit.models.pretrained import PRETRAINED, check_pretrained_request

__all__ = ["EvalOptions", "InferenceOptions", "Options", "PredictOptions", "RunConfig", "add_options", "flag", "option",
           "plain", "read_yaml_mapping"]


def option(default: Any = dataclasses.MISSING, help: str = "", *, resumable: bool = False, cli: bool = True,
           positional: bool = False, nargs: str | int | None = None, metavar: str | tuple | None = None,
           choices: Iterable | None = None) -> Any:
    """A config field with what the command line needs to offer it.

    Args:
        default: the default (a list or dict default is copied for every instance).
        help: what it does, for ``--help``.
        resumable: ``--resume`` may change it (``epochs``, devices); any other field given to a resumed run must
            equal the saved value.
        cli: offered as an option (False: a YAML key only).
        positional: a positional argument rather than a ``--flag``.
        nargs, metavar, choices: as argparse's.
    """
    metadata = {"help": help, "resumable": resumable, "cli": cli, "positional": positional, "nargs": nargs,
                "metavar": metavar, "choices": tuple(choices) if choices is not None else None}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping of keys to values in the YAML file ``path`` (a run's ``config.yaml``, a ``--config`` file)."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"cannot read config {path}: {e}") from e
    if not isinstance(values, dict):
        raise DataError(f"config {path}: expected a mapping of keys to values, got {type(values).__name__}")
    return values


#: A number as YAML 1.2 writes it, which PyYAML (YAML 1.1) reads as a string when it has an exponent and no dot.
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _yaml_floats(value: Any, kind: Any) -> Any:
    """``value`` read from YAML for a field of type ``kind``, with the numbers PyYAML left as strings (``1e-3``)
    made floats where the field takes floats: alone, in lists and as mapping values."""
    kind = _unwrap(kind)
    if typing.get_origin(kind) is list and isinstance(value, list):
        (item,) = typing.get_args(kind)
        return [_yaml_floats(v, item) for v in value]
    if typing.get_origin(kind) is dict and isinstance(value, dict):
        item = typing.get_args(kind)[1]
        return {k: _yaml_floats(v, item) for k, v in value.items()}
    takes_float = kind is float or (isinstance(kind, tuple) and float in kind)
    if takes_float and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def flag(name: str) -> str:
    """The command-line spelling of a field: ``img_size`` → ``--img-size``."""
    return "--" + name.replace("_", "-")


def plain(text: str | None, flags: Mapping[str, str] | None = None) -> str | None:
    """``text`` of a docstring or an option's help as ``--help`` shows it: without reStructuredText's quotes (``x``
    is x), a quoted name of ``flags`` as its flag (`img_size` is --img-size), any other quoted text in plain quotes
    (`lemevit models` is 'lemevit models')."""
    if text is None:
        return None
    text = re.sub(r"``([^`]+)``", r"\1", text)
    return re.sub(r"`([^`]+)`", lambda m: (flags or {}).get(m.group(1), f"'{m.group(1)}'"), text)


def _unwrap(kind: Any) -> Any:
    """The type of a field without ``None``; ``(int, str)`` for a field that takes either."""
    if typing.get_origin(kind) in (Union, UnionType):
        args = tuple(a for a in typing.get_args(kind) if a is not NoneType)
        return args[0] if len(args) == 1 else args
    return kind


def _int_or_auto(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from None


def _key_value(text: str, kind: type = str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a {kind.__name__} value, got {text!r}") from None


class _KeyValues(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, dict(values))


@dataclass(kw_only=True)
class Options:
    """Base of the option sets: YAML round trip, validation helpers, and the check of the fields given together."""

    @classmethod
    def fields(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> Options:
        """The options in the YAML file ``path`` (keys are field names), with ``overrides`` on top."""
        return cls(**{**cls.yaml_values(path), **overrides})

    @classmethod
    def yaml_values(cls, path: str | Path) -> dict[str, Any]:
        """The fields the YAML file ``path`` sets; an unknown key is a :class:`DataError` naming the file."""
        values = read_yaml_mapping(path)
        unknown = sorted(set(values) - set(cls.fields()))
        if unknown:
            raise DataError(f"config {path}: unknown keys {unknown}; the keys of this task are {sorted(cls.fields())}")
        hints = typing.get_type_hints(cls)
        return {name: _yaml_floats(value, hints[name]) for name, value in values.items()}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def check_positive(self, *names: str, allow_none: bool = False) -> None:
        for name in names:
            value = getattr(self, name)
            if value is None and allow_none:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"must be a positive integer, got {value!r}")

    def check_fraction(self, name: str, low_open: bool = True, high_open: bool = False) -> None:
        value = getattr(self, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            ok = (0 < value if low_open else 0 <= value) and (value < 1 if high_open else value <= 1)
        if not ok:
            interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
            raise ConfigError(name, f"must be a number in {interval}, got {value!r}")

    def check_non_negative(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ConfigError(name, f"must be a non-negative number, got {value!r}")


@dataclass(kw_only=True)
class RunConfig(Options):
    """What a training run of any task depends on: data, output, model, schedule and devices. Each task's config
    adds its own fields and gives its own defaults; the run saves it as ``RUN_DIR/config.yaml``, from which
    ``--resume`` reads it back."""

    task: str = option("classification", "the task", cli=False)
    data: str = option(None, "the data folder")
    output: str = option(None, "the run directory (created; --resume continues the run in it)")
    model: str = option("lemevit_tiny", "any model name of lemevit (`lemevit models`) or timm")
    init_checkpoint: str | None = option(None, "start from these weights: a weights file of ours or of the published "
                                               "layout, or a lemevit run's checkpoint or model file of any task (its "
                                               "backbone)")
    # A task may default to None: pretrained exactly when `model` names weights of ours and no `init_checkpoint`.
    pretrained: bool | None = option(False, "start from the pretrained weights --model names, a tagged name such as "
                                            "lemevit_tiny.aid150 (`lemevit models --pretrained` lists them; nothing "
                                            "is downloaded)")
    img_size: int = option(224, "side of the training images or crops, in pixels")
    epochs: int = option(30, "training epochs", resumable=True)
    iterations: int | None = option(None, "training budget in optimizer steps instead of epochs (the schedule's "
                                          "epoch quantities then count steps)", resumable=True)
    val_every: int = option(1, "validate (and choose best.ckpt) every this many epochs; a multiple of it as "
                               "--epochs validates the last one", resumable=True)
    batch_size: int = option(32, "items per batch and device")
    split: float = option(0.8, "fraction of the data in training, the rest validates (1.0: validate on the "
                               "training data, for overfitting checks and tiny sets)")
    seed: int = option(0, "seed of the split, the initialisation, the data order and the augmentations")
    lr: float = option(1e-3, "peak learning rate of AdamW")
    weight_decay: float = option(0.05, "AdamW weight decay (not on norms, biases, tokens and embeddings)")
    lr_batch: int | None = option(None, "the global batch `lr` is given for: the rate is scaled by the run's "
                                        "global batch over this (the linear rule); unset, `lr` is used as given")
    schedule: str = option("cosine", "the learning rate after the warm-up: cosine (down to `min_lr_factor`), poly "
                                     "(power `poly_power`; 1.0 is linear), multistep (times `decay_rate` at each of "
                                     "`milestones`) or constant", choices=SCHEDULES)
    warmup_epochs: float = option(1.0, "epochs of linear warm-up")
    warmup_iterations: int | None = option(None, "optimizer steps of linear warm-up, instead of `warmup_epochs`")
    warmup_lr_factor: float = option(0.0, "the warm-up starts at this fraction of the peak learning rate")
    min_lr_factor: float = option(0.01, "the decay ends at this fraction of the peak learning rate")
    cooldown_epochs: float = option(0.0, "the last this many epochs of the budget stay at the minimum rate")
    poly_power: float = option(1.0, "power of the poly schedule")
    milestones: list[float] = option([], "multistep: the epochs (steps with `iterations`) at which the rate drops")
    decay_rate: float = option(0.1, "multistep: the factor of each drop")
    lr_multipliers: dict[str, float] = option({}, "learning-rate multipliers of modules of the network (a head at "
                                                  "x10: decoder=10)", metavar="MODULE=FACTOR")
    no_weight_decay: list[str] = option([], "no weight decay either on parameters whose names contain one of "
                                            "these (norms, biases and tokens never have it)")
    drop_path_rate: float = option(0.1, "stochastic depth of the backbone")
    gradient_clip: float | None = option(None, "clip the gradient norm to this value")
    checkpoint_steps: int | None = option(None, "also write last.ckpt every this many training steps, for epochs "
                                                "long enough that losing one hurts: a killed run resumes there, "
                                                "with the batches of the epoch it had not trained on",
                                          resumable=True)
    ema_decay: float | None = option(None, "keep an exponential moving average of the weights with this decay "
                                           "(e.g. 0.999); validation and the checkpoints use it")
    precision: str = option("fp32", "fp32, or autocast to bf16 or fp16", resumable=True,
                            choices=("fp32", "bf16", "fp16"))
    accelerator: str = option("auto", "auto (a GPU when there is one), cpu or gpu", resumable=True,
                              choices=("auto", "cpu", "gpu", "cuda"))
    devices: int | str = option("auto", "devices per node (several: DDP)", resumable=True)
    num_nodes: int = option(1, "nodes (DDP over several machines, as torchrun or SLURM launch them)",
                            resumable=True)
    num_workers: int = option(2, "data loading worker processes per device", resumable=True)
    sync_bn: bool = option(False, "synchronise the batch norms' statistics across processes under DDP")

    def __post_init__(self):
        if self.pretrained is None:
            self.pretrained = self.model in PRETRAINED and not self.init_checkpoint
        for name in ("data", "output"):
            if not getattr(self, name):
                raise ConfigError(name, "is required")
        self.check_positive("img_size", "epochs", "val_every", "batch_size", "num_nodes")
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ConfigError("num_workers", f"must be a non-negative integer, got {self.num_workers!r}")
        devices = self.devices
        if devices != "auto" and (isinstance(devices, bool) or not isinstance(devices, int) or devices < 1):
            raise ConfigError("devices", f"must be a positive number of devices or 'auto', got {devices!r}")
        self.check_fraction("split")
        split_files = getattr(self, "split_files", None)
        if split_files and not {"train", "val"} <= set(split_files):
            raise ConfigError("split_files", f"needs the train and val lists, got {sorted(split_files)}")
        self.check_non_negative("lr", "weight_decay", "warmup_epochs", "drop_path_rate", "gradient_clip",
                                "cooldown_epochs", "poly_power", "decay_rate", "warmup_iterations")
        self.check_positive("iterations", "lr_batch", allow_none=True)
        self.check_fraction("warmup_lr_factor", low_open=False)
        if sorted(self.milestones) != list(self.milestones) or any(m <= 0 for m in self.milestones):
            raise ConfigError("milestones", f"must be positive and increasing, got {self.milestones}")
        if self.schedule == "multistep" and not self.milestones:
            raise ConfigError("milestones", "are needed by the multistep schedule")
        bad = {k: v for k, v in self.lr_multipliers.items() if isinstance(v, bool) or not isinstance(v, (int, float))
               or v < 0}
        if bad:
            raise ConfigError("lr_multipliers", f"must be non-negative numbers, got {bad}")
        if self.checkpoint_steps is not None:
            self.check_positive("checkpoint_steps")
        self.check_fraction("min_lr_factor", low_open=False)
        if self.ema_decay is not None:
            self.check_fraction("ema_decay", high_open=True)
        if self.pretrained:
            if self.init_checkpoint:
                raise ConfigError("init_checkpoint", "cannot go with `pretrained`: both give the starting weights")
            check_pretrained_request(self.model)

    @property
    def starting_weights(self) -> str | None:
        """What the model starts from: the ``init_checkpoint`` file, the name of its pretrained weights, or
        nothing (a random initialisation)."""
        return self.model if self.pretrained else self.init_checkpoint

    def optimization(self) -> Optimization:
        """The optimiser and schedule settings, as the task module keeps them."""
        return Optimization(
            lr=self.lr, weight_decay=self.weight_decay, schedule=self.schedule, warmup_epochs=self.warmup_epochs,
            warmup_iterations=self.warmup_iterations, warmup_lr_factor=self.warmup_lr_factor,
            min_lr_factor=self.min_lr_factor, cooldown_epochs=self.cooldown_epochs, poly_power=self.poly_power,
            milestones=tuple(self.milestones), decay_rate=self.decay_rate, lr_batch=self.lr_batch,
            lr_multipliers={k: float(v) for k, v in self.lr_multipliers.items()},
            no_weight_decay=tuple(self.no_weight_decay))

    def absolute(self) -> RunConfig:
        """This config with its paths made absolute, so that the run's files stay valid from any directory."""
        paths = {name: str(Path(getattr(self, name)).resolve()) for name in ("data", "output", "init_checkpoint")
                 if getattr(self, name)}
        if getattr(self, "split_files", None):
            paths["split_files"] = {k: str(Path(v).resolve()) for k, v in self.split_files.items()}
        return dataclasses.replace(self, **paths)

    def resumed_with(self, given: dict[str, Any], config_file: Path) -> RunConfig:
        """This (saved) config with the options given to ``--resume``: those that may change (``epochs``, devices,
        workers; ``data`` when the data moved) replace the saved values, any other must equal it."""
        fields = self.fields()
        given = dict(given)
        for name in ("data", "output", "init_checkpoint"):
            if given.get(name):
                given[name] = str(Path(given[name]).resolve())
        if given.get("split_files"):
            given["split_files"] = {k: str(Path(v).resolve()) for k, v in given["split_files"].items()}
        contradicting = [name for name, value in given.items()
                         if not fields[name].metadata.get("resumable") and name not in ("data", "output")
                         and value != getattr(self, name)]
        if contradicting:
            name = contradicting[0]
            raise ConfigError(name, f"{given[name]!r} contradicts the run being resumed, which has "
                                    f"{getattr(self, name)!r} ({config_file}); a resumed run keeps its settings but "
                                    "for `epochs`, devices and workers: start a new run in another `output` instead")
        # The run directory is where it is now (it may have been moved since it was written).
        return dataclasses.replace(self, **given)


@dataclass(kw_only=True)
class InferenceOptions(Options):
    """What ``eval`` and ``predict`` share: the checkpoint, where the results go, and how the model is run."""

    checkpoint: str = option(None, "a run's checkpoint (RUN/best.ckpt) or its model file folder (lemevit "
                                         "export), of any task: the task is read from it")
    output: str = option(None, "where the results go")
    batch_size: int = option(8, "images, or windows of a whole image, per batch and device")
    precision: str = option("fp32", "fp32, or autocast to bf16 or fp16", choices=("fp32", "bf16", "fp16"))
    accelerator: str = option("auto", "auto (a GPU when there is one), cpu or gpu",
                              choices=("auto", "cpu", "gpu", "cuda"))
    devices: int | str = option(1, "devices (several share the items out; the results are gathered)")
    num_nodes: int = option(1, "nodes (DDP over several machines, as torchrun or SLURM launch them)")
    num_workers: int = option(2, "data loading worker processes per device")
    runtime: str = option("torch", "torch, or onnxruntime on the CPU (the model file's model.onnx, or an export of the "
                                   "checkpoint made on first use and kept beside it as .onnx); onnxruntime-int8: its "
                                   "dynamic int8 quantization. Every task but panoptic, which has no ONNX export",
                          choices=("torch", "onnxruntime", "onnxruntime-int8"))

    def __post_init__(self):
        for name in ("checkpoint", "output"):
            if not getattr(self, name):
                raise ConfigError(name, "is required")
        self.check_positive("batch_size", "num_nodes")
        self.check_non_negative("num_workers")
        devices = self.devices
        if devices != "auto" and (isinstance(devices, bool) or not isinstance(devices, int) or devices < 1):
            raise ConfigError("devices", f"must be a positive number of devices or 'auto', got {devices!r}")
        if self.runtime.startswith("onnxruntime"):
            if self.accelerator in ("gpu", "cuda"):
                raise ConfigError("runtime", "onnxruntime runs on the CPU here: use `accelerator` cpu, or the torch "
                                             "runtime on the GPU")
            self.accelerator = "cpu"


@dataclass(kw_only=True)
class EvalOptions(InferenceOptions):
    """``lemevit eval`` of a checkpoint of any task."""

    data: str | None = option(None, "data in the layout the run was trained on (default: the run's own held-out "
                                    "split)")
    output: str = option(None, "folder for metrics.json (and the plots)")


@dataclass(kw_only=True)
class PredictOptions(InferenceOptions):
    """``lemevit predict`` with a checkpoint of any task."""

    inputs: list[str] = option([], "image files, folders (searched as train searches them) or glob patterns",
                               positional=True, nargs="*", metavar="INPUT")
    output: str = option(None, "where the predictions go (see the task)")
    skip_bad: bool = option(False, "skip unreadable images and list them instead of stopping at the first")


def add_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, options: type[Options],
                skip: Iterable[str] = (), defaults: bool = True) -> dict[str, str]:
    """Add the fields of ``options`` as arguments (every default None, so that what was given can be told from
    what was not); returns ``{field: flag}``. ``defaults`` shows each field's default in its help."""
    hints = typing.get_type_hints(options)
    # The flag of each field, for the help texts that name other fields.
    names = {f.name: ("--no-" + f.name.replace("_", "-") if f.default is True else flag(f.name))
             for f in dataclasses.fields(options) if f.metadata.get("cli", True) and f.name not in skip}
    flags = {}
    for f in dataclasses.fields(options):
        meta = f.metadata
        if f.name in skip or not meta.get("cli", True):
            continue
        kind = _unwrap(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = plain(meta.get("help", ""), names)
        if defaults and default not in (None, [], {}, False) and not isinstance(default, bool):
            help_text += f" (default {default})"
        kwargs: dict[str, Any] = {"help": help_text, "default": None}
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        name = flag(f.name)
        if kind is bool:
            if default is True:
                name = "--no-" + f.name.replace("_", "-")
                kwargs.update(action="store_false", help=f"do not: {help_text}" if help_text else None)
            else:
                kwargs.update(action="store_true")
            kwargs.pop("metavar", None)
        elif typing.get_origin(kind) is dict:
            value_kind = typing.get_args(kind)[1]
            kwargs.update(nargs=meta.get("nargs") or "+", type=lambda text, k=value_kind: _key_value(text, k),
                          action=_KeyValues)
        elif typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            kwargs.update(nargs=meta.get("nargs") or "+", type=item)
        elif kind == (int, str):
            kwargs.update(type=_int_or_auto)
        else:
            kwargs.update(type=kind)
        if meta.get("positional"):
            kwargs.pop("default")
            parser.add_argument(f.name, **kwargs)
            flags[f.name] = f.name.upper()
        else:
            parser.add_argument(name, dest=f.name, **kwargs)
            flags[f.name] = name
    return flags
