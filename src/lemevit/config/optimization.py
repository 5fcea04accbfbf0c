"""How every run optimises: AdamW over parameter groups (weight decay off for norms, biases, tokens and the names a
run lists; per-module learning-rate multipliers), and a learning-rate schedule stepped per optimizer step, with a
budget in epochs or in iterations and the learning rate scaled by the global batch.

The schedules are timm's (:func:`timm.scheduler.create_scheduler_v2`), driven in optimizer steps: ``cosine`` (with
a cooldown held at the minimum), ``poly`` (``poly_power`` 1.0 is a linear decay), ``multistep`` (``milestones``,
``decay_rate``) and ``constant``; each after a linear warm-up from ``warmup_lr_factor`` of the peak.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from timm.scheduler import create_scheduler_v2
from torch import nn

__all__ = ["SCHEDULES", "Optimization", "ScheduleSteps", "build_optimizer", "build_scheduler", "nested_no_weight_decay"]

SCHEDULES = ("cosine", "poly", "multistep", "constant")


@dataclass(frozen=True)
class Optimization:
    """The optimisation settings of a run, as its task module keeps them (one hyperparameter).

    ``lr`` is the peak learning rate for a global batch of ``lr_batch`` items (scaled linearly to the run's
    global batch), or as given when ``lr_batch`` is unset. Epoch quantities (``warmup_epochs``, ``cooldown_epochs``,
    ``milestones``) count iterations instead when the run's budget is in iterations, as do ``warmup_iterations``.
    """

    lr: float = 1e-3
    weight_decay: float = 0.05
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    warmup_iterations: int | None = None
    warmup_lr_factor: float = 0.0
    min_lr_factor: float = 0.01
    cooldown_epochs: float = 0.0
    poly_power: float = 1.0
    milestones: tuple[float, ...] = ()
    decay_rate: float = 0.1
    lr_batch: int | None = None
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    no_weight_decay: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, values: dict | None) -> Optimization:
        values = dict(values or {})
        for name in ("milestones", "no_weight_decay"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        return {**values, "milestones": list(self.milestones), "no_weight_decay": list(self.no_weight_decay)}

    def peak_lr(self, global_batch: int) -> float:
        """The learning rate of a global batch of ``global_batch`` items (the linear scaling rule)."""
        return self.lr * global_batch / self.lr_batch if self.lr_batch else self.lr


@dataclass(frozen=True)
class ScheduleSteps:
    """A schedule's phases in optimizer steps: ``total`` (warm-up included, cooldown included) and its parts."""

    total: int
    warmup: int
    cooldown: int
    milestones: tuple[int, ...]

    @classmethod
    def of(cls, opt: Optimization, total: int, steps_per_unit: float) -> ScheduleSteps:
        """``total`` steps, with epoch quantities converted at ``steps_per_unit`` steps each (the steps of an epoch,
        or 1 for a budget in iterations)."""
        total = max(1, total)
        warmup = (opt.warmup_iterations if opt.warmup_iterations is not None
                  else int(round(opt.warmup_epochs * steps_per_unit)))
        cooldown = int(round(opt.cooldown_epochs * steps_per_unit))
        milestones = tuple(int(round(m * steps_per_unit)) for m in opt.milestones)
        return cls(total, min(warmup, total - 1), min(cooldown, total - 1), milestones)


def nested_no_weight_decay(model: nn.Module) -> set[str]:
    """The ``no_weight_decay`` names of ``model`` and of every submodule (a backbone's meta tokens inside a
    segmentation network, say), prefixed with their paths: timm's optimizer factory asks the top module only."""
    names = set()
    for prefix, module in model.named_modules():
        if hasattr(module, "no_weight_decay"):
            names |= {f"{prefix}.{name}" if prefix else name for name in module.no_weight_decay()}
    return names


def _multiplier(name: str, multipliers: dict[str, float]) -> float:
    """The learning-rate multiplier of parameter ``name``: that of the longest module prefix listed for it."""
    matches = [p for p in multipliers if name == p or name.startswith(p + ".")]
    return multipliers[max(matches, key=len)] if matches else 1.0


def parameter_groups(model: nn.Module, opt: Optimization) -> list[dict]:
    """AdamW's parameter groups: no weight decay on 1-d parameters (norms, biases), on the models' own
    ``no_weight_decay`` names and on any parameter whose name contains one of ``opt.no_weight_decay``; each with the
    ``lr_scale`` of its module in ``opt.lr_multipliers`` (timm's schedulers apply it)."""
    unknown = [p for p in opt.lr_multipliers if not any(n == p or n.startswith(p + ".")
                                                         for n, _ in model.named_parameters())]
    if unknown:
        from lemevit.errors import ConfigError

        tops = sorted({n.split(".")[0] for n, _ in model.named_parameters()})
        raise ConfigError("lr_multipliers", f"no parameters under {unknown}; the network's modules are {tops}")
    skip = nested_no_weight_decay(model)
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not (param.ndim <= 1 or name.endswith(".bias") or name in skip
                     or any(pattern in name for pattern in opt.no_weight_decay))
        groups.setdefault((decay, _multiplier(name, opt.lr_multipliers)), []).append(param)
    return [{"params": params, "weight_decay": opt.weight_decay if decay else 0.0, "lr_scale": scale}
            for (decay, scale), params in groups.items()]


def build_optimizer(model: nn.Module, opt: Optimization, global_batch: int) -> torch.optim.Optimizer:
    """AdamW over :func:`parameter_groups` at the peak learning rate of ``global_batch``; the scheduler scales each
    group by its ``lr_scale``."""
    return torch.optim.AdamW(parameter_groups(model, opt), lr=opt.peak_lr(global_batch), weight_decay=opt.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, opt: Optimization, steps: ScheduleSteps):
    """timm's scheduler for ``opt`` over ``steps``, to be stepped with ``step_update(global_step)``; the cooldown is
    the end of the budget, held at the minimum once the decay is over."""
    peak = optimizer.defaults["lr"]
    sched, decay_rate = {"cosine": ("cosine", 1.0), "poly": ("poly", opt.poly_power),
                         "multistep": ("multistep", opt.decay_rate), "constant": ("step", 1.0)}[opt.schedule]
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=sched, num_epochs=steps.total - steps.cooldown, warmup_epochs=steps.warmup,
        warmup_lr=opt.warmup_lr_factor * peak, min_lr=opt.min_lr_factor * peak, decay_epochs=steps.total,
        # timm's multi-step schedule counts a milestone reached one update early (it is stepped with the next
        # epoch's number in epoch mode); in steps, the learning rate drops at the milestone's own step.
        decay_milestones=[m + 1 for m in steps.milestones], decay_rate=decay_rate, step_on_epochs=False,
        updates_per_epoch=1)
    scheduler.step_update(0)
    return scheduler
