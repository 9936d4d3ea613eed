"""What a finished search hands to retraining, saved so that a resume never searches again.

Once a method's search has drawn its ticket and planned the retraining,
:func:`search_or_resume` writes ``ticket.json`` and ``search_result/``: ``outcome.json``
(the outcome's fields, the retrain plan's epochs, the ledger so far) and
``tensors.safetensors`` (the dense weights the slim network is cut from, any fixed weight
masks, and a distillation teacher's dense weights where they are not the start). A resumed
run reads them back instead of calling the method again, so SNIP's sensitivities and
ThiNet's greedy channel selection are never recomputed (on a GPU they need not come out
the same). ``outcome.json`` is written last, atomically: a run killed while saving simply
searches again, from its checkpoints.

Pickle-free: JSON and safetensors only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ebcompress.atomic import atomic_path, write_text_atomic
from ebcompress.baselines._masks import WeightMaskCallback
from ebcompress.channels.ticket import Ticket
from ebcompress.cost.flops import TrainingLedger
from ebcompress.earlybird.collectives import ratios_differing_across_ranks
from ebcompress.engine import distributed as dist
from ebcompress.engine.progress import log
from ebcompress.errors import UserError
from ebcompress.methods.base import Method, RetrainPlan, RunContext, SearchOutcome
from ebcompress.run.paths import RunPaths

FORMAT = 1
_START, _MASK, _TEACHER = "start.", "mask.", "teacher."


def search_or_resume(method: Method, run: RunContext) -> tuple[SearchOutcome, RetrainPlan]:
    """The method's search and retrain plan, saved here; or, on a resume past the search,
    what was saved: a ticket is never computed twice for one run."""
    paths = RunPaths(run.run_dir)
    saved = load_search_result(paths.root) if run.resume and dist.is_main() else None
    saved = dist.broadcast_object(saved) if dist.is_initialized() else saved
    if saved is not None:
        outcome, plan, ledger = saved
        run.ledger.restore(ledger)
        log(
            f"search already finished: its ticket and retrain start are read from "
            f"{paths.search_result}"
        )
        return outcome, plan
    outcome = method.search(run)
    if run.recipe.retrain.dense_teacher and outcome.teacher_state is None:
        # a copy: retraining may load another start into run.model. A method that changed
        # the dense weights in its search (ThiNet's rescaling) kept them itself.
        searched = dist.unwrap(run.model).state_dict()
        outcome.teacher_state = {k: v.detach().clone() for k, v in searched.items()}
    if run.shared_search_dir is not None:  # the compare's real cost counts this search once
        outcome.extra["shared_search"] = run.shared_search_dir.name
    check_ticket_agrees_across_ranks(outcome.ticket, run.device)
    plan = method.retrain_plan(run, outcome)
    if dist.is_main():
        outcome.ticket.save(paths.ticket)
        start = None
        if not plan.reinit:
            start = plan.start_state or dist.unwrap(run.model).state_dict()
        save_search_result(paths.root, outcome, plan, start, run.ledger)
    return outcome, plan


def check_ticket_agrees_across_ranks(ticket: Ticket, device: torch.device) -> None:
    """Every data-parallel rank must retrain the same ticket (EB checks every epoch's masks;
    the baselines' tickets are checked here)."""
    if ratios_differing_across_ranks({ticket.ratio: ticket.mask()}, device, dist):
        raise UserError(
            f"data-parallel ranks drew different tickets at p={ticket.ratio:g}; every rank must "
            "train the same replica (average BatchNorm statistics, seed the data the same)"
        )


def save_search_result(
    run_dir: Path,
    outcome: SearchOutcome,
    plan: RetrainPlan,
    start_state: dict[str, torch.Tensor] | None,
    ledger: TrainingLedger,
) -> None:
    """Write ``run_dir/search_result/``; ``start_state`` is what the slim net is cut from
    (None when it is re-initialised). ``outcome.teacher_state`` is written too unless it is
    the start (a distillation teacher that is not the start: LT's rewind, a reinit)."""
    paths = RunPaths(run_dir)
    paths.search_result.mkdir(parents=True, exist_ok=True)
    teacher = outcome.teacher_state
    if teacher is not None and start_state is not None and _same_tensors(teacher, start_state):
        teacher = None  # read back as the start
    tensors = {
        **{_TEACHER + k: v.detach().cpu().contiguous() for k, v in (teacher or {}).items()},
        # contiguous: a channels_last model's weights are strided, which safetensors refuses
        **{_START + k: v.detach().cpu().contiguous() for k, v in (start_state or {}).items()},
        **{
            _MASK + k: v.detach().cpu().contiguous()
            for k, v in (outcome.weight_masks or {}).items()
        },
    }
    with atomic_path(paths.search_tensors) as tmp:
        save_file(tensors, str(tmp))
    meta = {
        "format": FORMAT,
        "search_epochs": outcome.search_epochs,
        "emerged": outcome.emerged,
        "note": outcome.note,
        "extra": outcome.extra,
        "plan": {
            "start_epoch": plan.start_epoch,
            "end_epoch": plan.end_epoch,
            "reinit": plan.reinit,
            "lr": plan.lr,
            "has_start_state": start_state is not None,
            "has_teacher_state": outcome.teacher_state is not None,
        },
        "ledger": ledger.to_dict(),
    }
    write_text_atomic(paths.search_outcome, json.dumps(meta, indent=1) + "\n")


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


def load_search_result(
    run_dir: Path,
) -> tuple[SearchOutcome, RetrainPlan, dict[str, Any]] | None:
    """The saved outcome, the plan (start state and weight-mask callback rebuilt) and the
    ledger's dict, or None when no complete search result was saved."""
    paths = RunPaths(run_dir)
    meta_path, ticket_path = paths.search_outcome, paths.ticket
    if not meta_path.is_file() or not ticket_path.is_file():
        return None
    where = f"{str(paths.search_result)!r}"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise UserError(f"{where}: unsupported search result format {meta.get('format')!r}")
        tensors = load_file(str(paths.search_tensors))
        plan_meta = meta["plan"]
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{where} is unreadable ({exc}); delete the folder to search again from the checkpoints"
        ) from None
    start = {k[len(_START) :]: v for k, v in tensors.items() if k.startswith(_START)}
    masks = {k[len(_MASK) :]: v for k, v in tensors.items() if k.startswith(_MASK)}
    # the weights the slim network is cut from: the outcome's own or the searched model's,
    # which a resumed run no longer holds, so the outcome carries them either way
    start_state = start if plan_meta["has_start_state"] else None
    teacher = {k[len(_TEACHER) :]: v for k, v in tensors.items() if k.startswith(_TEACHER)}
    teacher_state = (teacher or start_state) if plan_meta.get("has_teacher_state") else None
    outcome = SearchOutcome(
        ticket=Ticket.load(ticket_path),
        search_epochs=int(meta["search_epochs"]),
        emerged=bool(meta["emerged"]),
        note=str(meta["note"]),
        weight_masks=masks or None,
        extra=dict(meta["extra"]),
        start_state=start_state,
        teacher_state=teacher_state,
    )
    plan = RetrainPlan(
        start_epoch=int(plan_meta["start_epoch"]),
        end_epoch=int(plan_meta["end_epoch"]),
        reinit=bool(plan_meta["reinit"]),
        start_state=start_state,
        lr=plan_meta["lr"],
        callbacks=[WeightMaskCallback(masks)] if masks else [],
    )
    return outcome, plan, meta["ledger"]
