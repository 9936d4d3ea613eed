"""One method, one run directory: search, ticket, slim, retrain, evaluate, export, report.

Each phase checkpoints as it goes, so ``resume=True`` continues a killed run where it stopped
and a finished phase is not run again. Only rank 0 writes. The run directory layout is the
one in docs/architecture.md::

    recipe.yaml  state.json  metrics.jsonl  masks/  ticket.json  checkpoints/  model/
    report.json  report.md  plots/
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ebcompress.channels.slim import slim
from ebcompress.channels.ticket import Ticket
from ebcompress.channels.zero_init import find_zero_init_bn
from ebcompress.cost.flops import FlopCount, TrainingLedger, count_flops
from ebcompress.data import DataSplit, load_data, skipped_images
from ebcompress.deploy.formats import ModelSpec, default_path, export, export_bundle
from ebcompress.earlybird.detector import ratios_differing_across_ranks
from ebcompress.engine import distributed as dist
from ebcompress.engine.divergence import DivergenceError
from ebcompress.engine.progress import log
from ebcompress.engine.trainer import Trainer
from ebcompress.errors import UserError
from ebcompress.methods.base import (
    Method,
    RetrainPlan,
    RunContext,
    SearchOutcome,
    chance_top1,
    get_method,
)
from ebcompress.models import build_model
from ebcompress.recipe import Recipe, TrainConfig
from ebcompress.report.build import write_report
from ebcompress.run.drift import check_resume
from ebcompress.run.lock import run_lock
from ebcompress.run.search_result import load_search_result, save_search_result
from ebcompress.run.state import (
    is_finished,
    prepare_run_dir,
    read_state,
    record_divergence,
    write_state,
)


def run_pipeline(
    recipe: Recipe,
    out_dir: str | os.PathLike[str],
    *,
    data_root: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = True,
    force_resume: bool = False,
) -> dict[str, Any]:
    """Run ``recipe.prune.method`` end to end into ``out_dir`` and return the report.

    A resume whose recipe changes the result is refused (:mod:`ebcompress.run.drift`)
    unless ``force_resume``; accepted changes go to ``recipe_history.jsonl``.

    ``resume`` on a finished run only rewrites its report (a run killed while drawing the
    plots has its results in state.json already).
    """
    run_dir = Path(out_dir)
    dev = _training_device(device)
    if dist.is_main():
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    dist.barrier()
    with run_lock(run_dir) if dist.is_main() else contextlib.nullcontext():
        if resume and is_finished(read_state(run_dir)):
            return write_report(run_dir) if dist.is_main() else {}
        try:
            if resume:
                _on_rank_0(lambda: check_resume(run_dir, recipe, force=force_resume))
            return _run(
                recipe, run_dir, data_root=data_root, resume=resume, dev=dev, progress=progress
            )
        except DivergenceError as exc:
            record_divergence(run_dir, str(exc))
            raise


def _run(
    recipe: Recipe,
    run_dir: Path,
    *,
    data_root: str | None,
    resume: bool,
    dev: torch.device,
    progress: bool,
) -> dict[str, Any]:
    method = get_method(recipe.prune.method)
    if dist.is_main():
        (run_dir / "recipe.yaml").write_text(recipe.to_yaml(), encoding="utf-8")
    data = load_data(recipe.data, root=data_root, seed=recipe.seed)
    input_size = (data.in_chans, data.image_size, data.image_size)

    def build_dense(seed_offset: int = 0) -> nn.Module:
        torch.manual_seed(recipe.seed + seed_offset)
        net = build_model(recipe.model.name, data.num_classes, data.in_chans, **recipe.model.kwargs)
        return net.to(dev)

    model = build_dense()
    zero_init = find_zero_init_bn(model)
    if zero_init:
        log(
            f"{len(zero_init)} BatchNorm(s) of {recipe.model.name} start with all scales 0 "
            f"(zero-init, e.g. {zero_init[0]}); BN-scale rankings (EB, network slimming) leave "
            "them out of their groups' importance, so they cannot sink those groups"
        )
    example_inputs = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0)).to(dev)
    dense_cost = _first_forward(recipe, model, input_size)
    ledger = TrainingLedger()
    run = RunContext(
        recipe=recipe,
        data=data,
        model=model,
        example_inputs=example_inputs,
        run_dir=run_dir,
        ledger=ledger,
        device=dev,
        dense_macs=dense_cost.macs,
        resume=resume,
        progress=progress,
        build_dense=lambda: build_dense(seed_offset=1),
        initial_state={k: v.detach().clone() for k, v in model.state_dict().items()},
    )
    write_state(run_dir, {"status": "search", "method": method.key})
    _seed_phase(recipe.seed, "search")
    outcome, plan = _search(method, run)
    slim_model = _slim_for_retrain(run, outcome, plan)
    slim_cost = count_flops(slim_model, input_size)
    write_state(run_dir, {"status": "retrain", "method": method.key})
    _seed_phase(recipe.seed, "retrain")
    trainer = Trainer(
        slim_model,
        data,
        _retrain_schedule(recipe.train, plan),
        phase="retrain",
        start_epoch=plan.start_epoch,
        end_epoch=plan.end_epoch,
        lr=plan.lr or recipe.retrain.lr,
        precision=recipe.retrain.precision,
        callbacks=plan.callbacks,
        run_dir=run_dir,
        device=dev,
        seed=recipe.seed,
        ledger=ledger,
        macs_per_sample=slim_cost.macs,
        progress=progress,
        num_workers=recipe.data.num_workers,
    )
    history = trainer.fit(resume=resume)
    final = trainer.evaluate()
    if not dist.is_main():
        return {}
    spec = ModelSpec(
        arch=recipe.model.name,
        build_kwargs=dict(recipe.model.kwargs),
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        input_size=input_size,
        mean=tuple(data.mean),
        std=tuple(data.std),
    )
    unwrapped = dist.unwrap(slim_model)
    export_bundle(unwrapped, run_dir / "model", spec=spec, ticket=outcome.ticket)
    for fmt in recipe.export.formats:
        if fmt != "bundle":
            export(
                unwrapped,
                default_path(run_dir / "model", fmt),
                format=fmt,
                spec=spec,
                ticket=outcome.ticket,
                example_inputs=example_inputs,
                opset=recipe.export.opset,
                dynamic_batch=recipe.export.dynamic_batch,
            )
    results = _results(recipe, method.key, outcome, plan, data, ledger, history, final)
    skipped = skipped_images(data)
    results["data"].update(
        chance_top1=chance_top1(data), skipped_images=len(skipped), skipped_files=skipped[:20]
    )
    results["model"] = {
        "name": recipe.model.name,
        "input_size": list(input_size),
        "dense": dense_cost.to_dict(),
        "slim": slim_cost.to_dict(),
        "mac_reduction": dense_cost.macs / max(slim_cost.macs, 1),
        "param_reduction": dense_cost.params / max(slim_cost.params, 1),
    }
    results["cost"]["dense_reference_flops"] = ledger.dense_reference(
        dense_cost.macs, len(data.train), recipe.train.epochs
    )
    results["cost"]["saving_vs_dense"] = results["cost"]["dense_reference_flops"] / max(
        ledger.total_flops, 1
    )
    write_state(run_dir, {"status": "finished", "method": method.key, "results": results})
    return write_report(run_dir)


def _search(method: Method, run: RunContext) -> tuple[SearchOutcome, RetrainPlan]:
    """The method's search and retrain plan, or, on a resume past the search, what it saved
    (:mod:`ebcompress.run.search_result`): a ticket is never computed twice for one run."""
    run_dir = run.run_dir
    saved = load_search_result(run_dir) if run.resume and dist.is_main() else None
    saved = dist.broadcast_object(saved) if dist.is_initialized() else saved
    if saved is not None:
        outcome, plan, ledger = saved
        run.ledger.restore(ledger)
        log(
            f"search already finished: its ticket and retrain start are read from "
            f"{run_dir / 'search_result'}"
        )
        return outcome, plan
    outcome = method.search(run)
    _check_ranks_agree(outcome.ticket, run.device)
    plan = method.retrain_plan(run, outcome)
    if dist.is_main():
        outcome.ticket.save(run_dir / "ticket.json")
        start = None
        if not plan.reinit:
            start = plan.start_state or dist.unwrap(run.model).state_dict()
        save_search_result(run_dir, outcome, plan, start, run.ledger)
    return outcome, plan


def _check_ranks_agree(ticket: Ticket, device: torch.device) -> None:
    """Every data-parallel rank must retrain the same ticket (EB checks every epoch's masks;
    the baselines' tickets are checked here)."""
    if ratios_differing_across_ranks({ticket.ratio: ticket.mask()}, device):
        raise UserError(
            f"data-parallel ranks drew different tickets at p={ticket.ratio:g}; every rank must "
            "train the same replica (average BatchNorm statistics, seed the data the same)"
        )


def _on_rank_0(check: Callable[[], object]) -> None:
    """Run ``check`` on rank 0; its UserError is raised on every rank, so none of them goes
    on into collectives the others never reach."""
    message = None
    if dist.is_main():
        try:
            check()
        except UserError as exc:
            message = str(exc)
    if dist.is_initialized():
        message = dist.broadcast_object(message)
    if message is not None:
        raise UserError(message)


def _training_device(device: str | None) -> torch.device:
    """``--device`` (default: cuda when available) checked before anything is written."""
    name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: ebcompress trains on cpu or cuda")
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(f"--device {name!r}: CUDA is not available here; use --device cpu")
        if parsed.index is not None and parsed.index >= count:
            raise UserError(f"--device {name!r}: this machine has CUDA devices 0..{count - 1}")
    return parsed


def _first_forward(recipe: Recipe, model: nn.Module, input_size: tuple[int, int, int]) -> FlopCount:
    """The dense cost, from the model's first forward pass, where a model that cannot take the
    data's input size fails (e.g. too many poolings for data.image_size)."""
    try:
        return count_flops(model, input_size)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        shape = "x".join(map(str, input_size))
        raise UserError(
            f"model {recipe.model.name!r} cannot run on {shape} inputs ({reason}); "
            "check data.image_size and model.kwargs"
        ) from exc


def _seed_phase(seed: int, phase: str) -> None:
    """Seed the global RNGs at a phase boundary, so a run resumed there draws what an
    uninterrupted one would (inside a phase the checkpoint carries the RNG states)."""
    offset = {"search": 0, "retrain": 1_000_003}[phase]
    torch.manual_seed(seed + offset)
    np.random.seed((seed + offset) % 2**32)
    random.seed(seed + offset)


def _slim_for_retrain(run: RunContext, outcome: SearchOutcome, plan: RetrainPlan) -> nn.Module:
    """The network the retrain phase starts from: slimmed to the ticket, weights per the plan."""
    model = dist.unwrap(run.model)
    if plan.reinit:
        if run.build_dense is None:
            raise RuntimeError("reinit needs RunContext.build_dense")
        model = run.build_dense()
    elif plan.start_state is not None:
        model.load_state_dict(plan.start_state)
    model.train()
    return slim(model, outcome.ticket, run.example_inputs)


def _retrain_schedule(train: TrainConfig, plan: RetrainPlan) -> TrainConfig:
    """The dense schedule, or the same shape scaled onto a window that ends elsewhere."""
    if plan.end_epoch == train.epochs:
        return train
    scale = plan.end_epoch / train.epochs
    milestones = sorted({max(1, round(m * scale)) for m in train.milestones} - {plan.end_epoch})
    milestones = [m for m in milestones if m < plan.end_epoch]
    return train.model_copy(update={"epochs": plan.end_epoch, "milestones": milestones})


def _results(
    recipe: Recipe,
    method_key: str,
    outcome: SearchOutcome,
    plan: RetrainPlan,
    data: DataSplit,
    ledger: TrainingLedger,
    history: list[Any],
    final: dict[str, Any],
) -> dict[str, Any]:
    ticket = outcome.ticket
    return {
        "run": recipe.name,
        "method": method_key,
        "seed": recipe.seed,
        "data": {"name": data.name, "train": len(data.train), "test": len(data.test)},
        "ticket": {
            "ratio": ticket.ratio,
            "epoch": ticket.epoch,
            "emerged": outcome.emerged,
            "note": outcome.note,
            "pruned_fraction": ticket.pruned_fraction,
            "num_channels": ticket.num_channels,
            "num_kept": ticket.num_kept,
        },
        "search": {"epochs": outcome.search_epochs, **outcome.extra},
        "retrain": {
            "mode": "reinit" if plan.reinit else "inherit",
            "schedule": "restart" if plan.start_epoch == 0 else "continue",
            "start_epoch": plan.start_epoch,
            "end_epoch": plan.end_epoch,
            "epochs": plan.end_epoch - plan.start_epoch,
            "history_epochs": len(history),
        },
        "accuracy": {
            "test_top1": final["top1"],
            "test_top5": final["top5"],
            "test_loss": final["loss"],
        },
        "cost": ledger.to_dict(),
    }
