"""The training and evaluation loop every phase runs: dense search, retraining, baselines.

One :class:`Trainer` trains one phase (epochs ``start_epoch+1 .. end_epoch`` of a schedule,
as its :class:`~ebcompress.engine.config.TrainerConfig` says) with its optimiser (SGD by
default) and cross-entropy, evaluates after every epoch with exact top-1/top-5 counts, calls
the callbacks (the Early-Bird detector, the BN-L1 regulariser of network slimming), and,
given a run directory, writes ``metrics.jsonl`` and an atomic checkpoint per epoch from which
:meth:`Trainer.fit` resumes bit-exactly (the shuffle order of epoch ``e`` is a function of
``(seed, e)``, and every RNG state is checkpointed).

``checkpoint_every`` adds checkpoints inside an epoch, and SIGTERM / SIGINT during
:meth:`Trainer.fit` finish the step in flight, write one and raise
:class:`~ebcompress.engine.preemption.Preempted`; such an epoch resumes at its next step
(:mod:`ebcompress.engine.loop`).

Under ``torchrun`` the model is wrapped in DistributedDataParallel, metrics are summed over
ranks before they are divided, and only rank 0 writes files or prints (and reads checkpoints,
which it broadcasts). Each epoch's training pass is metered with the hardware energy counters
(:mod:`ebcompress.cost.energy`): the ledger gets the joules summed over ranks, or None ("not
measured") when some rank's work is not covered by a counter. Energy is never estimated.

The pieces: :mod:`~ebcompress.engine.prepare` (device, SyncBN, precision, DDP, optimiser),
:mod:`~ebcompress.engine.loaders`, :mod:`~ebcompress.engine.loop` (one epoch),
:mod:`~ebcompress.engine.state` (what a checkpoint holds) and
:mod:`~ebcompress.engine.phase_files` (the checkpoint and metrics files); this module wires
them into phases.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from ebcompress.cost.energy import EnergyMeter
from ebcompress.engine import distributed
from ebcompress.engine.checkpoint import capture_rng_state, restore_rng_state
from ebcompress.engine.config import TrainerConfig
from ebcompress.engine.distill import Distillation
from ebcompress.engine.loaders import Loaders, TrainingData
from ebcompress.engine.loop import EpochLoop
from ebcompress.engine.optim import EpochSchedule
from ebcompress.engine.phase_files import PhaseFiles
from ebcompress.engine.preemption import StopSignals
from ebcompress.engine.prepare import prepare_training
from ebcompress.engine.progress import TrainingProgress, log
from ebcompress.engine.state import PartialEpoch, TrainerState, ema_state, load_ema_state
from ebcompress.engine.stats import Callback, EpochStats
from ebcompress.errors import UserError

if TYPE_CHECKING:
    from ebcompress.cost.flops import TrainingLedger

__all__ = ["Callback", "EpochStats", "Trainer", "TrainerConfig"]


class Trainer:
    """Trains ``model`` on ``data`` for the phase ``config`` describes; see the module
    docstring for what it writes.

    ``callbacks`` hook into every step and epoch (:class:`~ebcompress.engine.stats.
    Callback`). ``ledger`` receives the phase's training cost after every epoch, with the
    measured joules; it needs ``config.macs_per_sample``. ``distill`` trains against a
    frozen teacher's outputs too (:mod:`ebcompress.engine.distill`), whose forward the
    ledger charges.

    With ``config.sync_bn`` under DDP (CUDA only) the BatchNorm layers are SyncBatchNorm while
    :meth:`fit` runs; afterwards the model holds its own BatchNorm modules again, which share
    the trained parameters and statistics.
    """

    def __init__(
        self,
        model: nn.Module,
        data: TrainingData,
        config: TrainerConfig,
        *,
        callbacks: Sequence[Callback] = (),
        ledger: TrainingLedger | None = None,
        distill: Distillation | None = None,
    ) -> None:
        if ledger is not None and config.macs_per_sample is None:
            raise ValueError("Trainer: a ledger needs macs_per_sample (see flops.count_flops)")
        if ledger is not None and distill is not None and distill.macs_per_sample is None:
            raise ValueError("Trainer: a ledger needs the teacher's Distillation.macs_per_sample")
        self.config, self.ledger = config, ledger
        self.callbacks = list(callbacks)
        self.prepared = prepare_training(model, config)
        if distill is not None:
            distill.to(self.prepared.device, self.prepared.memory_format)
        self.loaders = Loaders(
            data,
            batch_size=config.batch_size,
            seed=config.seed,
            num_workers=config.num_workers,
            pin_memory=self.prepared.device.type == "cuda",
        )
        self.files = PhaseFiles(config)
        self.loop = EpochLoop(
            self.prepared,
            self.loaders,
            config,
            num_classes=data.num_classes,
            callbacks=self.callbacks,
            ledger=ledger,
            files=self.files,
            save_partial=lambda partial: self.files.save(self._capture(False, partial)),
            distill=distill,
        )
        self.history: list[EpochStats] = []
        self.last_epoch = config.start_epoch
        self.stopped_early = False
        self._signals = StopSignals()  # replaced (fresh flag, handlers installed) by fit()

    @property
    def model(self) -> nn.Module:
        """The model being trained (unwrapped from DDP)."""
        return self.prepared.model

    @property
    def net(self) -> nn.Module:
        """What the training forward pass calls: the DDP wrapper under torchrun, else the model."""
        return self.prepared.net

    @property
    def ema_model(self) -> nn.Module | None:
        """The moving average of the weights (``config.ema``), None without one. The live
        :attr:`model` is what callbacks see and what the trainer hands on."""
        return None if self.prepared.ema is None else self.prepared.ema.module

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.prepared.optimizer

    @property
    def scheduler(self) -> EpochSchedule:
        return self.prepared.scheduler

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.prepared.scaler

    @property
    def energy(self) -> EnergyMeter:
        """The meter of this rank's training passes."""
        return self.loop.energy

    def fit(self, resume: bool = False) -> list[EpochStats]:
        """Train the phase (or its remainder when resuming); the phase's full history.

        A phase whose checkpoint stopped early or reached the final epoch is not re-run: its
        saved history is returned (and its model, ledger and callback states are loaded). A
        mid-epoch checkpoint continues its epoch at the next step.

        With a run directory, SIGTERM or SIGINT ends the step in flight, saves a checkpoint
        (rank 0) and raises :class:`~ebcompress.engine.preemption.Preempted` on every rank; the
        previous signal handlers are restored when this returns or raises.
        """
        # Only a run that can checkpoint turns signals into a clean stop; otherwise the
        # caller's own SIGINT/SIGTERM behaviour is left alone.
        self._signals = StopSignals()
        try:
            if not self.files.enabled:
                return self._fit(resume)
            with self._signals:
                return self._fit(resume)
        finally:
            self.loop.stop_meter()  # an epoch that raised
            self.prepared.restore_batchnorms()

    def evaluate(self, model: nn.Module | None = None) -> dict[str, float]:
        """Exact test metrics of ``model`` (default: the trained one, e.g. a distillation
        teacher otherwise): ``{"loss", "top1", "top5", "samples"}`` (sums over all ranks / n).

        top-5 is top-min(5, num_classes).
        """
        return self.loop.evaluate(model)

    def _fit(self, resume: bool) -> list[EpochStats]:
        config = self.config
        saved = self.files.read() if resume else None
        partial = None
        if saved is not None:
            where = config.checkpoint_path
            state = TrainerState.from_checkpoint(
                saved, phase=config.phase, start_epoch=config.start_epoch, where=where
            )
            self._restore(state)
            partial = state.partial
            if partial is not None:
                partial.check_resumable(distributed.world_size(), self.loaders.steps, where)
            elif self.stopped_early or self.last_epoch >= config.final_epoch:
                return list(self.history)
        else:
            self.files.start_afresh(keep_through=config.start_epoch)

        first, final = self.last_epoch + 1, config.final_epoch
        with TrainingProgress(config.phase, first, final, config.progress) as bar:
            for epoch in range(first, final + 1):
                stats = self.loop.run(epoch, bar, self._signals, partial)
                partial = None  # only the first epoch of a resume continues a checkpoint
                bar.end_epoch(stats.summary(final))
                self.history.append(stats)
                self.last_epoch = epoch
                self.stopped_early, signalled = self._ask_callbacks_to_stop(epoch, stats)
                if distributed.is_main() and self.files.enabled:
                    finished = self.stopped_early or epoch == final
                    self.files.record(stats, self._capture(finished))
                if signalled:
                    where = f"after {config.phase} epoch {epoch} of {final}"
                    raise self.files.stopped(self._signals.name, where)
                if self.stopped_early:
                    break
        return list(self.history)

    def _ask_callbacks_to_stop(self, epoch: int, stats: EpochStats) -> tuple[bool, bool]:
        """(a callback stops the phase, a signal asks to stop the run), agreed by all ranks."""
        votes = [
            cb.end_of_epoch(epoch, stats) for cb in self.callbacks if hasattr(cb, "end_of_epoch")
        ]
        # Every rank must leave the loop together, so one rank's stop stops all.
        flags = torch.tensor(
            [float(any(votes)), float(self._signals.signum)], device=self.prepared.device
        )
        stop, signalled = (distributed.all_reduce_sum(flags) > 0).tolist()
        return bool(stop), bool(signalled)

    # ------------------------------------------------------------------------- state

    def _capture(self, finished: bool, partial: PartialEpoch | None = None) -> TrainerState:
        """The phase's state now: after ``last_epoch`` and, with ``partial``, inside the next."""
        p = self.prepared
        return TrainerState(
            phase=self.config.phase,
            start_epoch=self.config.start_epoch,
            epoch=self.last_epoch,
            finished=finished,
            stopped_early=self.stopped_early,
            base_lr=self.config.optim.lr,
            model=p.model.state_dict(),
            optimizer=p.optimizer.state_dict(),
            scheduler=p.scheduler.state_dict(),
            scaler=None if p.scaler is None else p.scaler.state_dict(),
            precision=p.precision.state_dict(),
            rng=capture_rng_state(),
            ledger=None if self.ledger is None else self.ledger.to_dict(),
            callbacks=[
                cb.state_dict() if hasattr(cb, "state_dict") else None for cb in self.callbacks
            ],
            history=list(self.history),
            partial=partial,
            ema=None if p.ema is None else ema_state(p.ema),
        )

    def _restore(self, state: TrainerState) -> None:
        p, phase, base_lr = self.prepared, self.config.phase, self.config.optim.lr
        try:
            p.model.load_state_dict(state.model)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1].strip()
            raise UserError(
                f"checkpoint {self.config.checkpoint_path} does not fit this model ({first})"
            ) from exc
        p.optimizer.load_state_dict(state.optimizer)
        p.scheduler.load_state_dict(state.scheduler)
        if state.base_lr != base_lr:
            p.scheduler.rebase(base_lr)
            log(f"{phase}: base lr changed from {state.base_lr:g} to {base_lr:g} on resume")
        if p.scaler is not None and state.scaler is not None:
            p.scaler.load_state_dict(state.scaler)
        if state.precision:
            p.precision.load_state_dict(state.precision)
        restore_rng_state(state.rng)
        self._restore_ema(state)
        if self.ledger is not None and state.ledger is not None:
            self.ledger.restore(state.ledger)
        for callback, saved in zip(self.callbacks, state.callbacks, strict=False):
            if saved is not None and hasattr(callback, "load_state_dict"):
                callback.load_state_dict(saved)
        self.history = list(state.history)
        self.last_epoch = state.epoch
        self.stopped_early = state.stopped_early
        self.files.resumed(state.epoch)

    def _restore_ema(self, state: TrainerState) -> None:
        """The saved average; a checkpoint written without one starts it from the restored
        live weights (said in one line), and a saved one this phase does not keep is dropped."""
        ema, phase = self.prepared.ema, self.config.phase
        if ema is not None and state.ema is not None:
            load_ema_state(ema, state.ema)
        elif ema is not None:
            ema.set(self.prepared.model)
            log(f"{phase}: the checkpoint has no EMA; it starts from the resumed weights")
        elif state.ema is not None:
            log(f"{phase}: train.ema is off; the checkpoint's EMA is dropped")
