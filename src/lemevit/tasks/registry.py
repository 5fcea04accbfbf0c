"""The tasks lemevit trains, evaluates and predicts: each registers its LightningModule class here, and
``train``, ``eval``, ``predict`` and the command line find everything about a task through it.

A task module ends with its class decorated by :func:`register_task`, as timm's model files end with
``@register_model``; a new task is one more module imported by ``lemevit.tasks``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from lemevit.errors import ConfigError

if TYPE_CHECKING:
    from lemevit.tasks.base import BaseTask

__all__ = ["check_data_layout", "get_task", "register_task", "task_names"]

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


def check_data_layout(task: type[BaseTask], root: str | Path, argument: str = "data") -> None:
    """Refuse the folder ``root`` when it is laid out for another task than ``task``, naming the layout found and
    the one ``task`` needs (a folder of no task's layout is left to the task's own reading, which says what is
    missing)."""
    _load_builtin_tasks()
    root = Path(root)
    if not root.is_dir():
        return
    found = next((t for t in sorted(_TASKS.values(), key=lambda t: t.loose_layout) if t.holds_data(root)), None)
    if found is None or found is task:
        return
    raise ConfigError(argument, f"{root} is laid out as {found.name} data ({found.data_layout}); a {task.name} model "
                                f"needs {task.data_layout}")
