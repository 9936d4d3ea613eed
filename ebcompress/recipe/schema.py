"""The whole recipe, and its lookup: shipped names, YAML files, ``base:`` chains,
``--set`` overrides, and validation errors as one line naming the dotted field."""

from __future__ import annotations

import copy
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)

from ebcompress.errors import UserError
from ebcompress.recipe.prune import PruneConfig
from ebcompress.recipe.sections import (
    DataConfig,
    ExportConfig,
    ModelConfig,
    RetrainConfig,
    _Section,
)
from ebcompress.recipe.train import TrainConfig


class Recipe(_Section):
    """A whole run: model, data, dense schedule, pruning, retraining, export."""

    name: str = "custom"
    description: str = ""
    seed: int = Field(0, ge=0, lt=2**32)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @model_validator(mode="after")
    def _a_dense_teacher_exists(self) -> Recipe:
        distill = self.retrain.distill
        if distill is not None and not distill.from_file and self.prune.method == "snip":
            raise ValueError(
                "retrain.distill.teacher 'dense': SNIP prunes at initialisation and trains no "
                "dense network; give teacher a weights file"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------- lookup


def shipped_recipes() -> dict[str, str]:
    """Names of the recipes shipped with the package, mapped to their YAML text."""
    folder = resources.files("ebcompress.recipes")
    return {
        entry.name[: -len(".yaml")]: entry.read_text(encoding="utf-8")
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(".yaml")
    }


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{where}: malformed YAML{at}; fix the syntax") from None
    except RecursionError:
        raise UserError(f"{where}: the YAML is nested too deeply") from None
    if data is None:
        # An empty file once silently meant "all defaults": a 160-epoch VGG run nobody asked for.
        raise UserError(
            f"{where}: the recipe is empty; start from a shipped recipe with a line such as "
            "'base: quickstart' (see `ebcompress recipes`) and add only what you change"
        )
    if not isinstance(data, dict):
        raise UserError(f"{where}: a recipe must be a YAML mapping, got {type(data).__name__}")
    return data


def _raw_recipe(ref: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The recipe's mapping with its ``base:`` chain merged in, not yet validated."""
    if ref in seen:
        raise UserError(f"recipe {ref!r}: circular 'base' chain {' -> '.join((*seen, ref))}")
    path = Path(ref)
    shipped = shipped_recipes()
    if ref.endswith((".yaml", ".yml")) or path.exists():
        if not path.is_file():
            raise UserError(f"recipe file {ref!r} does not exist; give a path or a shipped name")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UserError(f"recipe file {ref!r} cannot be read ({reason})") from None
        data = _read_yaml(text, str(path))
    elif ref in shipped:
        data = _read_yaml(shipped[ref], f"recipe {ref!r}")
    else:
        raise UserError(
            f"unknown recipe {ref!r}; shipped recipes: {', '.join(shipped)} "
            "(or give a path to a .yaml file)"
        )
    base = data.pop("base", None)
    if base is None:
        data.setdefault("name", path.stem if path.suffix else ref)
        return data
    if not isinstance(base, str):
        raise UserError(f"recipe {ref!r}: 'base' must be a recipe name, got {base!r}")
    merged = _deep_merge(_raw_recipe(base, (*seen, ref)), data)
    merged["name"] = data.get("name", path.stem if path.suffix else ref)
    return merged


def _deep_merge(base: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Turn ``["train.lr=0.05", "prune.watch_ratios=[0.3,0.5]"]`` into a nested mapping.

    Values are parsed as YAML scalars or flow collections, so types come out right.
    """
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set train.lr=0.05")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except (yaml.YAMLError, RecursionError):
            value = text
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"--set {pair!r}: {part!r} is set twice as a value and a section")
            node = child
        node[parts[-1]] = value
    return nested


def validate_recipe(data: dict[str, Any], where: str = "recipe") -> Recipe:
    """Validate a raw mapping; the first problem becomes a one-line :class:`UserError`."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            parent = _section_for(err["loc"][:-1])
            allowed = ", ".join(parent.model_fields) if parent else "see docs/recipes.md"
            raise UserError(f"{where}: unknown key {field!r}; allowed here: {allowed}") from None
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        raise UserError(f"{where}: {field}: {err['msg']}{shown}") from None


def _section_for(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section class at ``loc``, also through an optional one (``EmaSection | None``)."""
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(str(part))
        options = typing.get_args(field.annotation) or (field.annotation,) if field else ()
        sections = [a for a in options if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(sections) != 1:
            return None
        model = sections[0]
    return model


def load_recipe(ref: str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a shipped recipe by name or a YAML file by path, then apply ``--set`` overrides."""
    data = _deep_merge(_raw_recipe(ref), parse_overrides(overrides))
    return validate_recipe(data, where=f"recipe {ref!r}")
