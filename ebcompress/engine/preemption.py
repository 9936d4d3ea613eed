"""Stopping a training phase cleanly: mid-epoch checkpoint cadence and SIGTERM / SIGINT.

:func:`parse_checkpoint_every` reads ``train.checkpoint_every`` (``500`` or ``"500steps"``:
every 500 steps of an epoch; ``"90s"``, ``"30min"``, ``"2h"``: whenever that much wall time
passed since the last checkpoint). :class:`StopSignals` turns SIGTERM (a scheduler's
preemption notice) and SIGINT (Ctrl-C) into a flag the training loop reads after each step,
so the step in flight finishes, a checkpoint is written and :class:`Preempted` (a
:class:`~ebcompress.errors.UserError`: one line, CLI exit status 2) tells how to resume.
"""

from __future__ import annotations

import re
import signal
import threading
from types import FrameType, TracebackType
from typing import Any, NamedTuple

from ebcompress.errors import UserError

__all__ = ["CheckpointEvery", "Preempted", "StopSignals", "parse_checkpoint_every"]

_EVERY = re.compile(r"^\s*(\d+)\s*(steps?|s|sec|min|h)\s*$", re.IGNORECASE)
_SECONDS = {"s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0}
_HANDLED = (signal.SIGTERM, signal.SIGINT)


class CheckpointEvery(NamedTuple):
    """When to checkpoint inside an epoch: every ``steps`` steps, or every ``seconds``."""

    steps: int | None = None
    seconds: float | None = None


def parse_checkpoint_every(value: int | str | None) -> CheckpointEvery:
    """``train.checkpoint_every`` as a :class:`CheckpointEvery`; ValueError naming the forms.

    None means no mid-epoch checkpoints (an empty ``CheckpointEvery``).
    """
    if value is None:
        return CheckpointEvery()
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= 1:
            return CheckpointEvery(steps=value)
    elif isinstance(value, str) and (match := _EVERY.match(value)):
        count, unit = int(match.group(1)), match.group(2).lower()
        if count >= 1:
            if unit.startswith("step"):
                return CheckpointEvery(steps=count)
            return CheckpointEvery(seconds=count * _SECONDS[unit])
    raise ValueError(
        f"{value!r} is not a checkpoint interval; give steps (500 or '500steps') or a "
        "duration ('90s', '30min', '2h'), at least 1"
    )


class Preempted(UserError):
    """Training stopped on a signal after writing a checkpoint; ``--resume`` continues."""


class StopSignals:
    """While entered, SIGTERM and SIGINT set :attr:`signum` instead of killing the process.

    The previous handlers are put back on exit. A second SIGINT raises KeyboardInterrupt at
    once (a user pressing Ctrl-C twice wants out now). Outside the main thread Python cannot
    install handlers, so then nothing is installed and :attr:`signum` stays 0.
    """

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    @property
    def name(self) -> str:
        """SIGTERM, SIGINT, or "a signal" when none arrived here (another rank's)."""
        return signal.Signals(self.signum).name if self.signum else "a signal on another rank"

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in _HANDLED:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
