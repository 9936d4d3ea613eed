"""What a finished search hands to retraining, saved so that a resume never searches again.

Once a method's search has drawn its ticket and planned the retraining, the pipeline writes
``search_result/``: ``outcome.json`` (the outcome's fields, the retrain plan's epochs, the
ledger so far) and ``tensors.safetensors`` (the dense weights the slim network is cut from,
and any fixed weight masks). A resumed run reads them back instead of calling the method
again, so SNIP's sensitivities and ThiNet's greedy channel selection are never recomputed
(on a GPU they need not come out the same). ``outcome.json`` is written last, atomically: a
run killed while saving simply searches again, from its checkpoints.

Pickle-free: JSON and safetensors only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ebcompress.baselines._masks import WeightMaskCallback
from ebcompress.channels.ticket import Ticket
from ebcompress.cost.flops import TrainingLedger
from ebcompress.errors import UserError
from ebcompress.methods.base import RetrainPlan, SearchOutcome

FOLDER = "search_result"
FORMAT = 1
_START, _MASK = "start.", "mask."


def save_search_result(
    run_dir: Path,
    outcome: SearchOutcome,
    plan: RetrainPlan,
    start_state: dict[str, torch.Tensor] | None,
    ledger: TrainingLedger,
) -> None:
    """Write ``run_dir/search_result/``; ``start_state`` is what the slim net is cut from
    (None when it is re-initialised)."""
    folder = run_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        **{_START + k: v.detach().cpu().clone() for k, v in (start_state or {}).items()},
        **{
            _MASK + k: v.detach().cpu().contiguous()
            for k, v in (outcome.weight_masks or {}).items()
        },
    }
    tmp = folder / "tensors.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, folder / "tensors.safetensors")
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
        },
        "ledger": ledger.to_dict(),
    }
    tmp = folder / "outcome.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, folder / "outcome.json")


def load_search_result(
    run_dir: Path,
) -> tuple[SearchOutcome, RetrainPlan, dict[str, Any]] | None:
    """The saved outcome, the plan (start state and weight-mask callback rebuilt) and the
    ledger's dict, or None when no complete search result was saved."""
    folder = run_dir / FOLDER
    meta_path, ticket_path = folder / "outcome.json", run_dir / "ticket.json"
    if not meta_path.is_file() or not ticket_path.is_file():
        return None
    where = f"{str(folder)!r}"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise UserError(f"{where}: unsupported search result format {meta.get('format')!r}")
        tensors = load_file(str(folder / "tensors.safetensors"))
        plan_meta = meta["plan"]
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{where} is unreadable ({exc}); delete the folder to search again from the checkpoints"
        ) from None
    start = {k[len(_START) :]: v for k, v in tensors.items() if k.startswith(_START)}
    masks = {k[len(_MASK) :]: v for k, v in tensors.items() if k.startswith(_MASK)}
    outcome = SearchOutcome(
        ticket=Ticket.load(ticket_path),
        search_epochs=int(meta["search_epochs"]),
        emerged=bool(meta["emerged"]),
        note=str(meta["note"]),
        weight_masks=masks or None,
        extra=dict(meta["extra"]),
    )
    plan = RetrainPlan(
        start_epoch=int(plan_meta["start_epoch"]),
        end_epoch=int(plan_meta["end_epoch"]),
        reinit=bool(plan_meta["reinit"]),
        start_state=start if plan_meta["has_start_state"] else None,
        lr=plan_meta["lr"],
        callbacks=[WeightMaskCallback(masks)] if masks else [],
    )
    return outcome, plan, meta["ledger"]
