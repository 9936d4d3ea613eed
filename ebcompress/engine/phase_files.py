"""One phase's files in the run directory: its checkpoint and its lines of metrics.jsonl.

Only rank 0 writes; :meth:`PhaseFiles.read` hands rank 0's checkpoint to every rank, since
the other machines of a multi-node run need not see its disk. Without a run directory
nothing is read or written. The one-line messages that point at the checkpoint (a diverged
loss, a signal) are built here, where its location is known.
"""

from __future__ import annotations

from typing import Any

from ebcompress.engine import distributed
from ebcompress.engine.checkpoint import load_checkpoint, remove_checkpoints, save_checkpoint
from ebcompress.engine.config import TrainerConfig
from ebcompress.engine.divergence import DivergenceError
from ebcompress.engine.metrics_file import append_entry, truncate_phase
from ebcompress.engine.preemption import Preempted
from ebcompress.engine.state import TrainerState
from ebcompress.engine.stats import EpochStats


class PhaseFiles:
    """``checkpoints/<phase>/last.pt`` and ``metrics.jsonl`` of ``config``'s run directory.

    ``saved_epoch`` is the epoch of the newest checkpoint this phase wrote or resumed from.
    """

    def __init__(self, config: TrainerConfig) -> None:
        self.phase = config.phase
        self.checkpoint_path = config.checkpoint_path
        self.metrics_path = config.metrics_path
        self.saved_epoch: int | None = None

    @property
    def enabled(self) -> bool:
        """True with a run directory: checkpoints are written and signals stop cleanly."""
        return self.checkpoint_path is not None

    def read(self) -> dict[str, Any] | None:
        """Rank 0's newest checkpoint dict on every rank (collective under DDP); None when
        there is none or no run directory."""
        if not self.enabled:
            return None
        state = load_checkpoint(self.checkpoint_path) if distributed.is_main() else None
        return distributed.broadcast_object(state)

    def start_afresh(self, keep_through: int) -> None:
        """A fresh phase: drop its old checkpoints and its metrics lines after ``keep_through``
        (a fresh run must never fall back to a stale checkpoint)."""
        if self.enabled and distributed.is_main():
            remove_checkpoints(self.checkpoint_path)
            truncate_phase(self.metrics_path, self.phase, keep_through=keep_through)

    def resumed(self, epoch: int) -> None:
        """The phase continues from its checkpoint of ``epoch``: metrics lines written after
        it (before a crash that lost the checkpoint) are dropped, so none appears twice."""
        self.saved_epoch = epoch
        if self.enabled and distributed.is_main():
            truncate_phase(self.metrics_path, self.phase, keep_through=epoch)

    def record(self, stats: EpochStats, state: TrainerState) -> None:
        """Append the epoch to metrics.jsonl, then checkpoint ``state`` (call on rank 0)."""
        append_entry(self.metrics_path, stats.to_dict())
        save_checkpoint(state.to_checkpoint(), self.checkpoint_path)
        self.saved_epoch = stats.epoch

    def save(self, state: TrainerState) -> None:
        """Checkpoint ``state`` (one stopped inside an epoch; call on rank 0)."""
        save_checkpoint(state.to_checkpoint(), self.checkpoint_path)

    def diverged(self, epoch: int, step: int, steps: int) -> DivergenceError:
        """The error for a NaN/inf loss at 0-based ``step`` of ``steps`` of ``epoch``."""
        kept = (
            f"the last good checkpoint (epoch {self.saved_epoch}) is kept in "
            f"{self.checkpoint_path.parent}; "
            if self.saved_epoch is not None
            else ""
        )
        return DivergenceError(
            f"phase {self.phase!r}: the training loss became NaN/inf at epoch {epoch}, "
            f"step {step + 1} of {steps}; {kept}lower the learning rate and continue with "
            "`--resume --set train.lr=...`"
        )

    def stopped(self, signal_name: str, where: str) -> Preempted:
        """The error after a signal stopped the phase ``where`` and a checkpoint was saved."""
        saved = f"checkpoint saved in {self.checkpoint_path.parent}"
        return Preempted(f"stopped by {signal_name} {where}; {saved}; continue with --resume")
