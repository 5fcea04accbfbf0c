"""The tasks lemevit trains, evaluates and predicts: each registers its LightningModule class here, and
``train``, ``eval``, ``predict`` and the command line find everything about a task through it.

A task module ends with its class decorated by :func:`register_task`, as timm's model files end with
``@register_model``; a new task is one more module imported by ``lemevit.tasks``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from lemevit.errors import ConfigError

if TYPE_CHECKING:
    from lemevit.tasks.base import BaseTask

__all__ = ["get_task", "register_task", "task_names"]

_TASKS: dict[str, type[BaseTask]] = {}


def register_task(cls: type[BaseTask]) -> type[BaseTask]:
    """Class decorator: make ``cls`` the task named ``cls.name``."""
    if cls.name in _TASKS and _TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is registered twice: {_TASKS[cls.name].__qualname__}, {cls.__qualname__}")
    _TASKS[cls.name] = cls
    return cls


def _load_builtin_tasks() -> None:
    import lemevit.tasks  # noqa: F401  (its modules register the built-in tasks)


def task_names() -> list[str]:
    _load_builtin_tasks()
    return list(_TASKS)


def get_task(name: str) -> type[BaseTask]:
    """The task class registered as ``name``."""
    _load_builtin_tasks()
    if name not in _TASKS:
        raise ConfigError("task", f"unknown task {name!r}; the tasks are {', '.join(_TASKS)}")
    return _TASKS[name]
