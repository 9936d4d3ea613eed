"""The recipe: one typed schema for the YAML files, the CLI and the Python API.

A recipe is a short YAML delta over the documented defaults below (see docs/recipes.md).
It may name a ``base:`` recipe to start from, and ``--set a.b=c`` overrides any field.
Every section rejects unknown keys; a mistake is reported as a :class:`UserError` naming
the dotted field path, the value and what is allowed: for a registered name (``prune.method``,
whose entry brings its ``prune.<method>`` section, the precisions, ``data.name``,
``export.formats``), the names its registry holds.

Lookup: ``load_recipe("quickstart")`` reads the recipe shipped with the package,
``load_recipe("my.yaml")`` reads a file.
"""

from __future__ import annotations

import copy
import json
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from ebcompress.channels.draw_options import DrawOptions
from ebcompress.engine.preemption import parse_checkpoint_every
from ebcompress.errors import UserError
from ebcompress.methods.catalog import METHODS

_DRAW_FIELDS = tuple(f.name for f in fields(DrawOptions))


def _registered(kind: str) -> AfterValidator:
    """A check of a name against the registry of ``kind``; these live with what they name
    (torch), so they are imported when a recipe is validated, not with this module."""

    def check(name: str) -> str:
        from ebcompress.data import DATASETS
        from ebcompress.deploy.formats import FORMATS
        from ebcompress.engine.precision import PRECISIONS

        return {r.kind: r for r in (PRECISIONS, DATASETS, FORMATS)}[kind].check(name)

    return AfterValidator(check)


Precision = Annotated[str, _registered("precision")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    """Which network to build: ``vgg16_cifar``, ``timm:resnet50`` or ``tv:resnet18``."""

    name: str = "vgg11_cifar"
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _no_data_set_arguments(self) -> ModelConfig:
        taken = sorted({"num_classes", "in_chans"} & set(self.kwargs))
        if taken:
            raise ValueError(f"kwargs {taken} are set from the data set; remove them")
        try:  # a YAML alias can make a value contain itself; it could not be written back
            json.dumps(self.kwargs, default=str)
        except ValueError:
            raise ValueError("kwargs refer to themselves (a recursive YAML alias)") from None
        return self


class AugmentConfig(_Section):
    """Training augmentation, mapped onto timm's ``create_transform`` arguments.

    ``None`` (and ``crop: auto``) means "the data set's default" (docs/recipes.md,
    "Augmentation defaults"); which options apply to which data sets is checked when the data
    is loaded (:mod:`ebcompress.data.augment`), because it depends on ``data.name``.
    """

    crop: Literal["auto", "pad", "random_resized", "none"] = "auto"
    pad: int | None = Field(None, ge=1, le=256)
    hflip: float | None = Field(None, ge=0, le=1)
    vflip: float = Field(0.0, ge=0, le=1)
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] | None = None
    color_jitter: float | None = Field(None, ge=0)
    auto_augment: str | None = Field(None, min_length=1)
    re_prob: float = Field(0.0, ge=0, le=1)
    crop_pct: float | None = Field(None, gt=0, le=1)
    interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos"] | None = None

    @model_validator(mode="after")
    def _ranges_in_order(self) -> AugmentConfig:
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale {list(self.scale)} must be [lo, hi] with 0 < lo <= hi <= 1")
        if self.ratio is not None and not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio {list(self.ratio)} must be [lo, hi] with 0 < lo <= hi")
        return self


class DataConfig(_Section):
    """Which data set, where it lives, and the input size the model sees."""

    name: Annotated[str, _registered("data set")] = "digits"
    root: str | None = None
    image_size: int = Field(32, ge=8, le=1024)
    train_subset: int | None = Field(None, ge=1)
    test_subset: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0, le=64)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    mean: list[float] | None = Field(None, min_length=1)
    std: list[Annotated[float, Field(gt=0)]] | None = Field(None, min_length=1)
    skip_bad_images: bool = False

    @model_validator(mode="after")
    def _normalisation_in_unit_range(self) -> DataConfig:
        # images are read as 0..1: ImageNet's 123.7 / 58.4 in 0..255 units would pass silently
        for field, values in (("mean", self.mean), ("std", self.std)):
            bad = [v for v in values or () if not 0 <= v <= 1]
            if bad:
                raise ValueError(
                    f"{field} {bad} must be in 0..1 units (images are scaled to 0..1); divide "
                    "0..255 values by 255"
                )
        return self


