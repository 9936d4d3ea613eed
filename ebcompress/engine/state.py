"""What a phase's checkpoint holds, as types: :class:`TrainerState` and a stopped epoch.

:meth:`TrainerState.to_checkpoint` gives the dict :func:`~ebcompress.engine.checkpoint.
save_checkpoint` writes and :meth:`TrainerState.from_checkpoint` reads one back; the keys
are the checkpoint format (``format: 1``), so checkpoints written by earlier versions resume.
A checkpoint written inside an epoch also holds a :class:`PartialEpoch`: the step reached
and, per rank, the per-step losses, hits and batch sizes so far with the RNG states there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ebcompress.engine.stats import EpochStats
from ebcompress.errors import UserError

if TYPE_CHECKING:
    from timm.utils import ModelEmaV3

CHECKPOINT_FORMAT = 1


@dataclass
class RankProgress:
    """One rank's part of an epoch stopped after some steps: one value per step so far
    (``losses``, ``corrects`` on the CPU; ``batch_sizes``), the training seconds spent and
    the RNG states (:func:`~ebcompress.engine.checkpoint.capture_rng_state`) at that step."""

    losses: torch.Tensor
    corrects: torch.Tensor
    batch_sizes: list[int]
    seconds: float
    rng: dict[str, Any]

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "losses": self.losses,
            "corrects": self.corrects,
            "batch_sizes": list(self.batch_sizes),
            "seconds": self.seconds,
            "rng": self.rng,
        }

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> RankProgress:
        return cls(
            losses=saved["losses"],
            corrects=saved["corrects"],
            batch_sizes=list(saved["batch_sizes"]),
            seconds=float(saved["seconds"]),
            rng=saved["rng"],
        )


@dataclass
class PartialEpoch:
    """``epoch`` (1-based) stopped after ``step`` of its ``steps`` steps; ``ranks[r]`` is
    rank ``r``'s :class:`RankProgress`."""

    epoch: int
    step: int
    steps: int
    ranks: list[RankProgress]

    def to_checkpoint(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "steps": self.steps,
            "ranks": [rank.to_checkpoint() for rank in self.ranks],
        }

    @classmethod
    def from_checkpoint(cls, saved: dict[str, Any]) -> PartialEpoch:
        return cls(
            epoch=saved["epoch"],
            step=saved["step"],
            steps=saved["steps"],
            ranks=[RankProgress.from_checkpoint(rank) for rank in saved["ranks"]],
        )

    def check_resumable(self, world: int, steps: int, where: Path) -> None:
        """UserError unless this epoch can be continued exactly by ``world`` processes
        whose epochs have ``steps`` steps."""
        if len(self.ranks) != world:
            saved = len(self.ranks)
            raise UserError(
                f"checkpoint {where} stopped inside epoch {self.epoch} with {saved} "
                f"process(es); resume with {saved} (torchrun --nproc_per_node={saved}) to "
                "continue it exactly"
            )
        if self.steps != steps:
            raise UserError(
                f"checkpoint {where} stopped at step {self.step} of {self.steps} of epoch "
                f"{self.epoch}, but an epoch now has {steps} steps; resume with the batch "
                "size and data it was written with"
            )


@dataclass
class TrainerState:
    """Everything a phase resumes from. ``epoch``: the epochs completed (on the schedule);
    ``finished``: the phase reached its end or stopped early (``stopped_early``: a callback
    stopped it); ``base_lr``: the lr the schedule was based on; the state dicts of model,
    optimiser, scheduler, gradient scaler (None without one) and precision policy; the RNG
    states; the ledger's dict (None without a ledger); each callback's state (None where it
    has none); the epochs' stats; ``partial`` for a checkpoint inside an epoch; and ``ema``,
    the weights' moving average (:func:`ema_state`; None without one: the key is then left
    out, as in checkpoints written before it existed)."""

    phase: str
    start_epoch: int
    epoch: int
    finished: bool
    stopped_early: bool
    base_lr: float
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None
    precision: dict[str, Any]
    rng: dict[str, Any]
    ledger: dict[str, Any] | None
    callbacks: list[dict[str, Any] | None]
    history: list[EpochStats]
    partial: PartialEpoch | None = None
    ema: dict[str, Any] | None = None

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict (weights_only-loadable values only)."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "phase": self.phase,
            "start_epoch": self.start_epoch,
            "epoch": self.epoch,
            "finished": self.finished,
            "stopped_early": self.stopped_early,
            "base_lr": self.base_lr,
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "precision": self.precision,
            "rng": self.rng,
            "ledger": self.ledger,
            "callbacks": self.callbacks,
            "history": [stats.to_dict() for stats in self.history],
        }
        if self.partial is not None:
            state["partial"] = self.partial.to_checkpoint()
        if self.ema is not None:
            state["ema"] = self.ema
        return state

    @classmethod
    def from_checkpoint(
        cls, state: dict[str, Any], *, phase: str, start_epoch: int, where: Path
    ) -> TrainerState:
        """The state in checkpoint dict ``state`` (read from ``where``); UserError when it is
        not a checkpoint of ``phase`` or continues a schedule from another start epoch."""
        if state.get("format") != CHECKPOINT_FORMAT or state.get("phase") != phase:
            raise UserError(f"checkpoint {where} is not a phase-{phase!r} checkpoint")
        if state["start_epoch"] != start_epoch:
            raise UserError(
                f"checkpoint {where} continues a schedule from epoch {state['start_epoch']}, "
                f"not {start_epoch}; delete it to restart the phase"
            )
        partial = state.get("partial")
        return cls(
            phase=state["phase"],
            start_epoch=state["start_epoch"],
            epoch=state["epoch"],
            finished=state["finished"],
            stopped_early=state["stopped_early"],
            base_lr=state["base_lr"],
            model=state["model"],
            optimizer=state["optimizer"],
            scheduler=state["scheduler"],
            scaler=state["scaler"],
            precision=state.get("precision") or {},
            rng=state["rng"],
            ledger=state["ledger"],
            callbacks=list(state["callbacks"]),
            history=[EpochStats.from_dict(entry) for entry in state["history"]],
            partial=None if partial is None else PartialEpoch.from_checkpoint(partial),
            ema=state.get("ema"),
        )


def ema_state(ema: ModelEmaV3) -> dict[str, Any]:
    """What a checkpoint holds of timm's ``ModelEmaV3``: the averaged state dict and its
    private stochastic-rounding generator (used for bfloat16 averages)."""
    return {"module": ema.module.state_dict(), "generator": ema._sr_generator.get_state()}


def load_ema_state(ema: ModelEmaV3, saved: dict[str, Any]) -> None:
    """Put :func:`ema_state` output back into ``ema``."""
    ema.module.load_state_dict(saved["module"])
    ema._sr_generator.set_state(saved["generator"])
