"""The papers' experiments as recipes: one YAML file per experiment in this folder, holding every value its
sources give (cited in the file), the data layout it expects, the result it targets, an estimate of the compute it
needs and what the sources left unstated. ``lemevit recipes`` lists them; ``lemevit train --recipe NAME`` runs one,
any option given overriding it.

A recipe's ``config`` holds the fields of its task's run config, in the units of that config: the learning rate of
``lr_batch`` images (scaled linearly to the run's global batch), warm-up and minimum rates as fractions of the
peak (scaled with it, as the sources do).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

import yaml

from lemevit.errors import ConfigError

__all__ = ["RECIPES", "Recipe", "get_recipe", "recipe_names"]

RECIPES = Path(str(files("lemevit") / "recipes"))
_KEYS = {"name", "task", "data", "result", "sources", "gpu_hours", "notes", "config"}


@dataclass(frozen=True)
class Recipe:
    """One published experiment: ``config`` is its run config's fields (``data`` and ``output`` come from the
    user), ``result`` the published scores it targets."""

    name: str
    task: str
    data: str
    result: dict[str, float]
    sources: list[str]
    gpu_hours: float
    config: dict
    notes: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Recipe:
        values = yaml.safe_load(path.read_text())
        unknown, missing = set(values) - _KEYS, _KEYS - set(values) - {"notes"}
        if unknown or missing or values["name"] != path.stem:
            raise ValueError(f"recipe {path}: keys {sorted(values)}, name {values.get('name')!r}")
        return cls(**values)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def get_recipe(name: str) -> Recipe:
    """The recipe ``name``; a :class:`ConfigError` on ``recipe`` listing the recipes when there is none."""
    path = RECIPES / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError("recipe", f"no recipe {name!r}; the recipes are {', '.join(recipe_names())} "
                                    "(`lemevit recipes` describes them)")
    return Recipe.read(path)