class TrainConfig(_Section):
    """The dense schedule. Milestones are epochs, as in the paper (80, 120 of 160)."""

    epochs: int = Field(160, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    nesterov: bool = False
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = Field(default_factory=lambda: [80, 120])
    gamma: float = Field(0.1, gt=0, le=1)
    precision: Precision = "fp32"
    channels_last: bool = False
    sync_bn: bool = False
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # Mid-epoch checkpoints: steps (500, "500steps") or wall time ("30min"); None: per epoch.
    checkpoint_every: int | str | None = None

    @field_validator("checkpoint_every", mode="before")
    @classmethod
    def _checkpoint_interval(cls, value: Any) -> Any:
        # Before pydantic's coercion, so true or 1.5 get the message naming the forms too.
        parse_checkpoint_every(value)  # ValueError naming the accepted forms
        return value

    @model_validator(mode="after")
    def _milestones_inside_schedule(self) -> TrainConfig:
        bad = [m for m in self.milestones if not 0 < m < self.epochs]
        if bad:
            raise ValueError(
                f"milestones {bad} must lie strictly between 0 and epochs={self.epochs}"
            )
        if sorted(self.milestones) != self.milestones:
            raise ValueError(f"milestones {self.milestones} must be increasing")
        return self


class _SharedPruneConfig(_Section):
    """How the ticket is found. ``ratio`` is the fraction of prunable channels removed.
    ``scope``, ``min_keep``, ``max_group_ratio``, ``round_to`` are :class:`DrawOptions`, with
    its defaults and checks (:meth:`draw_options`); :data:`PruneConfig` adds method sections."""

    method: Annotated[str, AfterValidator(METHODS.check)] = "eb"
    ratio: float = Field(0.3, gt=0, lt=1)
    watch_ratios: list[float] = Field(default_factory=list)
    scope: str = DrawOptions.scope
    sparsity: float = Field(1e-4, ge=0)
    epsilon: float = Field(0.1, gt=0, le=1)
    window: int = Field(5, ge=2)
    max_search_epochs: int | None = Field(None, ge=1)
    min_search_epochs: int = Field(0, ge=0)
    learning_margin: float = Field(0.2, gt=0, lt=1)
    min_keep: int = DrawOptions.min_keep
    max_group_ratio: float = DrawOptions.max_group_ratio
    round_to: int | None = DrawOptions.round_to

    @field_validator(*_DRAW_FIELDS)
    @classmethod
    def _draw_option(cls, value: Any, info: ValidationInfo) -> Any:
        try:
            DrawOptions(**{info.field_name: value})
        except UserError as exc:  # pydantic reports ValueErrors with the field's path
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _ratios_open_interval(self) -> _SharedPruneConfig:
        bad = [r for r in self.watch_ratios if not 0 < r < 1]
        if bad:
            raise ValueError(f"watch_ratios {bad} must each lie in the open interval (0, 1)")
        return self

    def draw_options(self) -> DrawOptions:
        """The rules every method draws its ticket by: the one place the shell builds them."""
        return DrawOptions(**{name: getattr(self, name) for name in _DRAW_FIELDS})


#: The ``prune`` section: the shared fields and ``prune.<key>`` for each method with options.
PruneConfig = create_model(
    "PruneConfig",
    __base__=_SharedPruneConfig,
    __module__=__name__,
    **{k: (i.options, Field(default_factory=i.options)) for k, i in METHODS.items() if i.options},
)


class RetrainConfig(_Section):
    """Retraining the slim network.

    ``mode``: ``finetune`` (default) inherits the ticket's weights, ``reinit`` re-initialises.
    ``schedule``: ``restart`` (default) trains the slim network on a fresh copy of the dense
    schedule, ``epochs`` long (default ``train.epochs``, milestones scaled): the paper's
    protocol, which gives every ticket a full high-lr phase to recover in. ``continue`` (EB
    finetune only) resumes the dense schedule from the ticket's epoch to ``train.epochs``
    (``epochs`` then counts back from its end): cheaper, but a late ticket gets only a few
    epochs at a small lr.
    """

    mode: Literal["finetune", "reinit"] = "finetune"
    schedule: Literal["restart", "continue"] = "restart"
    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    precision: Precision = "fp32"


class ExportConfig(_Section):
    formats: list[Annotated[str, _registered("export format")]] = Field(
        default_factory=lambda: ["bundle"]
    )
    opset: int = Field(17, ge=9)
    dynamic_batch: bool = True


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
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def load_recipe(ref: str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a shipped recipe by name or a YAML file by path, then apply ``--set`` overrides."""
    data = _deep_merge(_raw_recipe(ref), parse_overrides(overrides))
    return validate_recipe(data, where=f"recipe {ref!r}")
