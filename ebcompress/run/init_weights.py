"""A run's starting weights (``model.init``): their checksum in the recipe, their summary in
the results.

:func:`with_init_checksum` fills ``model.init_sha256`` in before a run starts or resumes, so
the run's ``recipe.yaml`` records the file's checksum and the drift check
(:mod:`ebcompress.run.drift`) refuses a resume whose file changed, field by field like any
other change (``model.init`` itself may change: moving the file is no change). A checksum the
recipe pins must match the file.
"""

from __future__ import annotations

from torch import nn

from ebcompress.errors import UserError
from ebcompress.models.weights import file_sha256
from ebcompress.modules import unwrap
from ebcompress.recipe import Recipe
from ebcompress.run.results import InitSummary


def with_init_checksum(recipe: Recipe) -> Recipe:
    """``recipe`` with ``model.init_sha256`` set to the sha256 of ``model.init`` (unchanged
    without one); a UserError when it does not match a checksum the recipe already names."""
    model = recipe.model
    if model.init is None:
        return recipe
    digest = file_sha256(model.init)
    if model.init_sha256 is not None and model.init_sha256 != digest:
        raise UserError(
            f"model.init {model.init!r} has sha256 {digest}, not model.init_sha256 "
            f"{model.init_sha256} (was the file replaced?); restore that file, or drop "
            "model.init_sha256 (for a resume: start afresh with --overwrite)"
        )
    return recipe.model_copy(update={"model": model.model_copy(update={"init_sha256": digest})})


def init_summary(recipe: Recipe, model: nn.Module) -> InitSummary | None:
    """What the results record of the starting weights (None: a random initialisation)."""
    if recipe.model.init is None or recipe.model.init_sha256 is None:
        return None
    record = getattr(unwrap(model), "_ebcompress_init", None) or {}
    return InitSummary(
        file=recipe.model.init,
        sha256=recipe.model.init_sha256,
        new_head=tuple(record.get("new_head") or ()),
    )


def describe_init(summary: InitSummary) -> str:
    """One log line: the file, its checksum and the classifier left as initialised."""
    head = ""
    if summary.new_head:
        names = ", ".join(summary.new_head)
        head = f"; its classifier ({names}) did not fit the data and keeps its initialisation"
    return f"model.init: started from {summary.file} (sha256 {summary.sha256[:16]}...){head}"
