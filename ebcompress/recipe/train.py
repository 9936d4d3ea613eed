"""The recipe's ``train`` section: the dense schedule, with timm's optimizers and schedules
(names checked against timm's registry when a recipe is validated)."""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    field_validator,
    model_validator,
)

from ebcompress.engine.preemption import parse_checkpoint_every
from ebcompress.recipe.sections import Precision, _Section


def _timm_optimizer(name: str) -> str:
    """``name`` is in timm's optimizer registry and first-order (its class loads here)."""
    if name != "sgd":  # the default needs no timm import
        _optimizer_class(name)
    return name


def _optimizer_class(name: str) -> Any:
    import timm.optim

    if name not in (known := timm.optim.list_optimizers()):
        raise ValueError(f"{name!r} is not in timm's optimizer registry: {', '.join(known)}")
    if (info := timm.optim.get_optimizer_info(name)).second_order:
        raise ValueError(f"{name!r} needs second-order gradients, which the engine does not take")
    try:
        return timm.optim.get_optimizer_class(info, bind_defaults=False)
    except (ImportError, AssertionError) as exc:  # bitsandbytes / apex absent, or no CUDA
        raise ValueError(f"{name!r} cannot be loaded here ({exc or type(exc).__name__})") from None


def _check_optimizer_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """``kwargs`` are arguments of ``name``'s class, and none has a train field of its own."""
    if own := sorted({"lr", "momentum", "weight_decay", "nesterov", "params"} & set(kwargs)):
        raise ValueError(f"optimizer_kwargs {own}: set train.{own[0]} instead")
    params = inspect.signature(_optimizer_class(name)).parameters if kwargs else {}
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if not open_ended and (unknown := sorted(set(kwargs) - set(params))):
        takes = ", ".join(p for p in params if p not in ("self", "params"))
        raise ValueError(f"optimizer_kwargs {unknown}: {name} takes {takes}")


class EmaSection(_Section):
    """``train.ema``: a moving average of the weights (timm's ``ModelEmaV3``), evaluated and
    reported beside the live model in every phase; the mask and the slim network come from
    the live weights."""

    decay: float = Field(gt=0, lt=1)
    warmup: bool = False
    warmup_power: float = Field(2 / 3, gt=0)


class TrainConfig(_Section):
    """The dense schedule. Milestones are epochs, as in the paper (80, 120 of 160); the
    optimiser and schedule are timm's (:mod:`ebcompress.engine.optim`)."""

    epochs: int = Field(160, ge=1)
    batch_size: int = Field(256, ge=1)
    optimizer: Annotated[str, AfterValidator(_timm_optimizer)] = "sgd"
    optimizer_kwargs: dict[str, Any] = Field(default_factory=dict)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    filter_bias_and_bn: bool = False
    nesterov: bool = False
    schedule: Literal["multistep", "step", "cosine", "constant"] = "multistep"
    milestones: list[int] = Field(default_factory=lambda: [80, 120])
    gamma: float = Field(0.1, gt=0, le=1)
    decay_epochs: int | None = Field(None, ge=1)
    warmup_epochs: int = Field(0, ge=0)
    warmup_lr: float = Field(1e-5, ge=0)
    min_lr: float = Field(0.0, ge=0)
    precision: Precision = "fp32"
    channels_last: bool = False
    sync_bn: bool = False
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # Mid-epoch checkpoints: steps (500, "500steps") or wall time ("30min"); None: per epoch.
    checkpoint_every: int | str | None = None
    ema: EmaSection | None = None

    @field_validator("checkpoint_every", mode="before")
    @classmethod
    def _checkpoint_interval(cls, value: Any) -> Any:
        # Before pydantic's coercion, so true or 1.5 get the message naming the forms too.
        parse_checkpoint_every(value)  # ValueError naming the accepted forms
        return value

    @model_validator(mode="after")
    def _schedule_and_optimizer_consistent(self) -> TrainConfig:
        bad = [m for m in self.milestones if not 0 < m < self.epochs]
        if bad:
            raise ValueError(
                f"milestones {bad} must lie strictly between 0 and epochs={self.epochs}"
            )
        if sorted(self.milestones) != self.milestones:
            raise ValueError(f"milestones {self.milestones} must be increasing")
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs={self.warmup_epochs} must be < epochs={self.epochs}")
        if self.schedule == "step" and self.decay_epochs is None:
            raise ValueError("schedule step multiplies the lr by gamma every decay_epochs; set it")
        if self.nesterov and self.optimizer != "sgd":
            raise ValueError(f"nesterov applies to optimizer sgd, not {self.optimizer!r}")
        _check_optimizer_kwargs(self.optimizer, self.optimizer_kwargs)
        return self
