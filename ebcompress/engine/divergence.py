"""Spotting a diverged training run (a NaN/inf loss) without stalling the accelerator.

Reading a loss on the host every step forces the host to wait for the device each time.
:class:`NonFiniteWatch` keeps the per-step losses on the device and looks at them every few
dozen steps, reading each answer one look late, when the device finished it long ago.
"""

from __future__ import annotations

import torch

from ebcompress.engine import distributed
from ebcompress.errors import UserError


class DivergenceError(UserError):
    """The training loss became NaN/inf; the run directory keeps the last good checkpoint."""


class NonFiniteWatch:
    """The first step of an epoch whose loss was NaN/inf, found without stalling the device.

    :meth:`poll` folds the losses since its last call into a running minimum on the device
    (reduced over ranks; every rank must poll at the same steps) and starts copying it to the
    host; it returns what the *previous* poll copied, which the device finished long ago. So
    a bad step is reported exactly, at most one poll late. :meth:`finish` reads at once.
    """

    def __init__(self, steps: int, device: torch.device) -> None:
        self.steps = steps
        self.first = torch.full((1,), steps, dtype=torch.int64, device=device)
        self.folded = 0
        self.pending: tuple[torch.Tensor, torch.cuda.Event | None] | None = None

    def _fold(self, losses: list[torch.Tensor]) -> None:
        window = torch.stack(losses[self.folded :])
        index = torch.arange(self.folded, len(losses), device=window.device)
        bad = torch.where(torch.isfinite(window), self.steps, index).min().view(1)
        self.first = distributed.all_reduce_min(torch.minimum(self.first, bad))
        self.folded = len(losses)

    def _copy_to_host(self) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        if not self.first.is_cuda:
            return self.first.cpu(), None
        event = torch.cuda.Event()
        host = self.first.to("cpu", non_blocking=True)
        event.record()
        return host, event

    def _read(self, pending: tuple[torch.Tensor, torch.cuda.Event | None]) -> int | None:
        host, event = pending
        if event is not None:
            event.synchronize()
        value = int(host[0])
        return None if value >= self.steps else value

    def poll(self, losses: list[torch.Tensor]) -> int | None:
        found = None if self.pending is None else self._read(self.pending)
        self._fold(losses)
        self.pending = self._copy_to_host()
        return found

    def finish(self, losses: list[torch.Tensor]) -> int | None:
        if len(losses) > self.folded:
            self._fold(losses)
        return self._read(self._copy_to_host())
