"""A run's ``retrain.distill`` teacher: the network (the searched dense one, or a weights
file's), its forward cost, and what the results record of it.

A teacher file is built before the search, so a file that does not fit stops the run before
it trains anything; the dense teacher is the search's ``outcome.teacher_state``
(:mod:`ebcompress.run.search_result` keeps it for a resume).
"""

from __future__ import annotations

from torch import nn

from ebcompress.channels.groups import clone_module
from ebcompress.cost.flops import count_flops
from ebcompress.data import DataSplit
from ebcompress.engine import distributed as dist
from ebcompress.engine.distill import Distillation, DistillConfig
from ebcompress.errors import UserError
from ebcompress.methods.base import RunContext, SearchOutcome
from ebcompress.models import build_model
from ebcompress.recipe import DistillSection, Recipe
from ebcompress.run.paths import RunPaths
from ebcompress.run.results import DistillSummary


def build_file_teacher(run: RunContext) -> Distillation | None:
    """A ``retrain.distill`` teacher file's network, its weights loaded and its forward cost
    counted, so a file that does not fit (keys, shapes, classes, the input size) stops the
    run before the search (None: no file)."""
    distill, recipe, data = run.recipe.retrain.distill, run.recipe, run.data
    if distill is None or not distill.from_file:
        return None
    name = distill.model or recipe.model.name
    kwargs = distill.kwargs if distill.model else recipe.model.kwargs
    where = f"retrain.distill.teacher {distill.teacher!r}"
    try:
        teacher = build_model(name, data.num_classes, data.in_chans, init=distill.teacher, **kwargs)
    except UserError as exc:  # the loader names the fields it was written for
        message = str(exc).replace("model.init", "retrain.distill.teacher", 1)
        message = message.replace("model.name", "retrain.distill.model")
        raise UserError(message.replace("model.kwargs", "retrain.distill.kwargs")) from None
    new_head = (getattr(teacher, "_ebcompress_init", None) or {}).get("new_head")
    if new_head:  # model.init's rule for a backbone; a frozen teacher's head must be trained
        raise UserError(
            f"{where} has no classifier for {data.num_classes} classes ({', '.join(new_head)} "
            "did not fit); a teacher must be trained on this data set's classes"
        )
    return _with_cost(teacher, distill, data)


def distillation(
    run: RunContext, outcome: SearchOutcome, file_teacher: Distillation | None
) -> Distillation | None:
    """``retrain.distill``'s teacher (None without one): ``file_teacher``, or the searched
    dense network from ``outcome.teacher_state`` (released once loaded)."""
    distill, data = run.recipe.retrain.distill, run.data
    if distill is None or file_teacher is not None:
        return file_teacher
    if outcome.teacher_state is None:
        raise UserError(
            f"{RunPaths(run.run_dir).search_result} holds no dense teacher for "
            "retrain.distill (the search ran without it); rerun with --overwrite"
        )
    teacher = clone_module(dist.unwrap(run.model))
    teacher.load_state_dict(outcome.teacher_state)
    outcome.teacher_state = None  # saved already; the module holds the weights now
    return _with_cost(teacher, distill, data)


def _with_cost(teacher: nn.Module, distill: DistillSection, data: DataSplit) -> Distillation:
    """``teacher`` with its forward MACs, counted in eval mode as it runs (and so checked
    to run on the data's input size)."""
    size = (data.in_chans, data.image_size, data.image_size)
    try:
        macs = count_flops(teacher, size, training=False).macs
    except (RuntimeError, UserError) as exc:
        reason = str(exc.__cause__ or exc).strip().splitlines()[0]
        raise UserError(
            f"retrain.distill: the teacher cannot run on {'x'.join(map(str, size))} inputs "
            f"({reason}); check retrain.distill.model / kwargs"
        ) from None
    config = DistillConfig(alpha=distill.alpha, temperature=distill.temperature)
    return Distillation(teacher, config, macs_per_sample=macs)


def distill_summary(recipe: Recipe, teacher: tuple[int, float] | None) -> DistillSummary | None:
    """What the results record of the teacher, from its (MACs, test top-1) (None: no
    distillation)."""
    distill = recipe.retrain.distill
    if distill is None or teacher is None:
        return None
    teacher_macs, top1 = teacher
    return DistillSummary(
        teacher=distill.teacher,
        sha256=distill.teacher_sha256,
        teacher_macs=teacher_macs,
        alpha=distill.alpha,
        temperature=distill.temperature,
        top1=top1,
    )
