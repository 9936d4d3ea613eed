"""Recipe drift on resume: one run directory holds one experiment.

A resumed run compares the recipe it is given with the ``recipe.yaml`` the run wrote. Changes
that only affect how the run executes (worker count, export formats, the data folder's path)
are allowed; so are the learning rates, because lowering them is the documented way to
continue a diverged run (:class:`ebcompress.engine.divergence.DivergenceError`). Every other change
would mix two experiments in one directory and is refused, naming each field and its two
values, unless ``--force-resume`` is given. The starting weights are compared by checksum
(``model.init_sha256``, which the pipeline fills in), and so is a distillation teacher file
(``retrain.distill.teacher_sha256``): a file may move, not change. Whatever
is accepted is appended to ``recipe_history.jsonl`` before ``recipe.yaml`` is replaced, so it
is never overwritten silently.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from ebcompress.errors import UserError
from ebcompress.recipe import Recipe
from ebcompress.recipe.sections import DENSE_TEACHER
from ebcompress.run.paths import RunPaths

#: Fields a resume may change: they do not alter what the run computes, or they are the
#: documented recovery from a divergence (the learning rates).
HARMLESS = frozenset(
    {
        "name",
        "description",
        "data.root",
        "data.num_workers",
        "export.formats",
        "export.opset",
        "export.dynamic_batch",
        "train.lr",
        "retrain.lr",
        "data.skip_bad_images",  # the documented way past an unreadable image
        "train.checkpoint_every",  # when to save, not what is computed
    }
)
#: What a run directory written before a field existed did, where the field's default is not
#: that behaviour; every other missing field's default reproduces the old behaviour.
LEGACY = {
    "prune.max_group_ratio": 1.0,
    "retrain.schedule": "continue",
    "model.init": None,  # runs before starting weights existed started from random ones
    "model.init_sha256": None,
    "prune.dense_epochs": None,
    "retrain.distill": None,  # runs before distillation trained on the labels alone
}


class Change(NamedTuple):
    field: str
    stored: Any
    given: Any


def recipe_changes(stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[Change]:
    """Every dotted field whose value differs between two recipe mappings, in order."""
    changes: list[Change] = []
    for key in dict.fromkeys([*stored, *given]):
        old, new = stored.get(key), given.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            changes += [
                Change(f"{key}.{c.field}", c.stored, c.given) for c in recipe_changes(old, new)
            ]
        elif old != new:
            changes.append(Change(str(key), old, new))
    return changes


def _with_missing_fields(
    stored: Mapping[str, Any], given: Mapping[str, Any], prefix: str = ""
) -> dict[str, Any]:
    """``stored`` with the fields it predates filled in: :data:`LEGACY` values where the
    default changed behaviour, the given values elsewhere (so they are no change)."""
    out = dict(stored)
    for key, value in given.items():
        path = f"{prefix}{key}"
        if key not in stored:
            out[key] = LEGACY.get(path, value)
        elif isinstance(value, Mapping) and isinstance(stored[key], Mapping):
            out[key] = _with_missing_fields(stored[key], value, f"{path}.")
    return out


def harmless(change: Change) -> bool:
    """Whether a resume may make ``change``: a :data:`HARMLESS` field, or a weights file that
    moved: ``model.init`` (both set) or a teacher file (both paths, neither ``dense``); their
    checksums, ``model.init_sha256`` and ``retrain.distill.teacher_sha256``, say whether
    the content changed."""
    if change.field == "model.init":
        return change.stored is not None and change.given is not None
    if change.field == "retrain.distill.teacher":
        return not {None, DENSE_TEACHER} & {change.stored, change.given}
    return change.field in HARMLESS


def _with_init_checksum(stored: dict[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``stored`` with the given ``model.init_sha256`` where it records ``model.init`` but no
    checksum (a recipe.yaml the pipeline did not write: compare serves a run from its shared
    search's recipe), so a checksum recorded only now is no change."""
    model = stored.get("model")
    if not isinstance(model, Mapping) or model.get("init") is None or model.get("init_sha256"):
        return stored
    checksum = (given.get("model") or {}).get("init_sha256")
    return {**stored, "model": {**model, "init_sha256": checksum}}


def check_resume(run_dir: Path, recipe: Recipe, *, force: bool = False) -> list[Change]:
    """Refuse a resume whose recipe changes the result (module docstring); record the rest.

    Returns the accepted changes. Call before ``recipe.yaml`` is rewritten.
    """
    paths = RunPaths(run_dir)
    path = paths.recipe
    if not path.is_file():
        return []
    try:
        stored = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        stored = None
    if not isinstance(stored, dict):
        raise UserError(
            f"{str(path)!r} is not a recipe any more; restore it or start afresh with --overwrite"
        )
    given = recipe.to_dict()
    changes = recipe_changes(_with_init_checksum(_with_missing_fields(stored, given), given), given)
    altering = [c for c in changes if not harmless(c)]
    if altering and not force:
        listed = "; ".join(f"{c.field}: {c.stored!r} -> {c.given!r}" for c in altering)
        raise UserError(
            f"--resume with a recipe that changes the result ({listed}); resume with the "
            "run's own recipe, use another --out, or pass --force-resume to continue anyway"
        )
    if changes:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "forced": bool(altering),
            "changes": [c._asdict() for c in changes],
        }
        with open(paths.recipe_history, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")
    return changes
