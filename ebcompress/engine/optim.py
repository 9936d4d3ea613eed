"""The optimiser and per-epoch learning-rate schedules of the paper's training recipes.

You et al. (ICLR 2020, Sec. 4.1) train with SGD, momentum 0.9 and weight decay 1e-4 on
every parameter (BatchNorm scales and biases included), lr 0.1 divided by 10 at 50 % and
75 % of the epochs; those are :class:`OptimConfig`'s defaults. The schedule is a function of
the epoch index, so a schedule can start part-way: finetuning an Early-Bird ticket continues
the dense schedule from the epoch at which the ticket was drawn.

These are the engine's own config types; the shell builds them from ``recipe.train``.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch
from torch import nn

from ebcompress.errors import UserError

SCHEDULES = ("multistep", "cosine", "constant")


@dataclass(frozen=True)
class OptimConfig:
    """SGD: base learning rate, momentum, weight decay (on every parameter), Nesterov.

    ``nesterov`` only takes effect with ``momentum > 0`` (SGD refuses it otherwise).
    """

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False


@dataclass(frozen=True)
class ScheduleConfig:
    """A per-epoch schedule of ``epochs`` epochs: the factor on the base lr per epoch index.

    ``multistep``: ``gamma ** (number of milestones <= e)`` at 0-based epoch index ``e``, so
    with milestones (80, 120) epochs 80..119 (0-based) run at 0.1x; ``cosine``:
    ``(1 + cos(pi e / epochs)) / 2``; ``constant``: 1. UserError for another ``kind`` or
    ``epochs < 1``.
    """

    epochs: int
    kind: str = "multistep"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise UserError(
                f"schedule {self.kind!r} is not known; use one of {', '.join(SCHEDULES)}"
            )
        if self.epochs < 1:
            raise UserError(f"schedule epochs={self.epochs}: a schedule needs at least 1 epoch")

    def factor(self, epoch: int) -> float:
        """The factor multiplying the base lr while training 0-based epoch index ``epoch``."""
        if self.kind == "multistep":
            return self.gamma ** bisect.bisect_right(self.milestones, epoch)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(epoch, self.epochs) / self.epochs))
        return 1.0


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """SGD per ``optim`` on all of ``model``'s trainable parameters."""
    return torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=optim.lr,
        momentum=optim.momentum,
        weight_decay=optim.weight_decay,
        nesterov=optim.nesterov and optim.momentum > 0,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, start_epoch: int = 0
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-epoch schedule (call ``step()`` once after each epoch).

    ``start_epoch > 0`` continues the schedule from that epoch: the first epoch trained
    uses the lr the full schedule has at (0-based) index ``start_epoch``.
    """
    # A plain function, not a bound method or callable object: LambdaLR then keeps it out of
    # its state_dict, so checkpoints hold only numbers.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule.factor(step + start_epoch)
    )


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
