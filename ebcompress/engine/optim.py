"""A phase's optimiser and per-epoch learning-rate schedule, built by timm's factories.

You et al. (ICLR 2020, Sec. 4.1) train with SGD, momentum 0.9 and weight decay 1e-4 on
every parameter (BatchNorm scales and biases included), lr 0.1 divided by 10 at 50 % and
75 % of the epochs; those are :class:`OptimConfig`'s defaults (with milestones). Any other
optimiser of timm's registry (``create_optimizer_v2``: ``adamw``, ``lamb``, ``rmsprop``, ...)
and timm's ``step`` and ``cosine`` schedules with a linear warmup and a floor
(``create_scheduler_v2``) are one field away. The defaults build exactly the optimiser and
learning rates of the engine's earlier hand-written SGD and schedules (tests/engine/
test_optim.py trains both and compares the weights bit for bit).

The schedule is a function of the 0-based epoch index, stepped once per epoch, so a schedule
can start part-way: finetuning an Early-Bird ticket continues the dense schedule from the
epoch at which the ticket was drawn. These are the engine's own config types; the shell
builds them from ``recipe.train``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ebcompress.errors import UserError

SCHEDULES = ("multistep", "step", "cosine", "constant")


@dataclass(frozen=True)
class OptimConfig:
    """An optimiser of timm's registry by ``name`` (default ``sgd``, the paper's).

    ``lr`` is the base learning rate, ``weight_decay`` applies to every parameter unless
    ``filter_bias_and_bn`` (timm's switch: no decay on biases, norm scales, every 1-d
    parameter and a timm model's ``no_weight_decay()`` names). ``momentum`` goes to the
    optimisers that have one (SGD, RMSprop, ...). ``nesterov`` applies to ``sgd`` only and
    only with ``momentum > 0``: unlike timm's ``sgd``, ours is plain momentum SGD unless asked.
    ``kwargs`` are the optimiser's own arguments (``betas``, ``eps``, ...).
    """

    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    name: str = "sgd"
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    filter_bias_and_bn: bool = False


@dataclass(frozen=True)
class ScheduleConfig:
    """A per-epoch schedule of ``epochs`` epochs: the lr while training epoch index ``e``.

    ``multistep``: the base lr times ``gamma ** (number of milestones <= e)``, so with
    milestones (80, 120) epochs 80..119 (0-based) run at 0.1x (torch's MultiStepLR
    convention; timm's applies a milestone one epoch earlier, so it is handed ``m + 1``);
    ``step``: times ``gamma ** (e // decay_epochs)``; ``cosine``: from the base down to
    ``min_lr`` at ``e = epochs``; ``constant``: the base. ``warmup_epochs`` > 0 replaces the
    first epochs by timm's linear ramp from ``warmup_lr`` (at ``e = 0``) towards the base.
    UserError for another ``kind``, ``epochs < 1``, a warmup not shorter than the schedule or
    ``step`` without ``decay_epochs``.
    """

    epochs: int
    kind: str = "multistep"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    decay_epochs: int | None = None
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise UserError(
                f"schedule {self.kind!r} is not known; use one of {', '.join(SCHEDULES)}"
            )
        if self.epochs < 1:
            raise UserError(f"schedule epochs={self.epochs}: a schedule needs at least 1 epoch")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise UserError(
                f"schedule warmup_epochs={self.warmup_epochs} must lie in [0, epochs="
                f"{self.epochs}) (train.warmup_epochs)"
            )
        if self.kind == "step" and not (self.decay_epochs or 0) >= 1:
            raise UserError(
                "schedule 'step' multiplies the lr by gamma every decay_epochs epochs; set "
                "train.decay_epochs"
            )


def build_optimizer(model: nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """``optim``'s optimiser on ``model``'s trainable parameters, through timm's
    ``create_optimizer_v2``; a name or argument it refuses is a one-line UserError."""
    from timm.optim import create_optimizer_v2

    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in optim.kwargs.items()}
    if optim.name == "sgd":  # timm's "sgd" defaults to Nesterov; the paper's is not
        kwargs["nesterov"] = optim.nesterov and optim.momentum > 0
    elif optim.nesterov:
        raise UserError(
            f"train.nesterov applies to optimizer 'sgd', not {optim.name!r}; timm's "
            "'nesterov' optimizer is SGD with Nesterov momentum"
        )
    # Without the filter, one group of the trainable parameters in model order, as torch's
    # SGD was always given; timm groups a module's parameters itself only to filter them.
    trainable = [p for p in model.parameters() if p.requires_grad]
    params = model if optim.filter_bias_and_bn else trainable
    try:
        return create_optimizer_v2(
            params,
            opt=optim.name,
            lr=optim.lr,
            weight_decay=optim.weight_decay,
            momentum=optim.momentum,
            filter_bias_and_bn=optim.filter_bias_and_bn,
            **kwargs,
        )
    except (TypeError, ValueError, ImportError, AssertionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(
            f"train.optimizer {optim.name!r} with optimizer_kwargs {dict(optim.kwargs)} cannot "
            f"be built: {first}"
        ) from None


def _timm_scheduler(optimizer: torch.optim.Optimizer, schedule: ScheduleConfig) -> Any:
    """timm's scheduler for ``schedule``, stepped with 0-based epoch indices."""
    from timm.scheduler import create_scheduler_v2

    if schedule.kind == "multistep":
        # timm applies milestone m from index m - 1 (its historical convention), ours from m.
        sched, extra = "multistep", {"decay_milestones": [m + 1 for m in schedule.milestones]}
        extra["decay_rate"] = schedule.gamma
    elif schedule.kind == "step":
        sched, extra = "step", {"decay_epochs": schedule.decay_epochs, "decay_rate": schedule.gamma}
    elif schedule.kind == "constant":  # timm's own "constant" is this, and newer than timm 1.0
        sched, extra = "step", {"decay_epochs": 1, "decay_rate": 1.0}
    else:
        sched, extra = "cosine", {}
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=sched,
        num_epochs=schedule.epochs,
        min_lr=schedule.min_lr,
        warmup_lr=schedule.warmup_lr,
        warmup_epochs=schedule.warmup_epochs,
        **extra,
    )
    return scheduler


class EpochSchedule:
    """``schedule`` driving ``optimizer``'s lr, stepped once after each epoch (:meth:`step`).

    ``epoch`` is the 0-based index of the next epoch to train; it starts at ``start_epoch``
    (a phase continuing the schedule part-way trains index ``start_epoch`` first). The state
    dict holds the position and the base lrs only: the schedule itself is code, rebuilt from
    the config, so a checkpoint holds only numbers. The LambdaLR state of checkpoints
    written before the timm schedules still loads (its ``last_epoch`` counted the epochs
    stepped since ``start_epoch``).
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, start_epoch: int = 0
    ) -> None:
        self.optimizer, self.schedule, self.start_epoch = optimizer, schedule, start_epoch
        self.epoch = start_epoch
        self._build()

    def _build(self) -> None:
        # timm reads each group's "initial_lr" (set once from its lr) as the base.
        self._timm = _timm_scheduler(self.optimizer, self.schedule)
        self._timm.step(self.epoch)

    @property
    def base_lrs(self) -> list[float]:
        return [group["initial_lr"] for group in self.optimizer.param_groups]

    def step(self) -> None:
        """One epoch trained: set the lr of the next."""
        self.epoch += 1
        self._timm.step(self.epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "base_lrs": self.base_lrs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output, or an earlier version's LambdaLR state."""
        legacy = "lr_lambdas" in state
        epoch = self.start_epoch + state["last_epoch"] if legacy else state["epoch"]
        self._rebase(list(state["base_lrs"]), epoch)

    def rebase(self, base_lr: float) -> None:
        """Make ``base_lr`` the schedule's base from now on (``--resume --set train.lr=...``):
        every group's lr is recomputed from it at the current position, warmup included."""
        self._rebase([base_lr] * len(self.optimizer.param_groups), self.epoch)

    def _rebase(self, base_lrs: list[float], epoch: int) -> None:
        for group, base in zip(self.optimizer.param_groups, base_lrs, strict=True):
            group["initial_lr"] = base
        self.epoch = epoch
        self._build()


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: ScheduleConfig, start_epoch: int = 0
) -> EpochSchedule:
    """The per-epoch schedule (call ``step()`` once after each epoch). ``start_epoch > 0``
    continues the schedule from that epoch: the first epoch trained uses the lr the full
    schedule has at (0-based) index ``start_epoch``."""
    return EpochSchedule(optimizer, schedule, start_epoch)
