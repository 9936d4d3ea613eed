"""The shell's one conversion of the recipe's ``data`` section into the data package's type.

:mod:`ebcompress.data` never reads the recipe schema; it takes
:class:`~ebcompress.data.DataOptions`. Every ``load_data`` call on a recipe (the pipeline's,
the benchmarks') goes through :func:`data_options`. ``data.num_workers`` is not a property of
the data set: the trainer's loaders take it (:mod:`ebcompress.methods.training`).
"""

from __future__ import annotations

from ebcompress.data import AugmentOptions, DataOptions
from ebcompress.recipe import DataConfig

# DataConfig's fields that are not the data set's (see the module docstring)
_LOADER_FIELDS = {"num_workers"}


def data_options(cfg: DataConfig) -> DataOptions:
    """The recipe's validated ``data`` section ``cfg`` as the data package's options."""
    fields = cfg.model_dump(exclude={"augment", *_LOADER_FIELDS})
    for key in ("mean", "std"):
        if fields[key] is not None:
            fields[key] = tuple(fields[key])
    return DataOptions(**fields, augment=AugmentOptions(**cfg.augment.model_dump()))
