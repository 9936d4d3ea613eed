"""What one epoch of a phase reports (:class:`EpochStats`) and who hears it (:class:`Callback`)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Protocol

from torch import nn


@dataclass(frozen=True)
class EpochStats:
    """One epoch of one phase; ``epoch`` counts the schedule's completed epochs (1-based).

    ``seconds`` is the wall time of the epoch's training pass (evaluation excluded) and
    ``samples`` the training samples seen in it, summed over ranks. Losses and accuracies
    are exact means over all samples; ``test_loss`` is plain cross-entropy (no smoothing).
    ``ema_test_top1`` is the test top-1 of the weights' moving average (None without one;
    left out of :meth:`to_dict` then, so such lines read as before).
    """

    phase: str
    epoch: int
    lr: float
    train_loss: float
    train_top1: float
    test_loss: float
    test_top1: float
    test_top5: float
    seconds: float
    images_per_s: float
    samples: int
    ema_test_top1: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["ema_test_top1"] is None:
            del data["ema_test_top1"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochStats:
        """The stats of a :meth:`to_dict` line; fields added later may be absent."""
        return cls(
            **{f.name: data[f.name] for f in fields(cls) if f.name in data or f.default is MISSING}
        )

    def summary(self, last_epoch: int) -> str:
        ema = "" if self.ema_test_top1 is None else f" EMA top-1 {100 * self.ema_test_top1:.2f}%"
        return (
            f"{self.phase} {self.epoch}/{last_epoch}  lr {self.lr:.4g}  "
            f"train loss {self.train_loss:.4f} top-1 {100 * self.train_top1:.2f}%  "
            f"test loss {self.test_loss:.4f} top-1 {100 * self.test_top1:.2f}% "
            f"top-5 {100 * self.test_top5:.2f}%{ema}  {self.seconds:.1f}s "
            f"{self.images_per_s:,.0f} img/s"
        )


class Callback(Protocol):
    """Hooks into :class:`~ebcompress.engine.trainer.Trainer`. Every method is optional
    (looked up with getattr).

    ``after_backward(model)`` runs between backward and the optimiser step on the unwrapped
    model with unscaled gradients; ``end_of_epoch(epoch, stats)`` runs after evaluation and
    returns True to stop the phase; ``state_dict``/``load_state_dict`` travel in the
    checkpoint and must hold only weights_only-loadable values.
    """

    def after_backward(self, model: nn.Module) -> None: ...
    def end_of_epoch(self, epoch: int, stats: EpochStats) -> bool: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
