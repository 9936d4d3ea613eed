"""A run's weight files (``model.init``, a ``retrain.distill`` teacher): their checksums in
the recipe, the starting weights' summary in the results.

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
    """``recipe`` with ``model.init_sha256`` set to the sha256 of ``model.init``, and
    ``retrain.distill.teacher_sha256`` to that of a teacher file (each unchanged without a
    file); a UserError when one does not match a checksum the recipe already names."""
    model, distill = recipe.model, recipe.retrain.distill
    if model.init is not None:
        where, field = "model.init", "model.init_sha256"
        digest = _checked_sha256(model.init, model.init_sha256, where, field)
        recipe = recipe.model_copy(
            update={"model": model.model_copy(update={"init_sha256": digest})}
        )
    if distill is not None and distill.from_file:
        where, field = "retrain.distill.teacher", "retrain.distill.teacher_sha256"
        digest = _checked_sha256(distill.teacher, distill.teacher_sha256, where, field)
        retrain = recipe.retrain.model_copy(
            update={"distill": distill.model_copy(update={"teacher_sha256": digest})}
        )
        recipe = recipe.model_copy(update={"retrain": retrain})
    return recipe


def _checked_sha256(path: str, pinned: str | None, where: str, field: str) -> str:
    try:
        digest = file_sha256(path)
    except UserError as exc:  # the reader names model.init, the field it was written for
        raise UserError(str(exc).replace("model.init", where, 1)) from None
    if pinned is not None and pinned != digest:
        raise UserError(
            f"{where} {path!r} has sha256 {digest}, not {field} {pinned} (was the file "
            f"replaced?); restore that file, or drop {field} (for a resume: start afresh "
            "with --overwrite)"
        )
    return digest


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
