"""One method, one run directory: search, ticket, slim, retrain, evaluate, export, report.

Each phase checkpoints as it goes, so ``resume=True`` continues a killed run where it stopped
and a finished phase is not run again. Only rank 0 writes. The run directory's files are
named in :mod:`ebcompress.run.paths` (the layout of docs/architecture.md); the results go to
``state.json`` as :class:`~ebcompress.run.results.RunResults`.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ebcompress.atomic import write_text_atomic
from ebcompress.channels.slim import slim
from ebcompress.channels.ticket import Ticket
from ebcompress.channels.zero_init import find_zero_init_bn
from ebcompress.cost.flops import FlopCount, TrainingLedger, count_flops
from ebcompress.data import DataSplit, load_data, skipped_images
from ebcompress.deploy.formats import ModelSpec, default_path, export, export_bundle
from ebcompress.engine import distributed as dist
from ebcompress.engine.distill import Distillation
from ebcompress.engine.divergence import DivergenceError
from ebcompress.engine.progress import log
from ebcompress.errors import UserError
from ebcompress.methods.base import (
    RetrainPlan,
    RunContext,
    SearchOutcome,
    chance_top1,
    get_method,
)
from ebcompress.methods.data import data_options
from ebcompress.methods.training import build_trainer
from ebcompress.models import build_model
from ebcompress.recipe import Recipe
from ebcompress.report.build import write_report
from ebcompress.run.distill_teacher import build_file_teacher, distill_summary, distillation
from ebcompress.run.drift import check_resume
from ebcompress.run.init_weights import describe_init, init_summary, with_init_checksum
from ebcompress.run.lock import run_lock
from ebcompress.run.paths import RunPaths
from ebcompress.run.results import (
    Accuracy,
    CostSummary,
    DataSummary,
    ModelSummary,
    RetrainSummary,
    RunResults,
    SearchSummary,
    TicketSummary,
)
from ebcompress.run.search_result import search_or_resume
from ebcompress.run.state import (
    RunState,
    existing_state,
    prepare_run_dir,
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
    shared_search_dir: Path | None = None,
) -> dict[str, Any]:
    """Run ``recipe.prune.method`` end to end into ``out_dir`` and return the report.

    ``shared_search_dir``: the folder of a dense search phase several runs share
    (:attr:`RunContext.shared_search_dir`, for the methods whose catalogue entry shares
    ``"dense"``).

    A resume whose recipe changes the result is refused (:mod:`ebcompress.run.drift`)
    unless ``force_resume``; accepted changes go to ``recipe_history.jsonl``.

    ``resume`` on a finished run only rewrites its report (a run killed while drawing the
    plots has its results in state.json already).
    """
    run_dir = Path(out_dir)
    dev = training_device(device)
    if dist.is_main():
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    dist.barrier()
    with run_lock(run_dir) if dist.is_main() else contextlib.nullcontext():
        state = existing_state(run_dir) if resume else None
        if state is not None and state.finished:
            return write_report(run_dir) if dist.is_main() else {}
        try:
            recipe = with_init_checksum(recipe)  # recipe.yaml records model.init's sha256
            if resume:
                _on_rank_0(lambda: check_resume(run_dir, recipe, force=force_resume))
            if dist.is_main():
                write_text_atomic(RunPaths(run_dir).recipe, recipe.to_yaml())
            run, dense_cost = start_run(
                recipe, run_dir, data_root=data_root, resume=resume, device=dev, progress=progress
            )
            run.shared_search_dir = shared_search_dir
            return _run(run, dense_cost)
        except DivergenceError as exc:
            record_divergence(run_dir, str(exc))
            raise


def _run(run: RunContext, dense_cost: FlopCount) -> dict[str, Any]:
    """The phases in order: search, retrain, export, results and report."""
    run_dir, key = run.run_dir, run.recipe.prune.method
    method = get_method(key)
    write_state(run_dir, RunState(status="search", method=key))
    file_teacher = build_file_teacher(run)  # a file that does not fit stops before the search
    seed_phase(run.recipe.seed, "search")
    outcome, plan = search_or_resume(method, run)
    # before slimming, which may load another start into run.model
    distill = distillation(run, outcome, file_teacher)
    slim_model = _slim_for_retrain(run, outcome, plan)
    write_state(run_dir, RunState(status="retrain", method=key))
    retrained = _retrain(run, slim_model, plan, distill)
    if not dist.is_main():
        return {}
    _export(run, retrained.model, outcome.ticket)
    results = _results(run, key, outcome, plan, dense_cost, retrained)
    write_state(run_dir, RunState(status="finished", method=key, results=results))
    return write_report(run_dir)


def _input_size(data: DataSplit) -> tuple[int, int, int]:
    return (data.in_chans, data.image_size, data.image_size)


def start_run(
    recipe: Recipe,
    run_dir: Path,
    *,
    data_root: str | None,
    resume: bool,
    device: torch.device,
    progress: bool,
) -> tuple[RunContext, FlopCount]:
    """The data, the dense model and its forward cost, and the context every phase shares
    (nothing is written: the caller owns ``run_dir``)."""
    data = load_data(data_options(recipe.data), root=data_root, seed=recipe.seed)
    input_size = _input_size(data)

    def build_dense(seed_offset: int = 0) -> nn.Module:
        torch.manual_seed(recipe.seed + seed_offset)
        # model.init is the dense start; reinit (offset 1) re-initialises randomly, unloaded
        init = recipe.model.init if seed_offset == 0 else None
        m = recipe.model
        net = build_model(m.name, data.num_classes, data.in_chans, init=init, **m.kwargs)
        return net.to(device)

    model = build_dense()
    started = init_summary(recipe, model)
    if started is not None:
        log(describe_init(started))
    zero_init = find_zero_init_bn(model)
    if zero_init:
        log(
            f"{len(zero_init)} BatchNorm(s) of {recipe.model.name} start with all scales 0 "
            f"(zero-init, e.g. {zero_init[0]}); BN-scale rankings (EB, network slimming) leave "
            "them out of their groups' importance, so they cannot sink those groups"
        )
    generator = torch.Generator().manual_seed(0)
    example_inputs = torch.randn(1, *input_size, generator=generator).to(device)
    dense_cost = _first_forward(recipe, model, input_size)
    run = RunContext(
        recipe=recipe,
        data=data,
        model=model,
        example_inputs=example_inputs,
        run_dir=run_dir,
        ledger=TrainingLedger(),
        device=device,
        dense_macs=dense_cost.macs,
        resume=resume,
        progress=progress,
        build_dense=lambda: build_dense(seed_offset=1),
        # the weights LT rewinds to: the initialisation, or the loaded model.init
        initial_state={k: v.detach().clone() for k, v in model.state_dict().items()},
    )
    return run, dense_cost


class _Retrained(NamedTuple):
    model: nn.Module
    cost: FlopCount  # the slim network's forward cost
    history_epochs: int  # epochs in the phase's history, the restored ones included
    final: dict[str, Any]  # the test metrics after retraining
    teacher: tuple[int, float] | None  # the distillation teacher's MACs and top-1 (None: none)


def _retrain(
    run: RunContext, slim_model: nn.Module, plan: RetrainPlan, distill: Distillation | None
) -> _Retrained:
    """Retrain the slim network per the plan (resumable), with ``distill``'s teacher if any,
    and evaluate it."""
    recipe, data, dev, run_dir, ledger = run.recipe, run.data, run.device, run.run_dir, run.ledger
    progress = run.progress
    slim_cost = count_flops(slim_model, _input_size(data))
    seed_phase(recipe.seed, "retrain")
    trainer = build_trainer(
        slim_model,
        data,
        recipe,
        "retrain",
        device=dev,
        run_dir=run_dir,
        progress=progress,
        ledger=ledger,
        macs_per_sample=slim_cost.macs,
        plan=plan,
        distill=distill,
    )
    history = trainer.fit(resume=run.resume)
    final = trainer.evaluate()
    teacher = None
    if distill is not None:  # the report compares the teacher with its student
        teacher = (distill.macs_per_sample, trainer.evaluate(distill.teacher)["top1"])
    return _Retrained(slim_model, slim_cost, len(history), final, teacher)


def _export(run: RunContext, model: nn.Module, ticket: Ticket) -> None:
    """The slim model as a bundle in ``model/``, plus the recipe's other export formats."""
    recipe, data = run.recipe, run.data
    folder = RunPaths(run.run_dir).model
    spec = ModelSpec(
        arch=recipe.model.name,
        build_kwargs=dict(recipe.model.kwargs),
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        input_size=_input_size(data),
        mean=tuple(data.mean),
        std=tuple(data.std),
    )
    unwrapped = dist.unwrap(model)
    export_bundle(unwrapped, folder, spec=spec, ticket=ticket)
    for fmt in recipe.export.formats:
        if fmt != "bundle":
            export(
                unwrapped,
                default_path(folder, fmt),
                format=fmt,
                spec=spec,
                ticket=ticket,
                example_inputs=run.example_inputs,
                opset=recipe.export.opset,
                dynamic_batch=recipe.export.dynamic_batch,
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


def training_device(device: str | None) -> torch.device:
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
    except (RuntimeError, UserError) as exc:  # UserError: count_flops's check that it runs
        cause = exc.__cause__ or exc  # the layer's own complaint
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        shape = "x".join(map(str, input_size))
        raise UserError(
            f"model {recipe.model.name!r} cannot run on {shape} inputs ({reason}); "
            "check data.image_size and model.kwargs"
        ) from exc


def seed_phase(seed: int, phase: str) -> None:
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


def _results(
    run: RunContext,
    method_key: str,
    outcome: SearchOutcome,
    plan: RetrainPlan,
    dense_cost: FlopCount,
    retrained: _Retrained,
) -> RunResults:
    recipe, data, ticket, final = run.recipe, run.data, outcome.ticket, retrained.final
    skipped = skipped_images(data)
    search = dict(outcome.extra)
    return RunResults(
        run=recipe.name,
        method=method_key,
        seed=recipe.seed,
        data=DataSummary(
            name=data.name,
            train=len(data.train),
            test=len(data.test),
            chance_top1=chance_top1(data),
            skipped_images=len(skipped),
            skipped_files=tuple(skipped[:20]),
        ),
        ticket=TicketSummary(
            ratio=ticket.ratio,
            epoch=ticket.epoch,
            emerged=outcome.emerged,
            note=outcome.note,
            pruned_fraction=ticket.pruned_fraction,
            num_channels=ticket.num_channels,
            num_kept=ticket.num_kept,
        ),
        search=SearchSummary(
            epochs=outcome.search_epochs,
            emerged_epochs=search.pop("emerged_epochs", None),
            window_max_distances=search.pop("window_max_distances", None),
            extra=search,
        ),
        retrain=RetrainSummary(
            mode="reinit" if plan.reinit else "inherit",
            schedule="restart" if plan.start_epoch == 0 else "continue",
            start_epoch=plan.start_epoch,
            end_epoch=plan.end_epoch,
            history_epochs=retrained.history_epochs,
            distill=distill_summary(run.recipe, retrained.teacher),
        ),
        accuracy=Accuracy(
            test_top1=final["top1"], test_top5=final["top5"], test_loss=final["loss"]
        ),
        cost=CostSummary(
            ledger=run.ledger,
            dense_reference_flops=run.ledger.dense_reference(
                dense_cost.macs, len(data.train), recipe.train.epochs
            ),
        ),
        model=ModelSummary(
            name=recipe.model.name,
            input_size=_input_size(data),
            dense=dense_cost,
            slim=retrained.cost,
        ),
        init=init_summary(recipe, run.model),
    )
