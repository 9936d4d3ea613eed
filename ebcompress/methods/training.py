"""The shell's one way to build the engine's :class:`~ebcompress.engine.trainer.Trainer`.

The engine takes its own config types (:class:`~ebcompress.engine.config.TrainerConfig`,
:class:`~ebcompress.engine.optim.OptimConfig`, :class:`~ebcompress.engine.optim.
ScheduleConfig`) and never reads a recipe; here ``recipe.train``, ``recipe.retrain``,
``recipe.seed`` and ``recipe.data.num_workers`` become them (``train.ema`` applies to the
retraining too). Every trainer the shell runs is
built by :func:`build_trainer`: each method's dense search (``train_dense``), the pipeline's
retraining, and the benchmarks' dense references and retrained tickets. It also adds what the
shell reports around the engine: a line per epoch that skipped unreadable images.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

from ebcompress.data import DataSplit, skipped_images
from ebcompress.engine.config import EmaConfig, TrainerConfig
from ebcompress.engine.distill import Distillation
from ebcompress.engine.optim import OptimConfig, ScheduleConfig
from ebcompress.engine.preemption import parse_checkpoint_every
from ebcompress.engine.progress import log
from ebcompress.engine.stats import Callback, EpochStats
from ebcompress.engine.trainer import Trainer
from ebcompress.recipe import Recipe, TrainConfig

if TYPE_CHECKING:
    from ebcompress.cost.flops import TrainingLedger


class RetrainWindow(Protocol):
    """What :func:`build_trainer` reads of a retrain plan
    (:class:`~ebcompress.methods.base.RetrainPlan` is one)."""

    start_epoch: int
    end_epoch: int
    lr: float | None
    callbacks: list[Any]


class _SkippedImagesLine:
    """Engine callback: one line after each epoch that skipped unreadable images
    (``data.skip_bad_images``), naming the first new one."""

    def __init__(self, data: DataSplit) -> None:
        self.data = data
        self.seen: set[str] = set()

    def end_of_epoch(self, epoch: int, stats: EpochStats) -> bool:
        new = [path for path in skipped_images(self.data) if path not in self.seen]
        if new:
            self.seen.update(new)
            log(
                f"{stats.phase} epoch {epoch}: skipped {len(new)} unreadable image(s), e.g. "
                f"{new[0]} ({len(self.seen)} so far); remove or replace them"
            )
        return False


def optim_config(train: TrainConfig, lr: float | None = None) -> OptimConfig:
    """``train``'s optimiser; ``lr`` replaces ``train.lr`` as the base learning rate."""
    return OptimConfig(
        lr=train.lr if lr is None else lr,
        momentum=train.momentum,
        weight_decay=train.weight_decay,
        nesterov=train.nesterov,
        name=train.optimizer,
        kwargs=dict(train.optimizer_kwargs),
        filter_bias_and_bn=train.filter_bias_and_bn,
    )


def schedule_config(train: TrainConfig) -> ScheduleConfig:
    """``train``'s per-epoch learning-rate schedule."""
    return ScheduleConfig(
        epochs=train.epochs,
        kind=train.schedule,
        milestones=tuple(train.milestones),
        gamma=train.gamma,
        decay_epochs=train.decay_epochs,
        warmup_epochs=train.warmup_epochs,
        warmup_lr=train.warmup_lr,
        min_lr=train.min_lr,
    )


def retrain_schedule(train: TrainConfig, end_epoch: int) -> TrainConfig:
    """The dense schedule, or the same shape scaled onto a window ending at ``end_epoch``:
    milestones, the step interval and the warmup scaled by ``end_epoch / train.epochs``
    (a warmup keeps at least one epoch and leaves at least one after it)."""
    if end_epoch == train.epochs:
        return train
    scale = end_epoch / train.epochs
    milestones = sorted({max(1, round(m * scale)) for m in train.milestones} - {end_epoch})
    milestones = [m for m in milestones if m < end_epoch]
    warmup = train.warmup_epochs and min(max(1, round(train.warmup_epochs * scale)), end_epoch - 1)
    decay = train.decay_epochs and max(1, round(train.decay_epochs * scale))
    return train.model_copy(
        update={
            "epochs": end_epoch,
            "milestones": milestones,
            "warmup_epochs": warmup,
            "decay_epochs": decay,
        }
    )


def build_trainer(
    model: nn.Module,
    data: DataSplit,
    recipe: Recipe,
    phase: str,
    *,
    device: str | torch.device,
    run_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    ledger: TrainingLedger | None = None,
    macs_per_sample: int | None = None,
    end_epoch: int | None = None,
    plan: RetrainWindow | None = None,
    distill: Distillation | None = None,
) -> Trainer:
    """A trainer for ``phase`` of ``recipe`` on ``model`` and ``data``.

    Without ``plan`` it trains ``recipe.train``'s dense schedule, up to ``end_epoch``
    (default: its end). With a retrain ``plan`` it trains the plan's window of the schedule
    (:func:`retrain_schedule`) at the plan's lr, else ``retrain.lr``, else ``train.lr``, in
    ``retrain.precision``, with the plan's callbacks before ``callbacks``. ``run_dir`` (None:
    nothing written) holds the phase's checkpoints and metrics; ``ledger`` books the cost of
    ``macs_per_sample`` forward MACs per sample. ``distill`` (retraining only) adds its
    teacher's soft targets to the loss and its forward MACs to the ledger.
    """
    if distill is not None and plan is None:
        raise ValueError("build_trainer: distillation applies to a retraining (give its plan)")
    train, start_epoch, lr, precision = recipe.train, 0, None, recipe.train.precision
    planned: list[Any] = []
    if plan is not None:
        if end_epoch is not None:
            raise ValueError("build_trainer: a retrain plan sets the end epoch itself")
        train = retrain_schedule(recipe.train, plan.end_epoch)
        start_epoch, end_epoch = plan.start_epoch, plan.end_epoch
        lr, precision = plan.lr or recipe.retrain.lr, recipe.retrain.precision
        planned = plan.callbacks
    # The shell's own callback comes last, so every other callback's state keeps its place
    # in the checkpoints of earlier versions.
    callbacks = [*planned, *callbacks, _SkippedImagesLine(data)]
    config = TrainerConfig(
        phase=phase,
        batch_size=train.batch_size,
        optim=optim_config(train, lr),
        schedule=schedule_config(train),
        start_epoch=start_epoch,
        end_epoch=end_epoch,
        precision=precision,
        channels_last=train.channels_last,
        sync_bn=train.sync_bn,
        label_smoothing=train.label_smoothing,
        checkpoint_every=parse_checkpoint_every(train.checkpoint_every),
        device=device,
        seed=recipe.seed,
        num_workers=recipe.data.num_workers,
        run_dir=run_dir,
        progress=progress,
        macs_per_sample=macs_per_sample,
        ema=None if train.ema is None else EmaConfig(**train.ema.model_dump()),
    )
    return Trainer(model, data, config, callbacks=callbacks, ledger=ledger, distill=distill)
