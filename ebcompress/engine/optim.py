"""The optimiser and per-epoch learning-rate schedules of the paper's training recipes.

You et al. (ICLR 2020, Sec. 4.1) train with SGD, momentum 0.9 and weight decay 1e-4 on
every parameter (BatchNorm scales and biases included), lr 0.1 divided by 10 at 50 % and
75 % of the epochs. The schedule is a function of the epoch index, so a schedule can start
part-way: finetuning an Early-Bird ticket continues the dense schedule from the epoch at
which the ticket was drawn.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch
from torch import nn

from ebcompress.recipe import TrainConfig


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, lr: float | None = None
) -> torch.optim.Optimizer:
    """SGD with ``cfg``'s momentum, Nesterov flag and weight decay on all parameters.

    ``lr`` replaces ``cfg.lr`` as the base learning rate (e.g. ``retrain.lr``).
    """
    return torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr if lr is None else lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov and cfg.momentum > 0,
    )


@dataclass(frozen=True)
class EpochSchedule:
    """The factor multiplying the base lr while training epoch index ``e`` (0-based).

    ``multistep``: ``gamma ** (number of milestones <= e)``, so with milestones [80, 120]
    epochs 80..119 (0-based) run at 0.1x; ``cosine``: ``(1 + cos(pi e / epochs)) / 2``;
    ``constant``: 1. ``offset`` shifts the index so a schedule can start at a later epoch.
    """

    kind: str
    epochs: int
    milestones: tuple[int, ...]
    gamma: float
    offset: int = 0

    def __call__(self, step: int) -> float:
        epoch = step + self.offset
        if self.kind == "multistep":
            return self.gamma ** bisect.bisect_right(self.milestones, epoch)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(epoch, self.epochs) / self.epochs))
        if self.kind == "constant":
            return 1.0
        raise ValueError(f"unknown schedule {self.kind!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, start_epoch: int = 0
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-epoch schedule (call ``step()`` once after each epoch).

    ``start_epoch > 0`` continues the schedule from that epoch: the first epoch trained
    uses the lr the full schedule has at (0-based) index ``start_epoch``.
    """
    schedule = EpochSchedule(
        kind=cfg.schedule,
        epochs=cfg.epochs,
        milestones=tuple(cfg.milestones),
        gamma=cfg.gamma,
        offset=start_epoch,
    )
    # A plain function, not the dataclass: LambdaLR then keeps it out of its state_dict.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step))


def rebase_lr(scheduler: torch.optim.lr_scheduler.LRScheduler, base_lr: float) -> None:
    """Make ``base_lr`` the schedule's base from now on (``--resume --set train.lr=...``).

    A loaded optimizer state brings back the lr it was saved with; this recomputes every
    group's lr from the new base and the schedule's current position.
    """
    optimizer = scheduler.optimizer
    scheduler.base_lrs = [base_lr for _ in optimizer.param_groups]
    for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["initial_lr"] = base_lr
        group["lr"] = base_lr * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
