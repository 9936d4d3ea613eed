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

from ebcompress.recipe.prune import PruneConfig
from ebcompress.recipe.schema import (
    Recipe,
    load_recipe,
    parse_overrides,
    shipped_recipes,
    validate_recipe,
)
from ebcompress.recipe.sections import (
    AugmentConfig,
    DataConfig,
    DistillSection,
    ExportConfig,
    ModelConfig,
    RetrainConfig,
)
from ebcompress.recipe.train import TrainConfig

__all__ = [
    "AugmentConfig",
    "DataConfig",
    "DistillSection",
    "ExportConfig",
    "ModelConfig",
    "PruneConfig",
    "Recipe",
    "RetrainConfig",
    "TrainConfig",
    "load_recipe",
    "parse_overrides",
    "shipped_recipes",
    "validate_recipe",
]
