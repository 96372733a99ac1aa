"""Each family's training recipe, from its paper: the defaults of ``upscale train --model X``.

A recipe is a TOML file of this package's ``train/recipes/`` folder, named after the family
(:attr:`~upscale_cli.models.Arch.recipe` points a family to another's file).  It holds option
keys of ``--config`` (``optimizer``, ``lr``, ``schedule``, ``loss``, ``patch-size``,
``batch-size``, ``grad-clip`` ...), and:

* ``source``: the paper and the sections the values come from;
* ``paper-data``: the training data the paper used;
* a ``[paper]`` table: for every value that is ours rather than the paper's, the paper's value
  and why ours differs (most often: the paper's value does not train in the short runs of
  ``benchmarks/train_defaults.py``).

Precedence of ``upscale train``: built-in defaults < the family's recipe < ``--config`` <
flags.  The run's header names the recipe and where each value came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (PEP 680)
    import tomli as tomllib


RECIPE_KEYS = (
    "optimizer",
    "lr",
    "schedule",
    "milestones",
    "warmup",
    "steps",
    "loss",
    "patch_size",
    "batch_size",
    "grad_clip",
    "grad_clip_mode",
    "ema",
    "deep_supervision",
    "discriminator",
)
"""The options a recipe may set: how to train, never what or where (model, data, output)."""


@dataclass(frozen=True)
class Recipe:
    """A family's training recipe (see the module docstring).

    Attributes:
        name: the recipe file's stem (a family name).
        source: the paper and its sections.
        data: the training data of the paper.
        values: option values, keys normalised to :class:`~.config.TrainConfig` field names.
        paper: for each option that is ours, the paper's value and the reason.
    """

    name: str
    source: str
    data: str
    values: dict[str, Any]
    paper: dict[str, str]

    def origin(self, key: str) -> str:
        """``"paper"``, or ``"ours"`` (see :attr:`paper`), for an option the recipe sets."""
        return "ours" if key in self.paper else "paper"


def _norm(key: str) -> str:
    return key.replace("-", "_")


def parse_recipe(name: str, text: str) -> Recipe:
    """A recipe from its TOML text; unknown keys or a missing ``source`` raise :class:`ValueError`."""
    raw = tomllib.loads(text)
    paper = {_norm(k): str(v) for k, v in raw.pop("paper", {}).items()}
    source, data = raw.pop("source", None), raw.pop("paper-data", None)
    values = {_norm(k): v for k, v in raw.items()}
    unknown = sorted(set(values) - set(RECIPE_KEYS)) + sorted(set(paper) - set(values))
    if unknown or not source or not data:
        raise ValueError(f"recipe {name}: unknown or unset keys {unknown}, or no source / paper-data")
    return Recipe(name, str(source), str(data), values, paper)


def available() -> list[str]:
    """The names of every recipe shipped with the package."""
    folder = resources.files(__package__).joinpath("recipes")
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_recipe(name: str) -> Recipe | None:
    """The recipe called ``name``, or ``None`` when the package has none by that name."""
    path = resources.files(__package__).joinpath("recipes", f"{name}.toml")
    if not path.is_file():
        return None
    return parse_recipe(name, path.read_text(encoding="utf-8"))


def recipe_for(model: str) -> Recipe | None:
    """The recipe of the family that ``--model`` names (a model, family, alias or variant,
    optionally with ``:key=value`` kwargs); ``None`` for a family without one.

    Raises:
        UsageError: ``model`` names nothing in the registry.
    """
    from ..models import family_of, split_overrides

    arch = family_of(split_overrides(model, "--model")[0])
    return load_recipe(arch.recipe or arch.name)
