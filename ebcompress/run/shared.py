"""The phases several ratios of one compare share, trained once.

A compare of one method at several ratios would otherwise train the same thing once per
ratio: network slimming, LT and ThiNet their whole dense schedule (whose training does not
depend on the ratio; only the ticket drawn afterwards does), Early-Bird one search per ratio
where a single search already watches them all. The catalogue says what each method shares
(:attr:`~ebcompress.methods.catalog.MethodInfo.shares`):

``"search"`` (EB)
    :func:`share_early_bird_search` runs one search in ``shared/eb_p30_p50_p70/`` watching
    every ratio. In the epoch a ratio's ticket emerges it keeps that ratio's result in
    ``shared/eb_p30_p50_p70/p30/`` (the ticket, that epoch's dense weights, the masks and the
    ledger so far: exactly what a run of that ratio alone saves when its search ends,
    :mod:`ebcompress.run.search_result`) and serves it to the ratio's run directory, with the
    retrain plan of that run's own recipe. The ratio's pipeline then resumes past its search
    and only retrains.
``"dense"`` (NS, LT, ThiNet)
    :func:`dense_search_dir` names ``shared/<method>/``, where every ratio's run trains (the
    first) or loads (the others) the dense search phase's checkpoint
    (:attr:`~ebcompress.methods.base.RunContext.shared_search_dir`).

Each ratio's ledger still holds its own cost the way the paper counts it: the search up to
its ticket plus its retraining. :func:`shared_cost` is what the compare really trained.

Each shared folder keeps the recipe it was trained with (``recipe.yaml``, the fields that may
differ between ratios left out); a later compare whose recipe would change what it holds is
refused in one line. The sections no search reads (``retrain``, ``export``) are left out
too, so compares of two retraining protocols can share one folder (``run_compare(...,
shared_dir=)``). A ratio whose result the shared folder does not hold although its search
went past it (the folder was edited by hand) simply searches on its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from ebcompress.atomic import write_text_atomic
from ebcompress.cost.flops import TrainingLedger
from ebcompress.earlybird.mask_history import MaskHistory
from ebcompress.engine import distributed as dist
from ebcompress.engine.metrics_file import copy_phase, read_entries
from ebcompress.engine.progress import log
from ebcompress.errors import UserError
from ebcompress.methods.eb_train import RatioOutcome, retrain_plan_for, search_every_ratio
from ebcompress.recipe import Recipe
from ebcompress.run.drift import HARMLESS, check_resume, recipe_changes
from ebcompress.run.paths import ComparePaths, RunPaths, run_dir_name
from ebcompress.run.pipeline import seed_phase, start_run, training_device
from ebcompress.run.search_result import load_search_result, save_search_result
from ebcompress.run.state import RunState, existing_state, prepare_run_dir, write_state

#: Fields the ratios of one compare differ in, which a shared phase does not depend on.
PER_RATIO = ("ratio", "watch_ratios")
#: Sections no search reads: compares that differ only in them can share one ``shared/``.
AFTER_THE_SEARCH = ("retrain", "export")


def searched(run_dir: Path) -> bool:
    """Whether ``run_dir`` is past its search: a saved search result, or finished."""
    state = existing_state(run_dir) if run_dir.is_dir() else None
    return RunPaths(run_dir).search_outcome.is_file() or (state is not None and state.finished)


def dense_search_dir(out: ComparePaths, method: str, recipe: Recipe) -> Path:
    """``shared/<method>/``, the dense search phase every ratio of ``method`` shares,
    claimed for ``recipe`` (:func:`claim`)."""
    folder = out.shared(method)
    claim(folder, recipe, f"dense {method} training")
    return folder


def claim(folder: Path, recipe: Recipe, what: str) -> None:
    """Record ``recipe`` (less :data:`PER_RATIO` and :data:`AFTER_THE_SEARCH`) in
    ``folder/recipe.yaml``, or refuse it in
    one line when the folder holds ``what`` trained with a recipe that changes the result."""
    given = _shared_fields(recipe)
    path = RunPaths(folder).recipe
    if path.is_file():
        stored = yaml.safe_load(path.read_text(encoding="utf-8"))
        changes = [c for c in recipe_changes(stored or {}, given) if c.field not in HARMLESS]
        if changes:
            listed = "; ".join(f"{c.field}: {c.stored!r} -> {c.given!r}" for c in changes)
            raise UserError(
                f"{str(folder)!r} holds the {what} of another recipe ({listed}); use another "
                "--out, or delete that folder to train it again"
            )
    elif dist.is_main():
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, yaml.safe_dump(given, sort_keys=False))


def _shared_fields(recipe: Recipe) -> dict[str, Any]:
    fields = {k: v for k, v in recipe.to_dict().items() if k not in AFTER_THE_SEARCH}
    fields["prune"] = {k: v for k, v in fields["prune"].items() if k not in PER_RATIO}
    return fields


def share_early_bird_search(
    variants: Mapping[float, Recipe],
    out: ComparePaths,
    *,
    data_root: str | None,
    device: str | None,
    progress: bool,
) -> None:
    """One EB search for every ratio of ``variants`` (ratio -> that ratio's recipe) whose run
    directory is not past its search yet; see the module docstring. Each ratio's result is
    kept in the shared folder as well (``p30/``: ticket, masks, weights, ledger), so a run
    directory made later (another ``retrain`` protocol, a deleted run) is served from it."""
    ratios = list(variants)
    folder = out.shared("eb_" + "_".join(_ratio_name(r) for r in ratios))
    if not all(searched(out.run("eb", r)) for r in ratios):
        claim(folder, variants[ratios[0]], "Early-Bird search")
        dist.barrier()
    for ratio in ratios:
        if dist.is_main() and not searched(out.run("eb", ratio)):
            _serve(folder, ratio, variants[ratio], out.run("eb", ratio))
    dist.barrier()
    pending = [r for r in ratios if not searched(out.run("eb", r))]
    if pending:
        _search(folder, variants, pending, out, data_root, device, progress)
    if dist.is_main():
        _copy_search_metrics(folder, [out.run("eb", r) for r in ratios])


def _search(
    folder: Path,
    variants: Mapping[float, Recipe],
    pending: list[float],
    out: ComparePaths,
    data_root: str | None,
    device: str | None,
    progress: bool,
) -> None:
    """Run (or resume) the shared search in ``folder`` for the ``pending`` ratios."""
    ratios = list(variants)
    base = variants[ratios[0]]
    log(f"one Early-Bird search for p = {', '.join(f'{r:g}' for r in pending)} in {folder}")
    run, _ = start_run(
        base,
        folder,
        data_root=data_root,
        resume=True,
        device=training_device(device),
        progress=progress,
    )

    def hand_on(share: RatioOutcome) -> None:
        if not dist.is_main():
            return
        share.outcome.extra["shared_search"] = folder.name
        snapshot = folder / _ratio_name(share.ratio)
        share.masks.save(RunPaths(snapshot).masks)
        share.outcome.ticket.save(RunPaths(snapshot).ticket)
        plan = retrain_plan_for(variants[share.ratio], share.outcome)
        save_search_result(snapshot, share.outcome, plan, share.weights, run.ledger)
        _serve(folder, share.ratio, variants[share.ratio], out.run("eb", share.ratio))
        log(f"p={share.ratio:g}: search result at epoch {share.outcome.search_epochs} saved")

    seed_phase(base.seed, "search")
    search_every_ratio(run, ratios, hand_on, pending=pending)


def _serve(folder: Path, ratio: float, variant: Recipe, run_dir: Path) -> None:
    """Write ``run_dir`` as a run of ``variant`` past its search, from the shared search's
    result for ``ratio``; nothing when the search has not reached that ratio's ticket."""
    snapshot = folder / _ratio_name(ratio)
    saved = load_search_result(snapshot)
    if saved is None:
        return
    outcome, _, ledger = saved
    weights, outcome.start_state = outcome.start_state, None  # EB retrains the searched model
    if variant.retrain.dense_teacher:
        outcome.teacher_state = weights
    plan = retrain_plan_for(variant, outcome)
    prepare_run_dir(run_dir, resume=True, overwrite=False)
    check_resume(run_dir, variant)
    paths = RunPaths(run_dir)
    write_text_atomic(paths.recipe, variant.to_yaml())
    write_state(run_dir, RunState(status="search", method="eb"))
    MaskHistory.load(RunPaths(snapshot).masks).save(paths.masks)
    outcome.ticket.save(paths.ticket)
    save_search_result(
        run_dir, outcome, plan, None if plan.reinit else weights, TrainingLedger.from_dict(ledger)
    )


def _ratio_name(ratio: float) -> str:
    return run_dir_name("", ratio)[1:]  # p30


def _copy_search_metrics(folder: Path, run_dirs: Iterable[Path]) -> None:
    """Each run's search epochs, from the shared search's metrics, into its metrics.jsonl
    (a run's own lines are written after the epoch its result was handed on in)."""
    source = RunPaths(folder).metrics
    for run_dir in run_dirs:
        paths = RunPaths(run_dir)
        if not paths.search_outcome.is_file():
            continue
        if any(e.get("phase") == "search" for e in read_entries(paths.metrics)):
            continue
        epochs = json.loads(paths.search_outcome.read_text(encoding="utf-8"))["search_epochs"]
        copy_phase(source, paths.metrics, "search", through_epoch=epochs)


def shared_cost(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per method, what the compare really trained: each shared search once (the longest any
    of its ratios needed, since one run served them all) plus every ratio's own phases.

    ``rows`` are compare rows: ``total_flops``, ``seconds``, ``search_flops``,
    ``search_seconds`` and ``shared_search`` (the shared folder's name, or None for a run
    that searched on its own)."""
    cost: dict[str, dict[str, float]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        entry = {
            "per_ratio_flops": sum(r["total_flops"] for r in mine),
            "per_ratio_seconds": sum(r["seconds"] for r in mine),
        }
        flops, seconds = entry["per_ratio_flops"], entry["per_ratio_seconds"]
        for folder in {r["shared_search"] for r in mine if r.get("shared_search")}:
            group = [r for r in mine if r.get("shared_search") == folder]
            flops -= sum(r["search_flops"] for r in group) - max(r["search_flops"] for r in group)
            seconds -= sum(r["search_seconds"] for r in group) - max(
                r["search_seconds"] for r in group
            )
        cost[method] = {**entry, "shared_flops": flops, "shared_seconds": seconds}
    return cost
