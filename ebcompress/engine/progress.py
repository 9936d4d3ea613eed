"""Training progress: live bars on a terminal, one plain line per epoch otherwise.

On a terminal :class:`TrainingProgress` shows an epoch bar and a batch bar (loss, top-1,
images/s, ETA) with rich, and prints each epoch's summary line above them. When stdout is
a pipe or a file it prints only the summary lines. Ranks other than 0 print nothing.
:func:`log` prints a message above a live bar (or plainly), e.g. a callback's mask distance.
"""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from ebcompress.engine import distributed

_live: Progress | None = None


def log(message: str) -> None:
    """Print one message on rank 0, above the live progress bars when they are shown."""
    if not distributed.is_main():
        return
    if _live is not None:
        _live.console.print(message, markup=False, highlight=False)
    else:
        print(message, flush=True)


class TrainingProgress:
    """Progress of one phase's epochs ``first_epoch..last_epoch`` (1-based, inclusive).

    Use as a context manager. ``enabled=False`` silences everything but :func:`log`.
    """

    def __init__(self, phase: str, first_epoch: int, last_epoch: int, enabled: bool = True):
        self.phase = phase
        self.first_epoch = first_epoch
        self.last_epoch = last_epoch
        self.enabled = enabled and distributed.is_main()
        self._bars: Progress | None = None
        self._epoch_task: TaskID | None = None
        self._batch_task: TaskID | None = None

    def __enter__(self) -> TrainingProgress:
        global _live
        if self.enabled and sys.stdout.isatty() and _live is None:
            self._bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=Console(file=sys.stdout),
                transient=True,
            )
            self._bars.start()
            _live = self._bars
            self._epoch_task = self._bars.add_task(
                f"{self.phase} epochs",
                total=self.last_epoch - self.first_epoch + 1,
                info="",
            )
            self._batch_task = self._bars.add_task("batches", total=None, info="")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _live
        if self._bars is not None:
            self._bars.stop()
            _live = None
            self._bars = None

    @property
    def live(self) -> bool:
        """True while bars are shown (running metrics are worth computing only then)."""
        return self._bars is not None

    def begin_epoch(self, epoch: int, batches: int) -> None:
        if self._bars is not None:
            self._bars.reset(
                self._batch_task,
                total=batches,
                description=f"epoch {epoch}/{self.last_epoch}",
                info="",
            )

    def advance(self) -> None:
        """One more batch done (cheap: call every step)."""
        if self._bars is not None:
            self._bars.advance(self._batch_task)

    def show_metrics(self, loss: float, top1: float, images_per_s: float) -> None:
        """Running metrics of the current epoch (call every second or so)."""
        if self._bars is not None:
            info = f"loss {loss:.4f}  top-1 {100 * top1:.2f}%  {images_per_s:,.0f} img/s"
            self._bars.update(self._batch_task, info=info)

    def end_epoch(self, summary: str) -> None:
        """Print the epoch's summary line and advance the epoch bar."""
        if not self.enabled:
            return
        log(summary)
        if self._bars is not None:
            self._bars.advance(self._epoch_task)
