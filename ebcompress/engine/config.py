"""What one training phase is configured with: :class:`TrainerConfig`.

The engine's own type, so the engine never sees the recipe schema: the shell builds it from a
recipe (:func:`ebcompress.methods.training.build_trainer`), your own code can build it
directly. Frozen: a config describes a phase; what changes while it trains (weights,
optimiser, history, the ledger) lives in the :class:`~ebcompress.engine.trainer.Trainer`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ebcompress.cost.energy import EnergyCounter
from ebcompress.engine.optim import OptimConfig, ScheduleConfig
from ebcompress.engine.preemption import CheckpointEvery
from ebcompress.errors import UserError


@dataclass(frozen=True)
class EmaConfig:
    """An exponential moving average of the weights (timm's ``ModelEmaV3``), updated after
    every optimiser step: ``ema = decay * ema + (1 - decay) * live`` over every float entry
    of the state dict (BatchNorm statistics included). The first update copies the live
    weights. ``warmup`` ramps the decay up as ``1 - (1 + step) ** -warmup_power`` (capped at
    ``decay``), timm's ``use_warmup``, for short runs where 0.9998 would barely move."""

    decay: float
    warmup: bool = False
    warmup_power: float = 2 / 3

    def __post_init__(self) -> None:
        if not 0 < self.decay < 1:
            raise UserError(f"train.ema.decay {self.decay} must lie in (0, 1), e.g. 0.9998")
        if self.warmup_power <= 0:
            raise UserError(f"train.ema.warmup_power {self.warmup_power} must be > 0")


@dataclass(frozen=True)
class TrainerConfig:
    """One phase: epochs ``start_epoch+1 .. end_epoch`` of ``schedule``, optimiser per ``optim``.

    ``end_epoch`` None trains to the schedule's last epoch (:attr:`final_epoch`); a
    ``start_epoch`` outside ``[0, final_epoch]`` is a UserError. ``precision`` names a
    policy of :mod:`ebcompress.engine.precision`; ``sync_bn`` turns BatchNorm into
    SyncBatchNorm under DDP (CUDA only); ``label_smoothing`` applies to the training loss.

    With a ``run_dir`` the phase appends to ``run_dir/metrics.jsonl`` and checkpoints to
    ``run_dir/checkpoints/<phase>/last.pt`` after every epoch and, per
    ``checkpoint_every``, inside one; without one nothing is written and signals are left to
    the caller. ``seed`` fixes the data order of every epoch (with ``num_workers`` loader
    processes). ``macs_per_sample`` (forward MACs of one sample) is needed when the trainer
    books a ledger; ``energy_counters`` replaces the counters found on this machine (empty:
    measure nothing). ``ema`` (None: none) keeps an :class:`EmaConfig` average of the
    weights beside the live ones; it is evaluated every epoch and checkpointed, while the
    callbacks, the returned model and the checkpoint's ``model`` stay the live weights.
    """

    phase: str
    batch_size: int
    optim: OptimConfig
    schedule: ScheduleConfig
    start_epoch: int = 0
    end_epoch: int | None = None
    precision: str = "fp32"
    channels_last: bool = False
    sync_bn: bool = False
    label_smoothing: float = 0.0
    checkpoint_every: CheckpointEvery = CheckpointEvery()
    device: str | torch.device = "cpu"
    seed: int = 0
    num_workers: int = 0
    run_dir: str | os.PathLike[str] | None = None
    progress: bool = True
    macs_per_sample: int | None = None
    energy_counters: Sequence[EnergyCounter] | None = None
    ema: EmaConfig | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.start_epoch <= self.final_epoch:
            raise UserError(
                f"phase {self.phase!r}: start epoch {self.start_epoch} must lie in "
                f"[0, {self.final_epoch}] (check train.epochs / retrain.epochs)"
            )

    @property
    def final_epoch(self) -> int:
        """The last epoch this phase trains (1-based, counted on the schedule)."""
        return self.schedule.epochs if self.end_epoch is None else self.end_epoch

    @property
    def checkpoint_path(self) -> Path | None:
        """``checkpoints/<phase>/last.pt`` in the run directory; None without one."""
        return (
            None
            if self.run_dir is None
            else Path(self.run_dir, "checkpoints", self.phase, "last.pt")
        )

    @property
    def metrics_path(self) -> Path | None:
        """The run directory's ``metrics.jsonl``; None without one."""
        return None if self.run_dir is None else Path(self.run_dir, "metrics.jsonl")
