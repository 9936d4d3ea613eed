"""Has the network learned anything yet? The guard in front of Early-Bird emergence.

Early-Bird declares a ticket once the BN-scale masks stop moving (You et al., ICLR 2020,
Sec. 3.3). A network that does not learn (a learning rate far off, broken labels, an
augmentation that destroys the images) barely moves its BN scales either, so its masks are
stable from the first epochs and a "ticket" emerges from noise. :class:`LearningCheck` says
when the training metrics show the network has measurably learned; :class:`EarlyBird` counts
only masks drawn from then on.

The criterion, per epoch, on the training pass's own numbers:

- top-1 accuracy at least ``chance + margin * (1 - chance)`` (with the default margin 0.2 and
  10 balanced classes: 28 %, where a network at chance sits near 10 %); or, when only the loss
  is known,
- a loss at most ``(1 - margin)`` times the reference loss: ``ln(num_classes)`` (the
  cross-entropy of a uniform guess) when the class count is known, else the first recorded
  epoch's loss.

Once met it stays met: emergence needs a full window of masks drawn after that epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ebcompress.checks import check_instance, check_int, check_number
from ebcompress.errors import UserError

DEFAULT_MARGIN = 0.2


@dataclass
class LearningCheck:
    """Sticky "the network has learned" flag from per-epoch training metrics.

    ``chance`` is the top-1 accuracy of guessing (``1 / num_classes``, or the majority class's
    share on imbalanced data); None when unknown, then only the loss criterion applies.
    """

    chance: float | None = None
    num_classes: int | None = None
    margin: float = DEFAULT_MARGIN
    learned_epoch: int | None = None
    checked: bool = False  # whether any metric was ever given
    first_loss: float | None = None
    best_top1: float | None = None
    last_loss: float | None = None

    def __post_init__(self) -> None:
        if self.num_classes is not None and check_int(self.num_classes, "num_classes") < 2:
            raise UserError(f"num_classes={self.num_classes} must be >= 2 (or None: unknown)")
        if self.chance is not None:
            check_number(self.chance, "chance")
        if not 0 < check_number(self.margin, "learning margin") < 1:
            raise UserError(f"learning margin {self.margin!r} must lie in (0, 1), e.g. 0.2")
        if self.chance is None and self.num_classes:
            self.chance = 1.0 / self.num_classes
        if self.chance is not None and not 0 <= self.chance < 1:
            raise UserError(f"chance level {self.chance!r} must lie in [0, 1)")

    @property
    def learned(self) -> bool:
        return self.learned_epoch is not None

    @property
    def top1_needed(self) -> float | None:
        """The training top-1 that counts as learned, or None without a chance level."""
        if self.chance is None:
            return None
        return self.chance + self.margin * (1.0 - self.chance)

    @property
    def loss_needed(self) -> float | None:
        """The training loss that counts as learned, or None before any loss was seen."""
        reference = math.log(self.num_classes) if self.num_classes else self.first_loss
        return None if reference is None else (1.0 - self.margin) * reference

    def update(
        self, epoch: int, *, train_top1: float | None = None, train_loss: float | None = None
    ) -> bool:
        """Record one epoch's training metrics; True once the network has learned.

        ``train_top1`` is a fraction in [0, 1]. A top-1 without a known chance level (and no
        loss to fall back on) cannot be judged: a UserError, not a guard that never passes.
        Either metric may be a one-element tensor (read with ``.item()``); a non-finite loss
        (a diverged epoch) is not counted.
        """
        train_top1 = _metric(train_top1, "train_top1")
        train_loss = _metric(train_loss, "train_loss")
        if train_top1 is not None and not 0.0 <= train_top1 <= 1.0:
            raise UserError(
                f"train_top1={train_top1!r} must be a fraction in [0, 1] (divide a percentage "
                "by 100)"
            )
        if train_top1 is not None and self.chance is None and train_loss is None:
            raise UserError(
                "train_top1 needs a chance level: pass num_classes= or chance= to EarlyBird "
                "(its output is not one logit per class), or give train_loss= instead"
            )
        if train_top1 is not None:
            self.checked = True
            self.best_top1 = max(train_top1, self.best_top1 or 0.0)
        if train_loss is not None and math.isfinite(train_loss):
            self.checked = True
            self.first_loss = train_loss if self.first_loss is None else self.first_loss
            self.last_loss = train_loss
        if self.learned:
            return True
        needed_top1, needed_loss = self.top1_needed, self.loss_needed
        if train_top1 is not None and needed_top1 is not None:
            met = train_top1 >= needed_top1  # accuracy decides whenever it can
        elif train_loss is not None and needed_loss is not None:
            met = train_loss <= needed_loss
        else:
            met = False
        if met:
            self.learned_epoch = int(epoch)
        return met

    def describe(self) -> str:
        """Where the metrics stand against the criterion, for an error or a report line."""
        parts = []
        if self.best_top1 is not None and self.top1_needed is not None:
            needed = self.top1_needed
            parts.append(
                f"best train top-1 {self.best_top1:.1%}"
                + ("" if needed is None else f", needed {needed:.1%} (chance {self.chance:.1%})")
            )
        elif self.last_loss is not None:
            needed = self.loss_needed
            parts.append(
                f"train loss {self.last_loss:.3f}"
                + ("" if needed is None else f", needed <= {needed:.3f}")
            )
        return "; ".join(parts) or "no training metrics were given"

    def state_dict(self) -> dict[str, Any]:
        return {
            "chance": self.chance,
            "num_classes": self.num_classes,
            "margin": self.margin,
            "learned_epoch": self.learned_epoch,
            "checked": self.checked,
            "first_loss": self.first_loss,
            "best_top1": self.best_top1,
            "last_loss": self.last_loss,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output; a mistyped value is a TypeError naming it, and
        then nothing is restored."""
        check_instance(state, dict, "the learning state")
        epoch = state.get("learned_epoch")
        values = {"learned_epoch": None if epoch is None else check_int(epoch, "learned_epoch")}
        for key in ("first_loss", "best_top1", "last_loss"):
            value = state.get(key)
            values[key] = _metric(value, key)
        vars(self).update(values, checked=bool(state.get("checked")))


def _metric(value: object, name: str) -> float | None:
    """A training metric as a float (or None): a number, or a one-element tensor."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return check_number(value, name)
